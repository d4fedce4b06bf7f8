use rmachine_e2e::remote::*;
#[test]
fn boot_base() {
    let img = base_image();
    let host = RemoteHost::boot(&img);
    eprintln!("{}", host.root_ok("uname -a; systemctl is-system-running || true; date; ip addr; getent hosts deb.debian.org"));
}
