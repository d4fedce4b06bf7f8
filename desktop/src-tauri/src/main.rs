//! rmachine Desktop's binary: everything is in the library.
#![forbid(unsafe_code)]
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    rmachine_desktop::run()
}
