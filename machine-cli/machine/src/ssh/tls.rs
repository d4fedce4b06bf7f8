//! The engine's mutual TLS on 2376 (`--engine-tls`, docker-machine's model): a
//! certificate authority per machine, made here (ECDSA P-256 with RustCrypto, certificates
//! with `rcgen`), signs the engine's server certificate (its names: every name and
//! address of the host, the name the machine reaches it by, and localhost) and a client
//! certificate for the docker CLI (`DOCKER_CERT_PATH`). On the host a systemd drop-in
//! adds `-H tcp://0.0.0.0:2376 --tlsverify …` to the engine's own command line: Debian's
//! unit passes `-H fd://`, so `hosts` in `daemon.json` would conflict with it.
//!
//! Files: `<machine>/ca/{ca.pem,ca-key.pem}` (the CA key never leaves this host),
//! `<machine>/certs/{ca.pem,cert.pem,key.pem}` (the client), on the host
//! `/etc/docker/rmachine/{ca.pem,server-cert.pem,server-key.pem}`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
    SigningKey,
};
use sha2::Digest;
use time::OffsetDateTime;

use super::probe::Probe;
use super::{install, Session, SshError, ENGINE_TLS_PORT};
use crate::paths::MachinePaths;

/// Where the engine's TLS files live on the host.
pub const REMOTE_DIR: &str = "/etc/docker/rmachine";
/// The systemd drop-in that adds the TLS listener to the engine's service.
pub const DROPIN: &str = "/etc/systemd/system/docker.service.d/rmachine-tls.conf";

const CA_VALIDITY_DAYS: i64 = 3650;
const CERT_VALIDITY_DAYS: i64 = 1095;

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{path} is not usable: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "this machine has no certificate authority ({0} is missing): it was imported, and the CA \
         key never leaves the laptop that created the machine; regenerate the certificates there"
    )]
    NoCa(std::path::PathBuf),
}

/// A P-256 key that signs certificates.
pub struct EcKey {
    key: p256::ecdsa::SigningKey,
    /// The uncompressed SEC1 point (the SubjectPublicKeyInfo's bit string).
    public: Vec<u8>,
}

impl EcKey {
    pub fn generate() -> EcKey {
        EcKey::from_key(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn from_key(key: p256::ecdsa::SigningKey) -> EcKey {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        EcKey { key, public }
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), which the docker CLI and dockerd read.
    pub fn to_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a P-256 key always encodes")
            .to_string()
    }

    pub fn from_pem(pem: &str) -> Result<EcKey, String> {
        p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(EcKey::from_key)
            .map_err(|e| e.to_string())
    }

    /// The key identifier of its certificates: SHA-256 of the public key, cut to 20 bytes.
    fn key_id(&self) -> Vec<u8> {
        sha2::Sha256::digest(&self.public)[..20].to_vec()
    }
}

impl PublicKeyData for EcKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for EcKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: p256::ecdsa::Signature = self.key.sign(msg);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A machine's certificate authority.
pub struct Ca {
    key: EcKey,
    name: String,
    pub cert_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(name: &str, key: &EcKey) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("rmachine CA for {name}"));
    dn.push(DnType::OrganizationName, "rmachine");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
    p
}

impl Ca {
    /// A new authority for machine `name`.
    pub fn generate(name: &str) -> Result<Ca, TlsError> {
        let key = EcKey::generate();
        let mut params = ca_params(name, &key);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(Ca {
            key,
            name: name.to_string(),
            cert_pem: cert.pem(),
        })
    }

    /// The authority saved in `dir` (`ca.pem`, `ca-key.pem`).
    pub fn load(dir: &Path, name: &str) -> Result<Ca, TlsError> {
        let key_path = dir.join("ca-key.pem");
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    TlsError::NoCa(path.clone())
                } else {
                    TlsError::File {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                }
            })
        };
        let key_pem = read(key_path.clone())?;
        let cert_pem = read(dir.join("ca.pem"))?;
        let key = EcKey::from_pem(&key_pem).map_err(|message| TlsError::File {
            path: key_path,
            message,
        })?;
        Ok(Ca {
            key,
            name: name.to_string(),
            cert_pem,
        })
    }

    /// Saves the authority in `dir` (the key its owner's alone).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_files(
            dir,
            &[
                ("ca.pem", &self.cert_pem),
                ("ca-key.pem", &self.key.to_pem()),
            ],
        )
    }

    /// Issues a certificate for `names` (DNS names and IP addresses) valid from
    /// `not_before` to `not_after`.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, TlsError> {
        let key = EcKey::generate();
        let mut params = CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
        let issuer = Issuer::new(ca_params(&self.name, &self.key), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(TlsError::Generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.to_pem(),
        })
    }

    /// The engine's server certificate for `names`.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, TlsError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            &format!("rmachine engine {}", self.name),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now - time::Duration::days(1),
            now + time::Duration::days(CERT_VALIDITY_DAYS),
        )
    }

    /// The docker CLI's client certificate.
    pub fn issue_client(&self) -> Result<Issued, TlsError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            &format!("rmachine client {}", self.name),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            now - time::Duration::days(1),
            now + time::Duration::days(CERT_VALIDITY_DAYS),
        )
    }
}

fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<(), TlsError> {
    let err = |path: &Path, e: std::io::Error| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    crate::sys::fs::set_private_dir(dir).map_err(|e| err(dir, e))?;
    for (name, text) in files {
        let path = dir.join(name);
        crate::store::write_atomic(&path, text.as_bytes()).map_err(|e| err(&path, e))?;
    }
    Ok(())
}

/// The names the engine's server certificate carries: the name the machine reaches the
/// host by, the host's own names and addresses, and localhost.
pub fn server_names(probe: &Probe, ssh_host: &str) -> Vec<String> {
    let mut names = vec![ssh_host.to_string()];
    for n in probe
        .names_and_addresses()
        .into_iter()
        .chain(["localhost", "127.0.0.1", "::1"].map(String::from))
    {
        // Link-local IPv6 addresses carry a zone (`fe80::1%eth0`) a certificate cannot.
        let n = n.split('%').next().unwrap_or_default().to_string();
        let valid = n.parse::<IpAddr>().is_ok()
            || (!n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if valid && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The engine's command line from `systemctl cat docker.service`, without rmachine's own
/// drop-in: the last `ExecStart=` that is not a reset.
pub fn engine_exec_start(systemctl_cat: &str) -> Option<String> {
    let mut current: Option<String> = None;
    let mut in_ours = false;
    for line in systemctl_cat.lines() {
        let line = line.trim();
        if let Some(file) = line.strip_prefix("# /") {
            in_ours = file.ends_with("rmachine-tls.conf");
            continue;
        }
        if in_ours {
            continue;
        }
        if let Some(v) = line.strip_prefix("ExecStart=") {
            let v = v.trim();
            current = (!v.is_empty()).then(|| v.to_string());
        }
    }
    current
}

/// The drop-in: the engine's own command line plus the TLS listener.
pub fn dropin(exec_start: &str) -> String {
    format!(
        "# Written by rmachine (--engine-tls); `rmachine rm --purge-remote` removes it.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart={exec_start} -H tcp://0.0.0.0:{ENGINE_TLS_PORT} --tlsverify \
         --tlscacert={REMOTE_DIR}/ca.pem --tlscert={REMOTE_DIR}/server-cert.pem \
         --tlskey={REMOTE_DIR}/server-key.pem\n"
    )
}

/// Clears systemd's start rate limit of the engine's units before rmachine restarts it:
/// setting TLS up, regenerating certificates and purging within a few minutes are
/// otherwise refused ("start of the service was attempted too often").
const RESET_RATE_LIMIT: &str =
    "systemctl reset-failed docker.service docker.socket 2>/dev/null || true\n";

/// The root script that removes the drop-in and the certificates (and restarts the engine
/// only when the drop-in was there, so that it stops listening on 2376).
pub fn removal_script() -> String {
    format!(
        "{RESET_RATE_LIMIT}if [ -f {DROPIN} ]; then rm -f {DROPIN}; rm -rf {REMOTE_DIR}; systemctl daemon-reload; \
         if systemctl is-active -q docker.service; then systemctl restart docker.service; fi; fi\n"
    )
}

/// Sets up (or renews) the engine's TLS: the machine's CA (made when missing), the
/// client certificate (made when missing and `with_client`), a new server certificate for
/// the host's current names, uploaded with the drop-in; the engine is restarted. Returns
/// the server certificate's names.
pub async fn setup(
    session: &Session,
    files: &MachinePaths,
    probe: &Probe,
    ssh_host: &str,
    with_client: bool,
) -> Result<Vec<String>, SshError> {
    let step = "setting up the engine's TLS";
    let tls_err = |e: TlsError| SshError::step(step, crate::lifecycle::error_chain(&e));
    let name = files
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ca = match Ca::load(&files.engine_ca(), &name) {
        Ok(ca) => ca,
        Err(TlsError::NoCa(_)) if with_client => {
            let ca = Ca::generate(&name).map_err(tls_err)?;
            ca.save(&files.engine_ca()).map_err(tls_err)?;
            ca
        }
        Err(e) => return Err(tls_err(e)),
    };
    let certs = files.engine_certs();
    if with_client && !certs.join("cert.pem").exists() {
        let client = ca.issue_client().map_err(tls_err)?;
        write_files(
            &certs,
            &[
                ("ca.pem", &ca.cert_pem),
                ("cert.pem", &client.cert_pem),
                ("key.pem", &client.key_pem),
            ],
        )
        .map_err(tls_err)?;
    }
    let names = server_names(probe, ssh_host);
    let server = ca.issue_server(&names).map_err(tls_err)?;
    let unit = session
        .run_ok(
            "reading the engine's service (systemctl cat docker.service)",
            "systemctl cat docker.service",
            None,
            Duration::from_secs(30),
        )
        .await?;
    let exec_start = engine_exec_start(&unit.stdout)
        .ok_or_else(|| SshError::step(step, "docker.service has no ExecStart= line to extend"))?;
    let mut script = String::from("set -e\numask 077\n");
    script.push_str(&format!("mkdir -p {REMOTE_DIR} $(dirname {DROPIN})\n"));
    for (file, text) in [
        (format!("{REMOTE_DIR}/ca.pem"), ca.cert_pem.as_str()),
        (
            format!("{REMOTE_DIR}/server-cert.pem"),
            server.cert_pem.as_str(),
        ),
        (
            format!("{REMOTE_DIR}/server-key.pem"),
            server.key_pem.as_str(),
        ),
        (DROPIN.to_string(), dropin(&exec_start).as_str()),
    ] {
        script.push_str(&format!(
            "cat > {file} <<'RMACHINE_EOF'\n{}\nRMACHINE_EOF\n",
            text.trim_end()
        ));
    }
    script.push_str(&format!("chmod 0644 {DROPIN}\n"));
    script.push_str("systemctl daemon-reload\n");
    script.push_str(RESET_RATE_LIMIT);
    script.push_str("systemctl restart docker.service\n");
    session
        .run_ok(
            step,
            install::as_root(probe.root),
            Some(script.as_bytes()),
            Duration::from_secs(180),
        )
        .await?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_server_names_include_the_host_and_localhost() {
        let probe = Probe {
            hostname: "box".into(),
            fqdn: Some("box.lan".into()),
            addresses: vec!["10.0.2.15".into(), "fe80::1%eth0".into()],
            ..Probe::default()
        };
        assert_eq!(
            server_names(&probe, "127.0.0.5"),
            [
                "127.0.0.5",
                "box",
                "box.lan",
                "10.0.2.15",
                "fe80::1",
                "localhost",
                "127.0.0.1",
                "::1"
            ]
        );
    }

    #[test]
    fn test_dropin_extends_the_units_own_command_line() {
        let cat = "# /usr/lib/systemd/system/docker.service\n[Service]\n\
                   ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS\n\
                   # /etc/systemd/system/docker.service.d/rmachine-tls.conf\n[Service]\nExecStart=\n\
                   ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS -H tcp://0.0.0.0:2376 --tlsverify\n";
        let exec = engine_exec_start(cat).unwrap();
        assert_eq!(exec, "/usr/sbin/dockerd -H fd:// $DOCKER_OPTS");
        let d = dropin(&exec);
        assert!(d.contains("ExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS -H tcp://0.0.0.0:2376 --tlsverify"));
        let reset = "# /lib/systemd/system/docker.service\nExecStart=/a\n# /etc/systemd/system/docker.service.d/x.conf\nExecStart=\nExecStart=/b -x\n";
        assert_eq!(engine_exec_start(reset).as_deref(), Some("/b -x"));
        assert_eq!(engine_exec_start("garbage"), None);
    }

    #[test]
    fn test_ca_round_trips_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("dev").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = Ca::load(dir.path(), "dev").unwrap();
        assert_eq!(loaded.cert_pem, ca.cert_pem);
        let server = loaded
            .issue_server(&["box".into(), "10.0.0.1".into()])
            .unwrap();
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(matches!(
            Ca::load(&dir.path().join("none"), "dev"),
            Err(TlsError::NoCa(_))
        ));
    }

    /// The certificates against a real TLS stack: rustls (ring) on both sides of an
    /// in-memory handshake, the server asking for the client's certificate.
    #[cfg(target_os = "linux")]
    mod handshake {
        use super::*;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use std::sync::Arc;

        fn der(pem_text: &str) -> CertificateDer<'static> {
            let p = pem::parse(pem_text).unwrap();
            CertificateDer::from(p.contents().to_vec())
        }

        fn key(pem_text: &str) -> PrivateKeyDer<'static> {
            let p = pem::parse(pem_text).unwrap();
            PrivateKeyDer::Pkcs8(p.contents().to_vec().into())
        }

        // ring's provider lacks post-quantum key exchange (hence deprecated); what is
        // tested here is the certificate chain, which it checks like any other.
        #[allow(deprecated)]
        fn provider() -> Arc<rustls::crypto::CryptoProvider> {
            Arc::new(rustls::crypto::ring::default_provider())
        }

        /// Runs a handshake of a client (trusting `client_ca`, presenting `client`) to a
        /// server (presenting `server`, trusting `server_ca` for clients) as `name`.
        fn handshake(
            client_ca: &Ca,
            client: &Issued,
            server_ca: &Ca,
            server: &Issued,
            name: &str,
        ) -> Result<(), String> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der(&client_ca.cert_pem)).unwrap();
            let client_config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![der(&client.cert_pem)], key(&client.key_pem))
                .unwrap();
            let mut client_roots = rustls::RootCertStore::empty();
            client_roots.add(der(&server_ca.cert_pem)).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_roots),
                provider(),
            )
            .build()
            .unwrap();
            let server_config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![der(&server.cert_pem)], key(&server.key_pem))
                .unwrap();
            let mut c = rustls::ClientConnection::new(
                Arc::new(client_config),
                ServerName::try_from(name.to_string()).unwrap(),
            )
            .unwrap();
            let mut s = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
            for _ in 0..20 {
                let mut buf = Vec::new();
                c.write_tls(&mut buf).map_err(|e| e.to_string())?;
                s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
                s.process_new_packets()
                    .map_err(|e| format!("server: {e}"))?;
                let mut buf = Vec::new();
                s.write_tls(&mut buf).map_err(|e| e.to_string())?;
                c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
                c.process_new_packets()
                    .map_err(|e| format!("client: {e}"))?;
                if !c.is_handshaking() && !s.is_handshaking() {
                    return Ok(());
                }
            }
            Err("the handshake did not finish".into())
        }

        #[test]
        fn test_chain_passes_a_rustls_handshake_and_bad_ones_fail() {
            let ca = Ca::generate("dev").unwrap();
            let names = vec!["box.lan".to_string(), "10.0.2.15".to_string()];
            let server = ca.issue_server(&names).unwrap();
            let client = ca.issue_client().unwrap();
            handshake(&ca, &client, &ca, &server, "box.lan").unwrap();
            handshake(&ca, &client, &ca, &server, "10.0.2.15").unwrap();

            let wrong_name = handshake(&ca, &client, &ca, &server, "other.lan").unwrap_err();
            assert!(wrong_name.contains("not valid for name"), "{wrong_name}");

            let now = OffsetDateTime::now_utc();
            let expired = ca
                .issue(
                    "old",
                    &names,
                    ExtendedKeyUsagePurpose::ServerAuth,
                    now - time::Duration::days(30),
                    now - time::Duration::days(1),
                )
                .unwrap();
            let err = handshake(&ca, &client, &ca, &expired, "box.lan").unwrap_err();
            assert!(err.to_lowercase().contains("expired"), "{err}");

            // A client certificate of another authority is refused by the server.
            let other = Ca::generate("other").unwrap();
            let stranger = other.issue_client().unwrap();
            let err = handshake(&ca, &stranger, &ca, &server, "box.lan").unwrap_err();
            assert!(err.contains("server"), "{err}");

            // A server certificate of another authority is refused by the client.
            let foreign = other.issue_server(&names).unwrap();
            let err = handshake(&ca, &client, &ca, &foreign, "box.lan").unwrap_err();
            assert!(
                err.contains("client") && err.contains("UnknownIssuer"),
                "{err}"
            );
        }
    }
}
