//! The API (and DAV) on the local network, over TLS only.
//!
//! In: the store, the names and addresses the node is reached under. Out: a rustls
//! server configuration with this device's self-signed certificate, its SHA-256
//! fingerprint (what a phone shows when asked to trust it), and `HOME/tls.pem` (the
//! certificate alone, public, to import on a phone). The private key never touches
//! the disk in the clear: it lives sealed in the store's `tls` tree like every other
//! stored value. The key is made once per device; the certificate is made again (same
//! key) when the node is reached under an address it does not name yet.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::store::{Store, StoreError};

const TREE: &str = "tls";
const KEY: &[u8] = b"key";
const CERT: &[u8] = b"cert";
const NAMES: &[u8] = b"names";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// This device's TLS identity for the LAN listener.
pub struct LanTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate (DER), as `AB:CD:…`.
    pub fingerprint: String,
    /// The names and addresses the certificate is valid for.
    pub names: Vec<String>,
    /// The certificate (DER), for a phone's configuration profile.
    pub cert_der: Vec<u8>,
}

/// The names a certificate for a listener on `ip` should carry: this host's name (and
/// `.local`), `localhost`, loopback, the listener's own address, and the address this
/// host reaches the network from (for a listener on every address).
pub fn names_for(ip: IpAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = hostname() {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    if ip.is_unspecified() {
        names.extend(outbound_ip().map(|ip| ip.to_string()));
    } else {
        names.push(ip.to_string());
    }
    names.sort();
    names.dedup();
    names
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

/// The local address of the route to the network (no packet is sent).
pub(crate) fn outbound_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Loads this device's TLS identity, making the key (once) and the certificate (when
/// `names` are not all in it).
pub fn load_or_make(home: &Home, store: &Store, names: &[String]) -> Result<LanTls, LanError> {
    let tree = store.tree(TREE)?;
    let key_der = match tree.get(KEY)? {
        Some(der) => der.to_vec(),
        None => {
            let key =
                rcgen::KeyPair::generate().map_err(|e| LanError::Certificate(e.to_string()))?;
            let der = key.serialize_der();
            tree.insert(KEY, &der)?;
            der
        }
    };
    let stored_names: Vec<String> = tree
        .get(NAMES)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (cert_der, names) = match tree.get(CERT)? {
        Some(cert) if names.iter().all(|n| stored_names.contains(n)) => {
            (cert.to_vec(), stored_names)
        }
        _ => {
            let mut all = stored_names;
            all.extend(names.iter().cloned());
            all.sort();
            all.dedup();
            let key = rcgen::KeyPair::try_from(key_der.as_slice())
                .map_err(|e| LanError::Certificate(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(all.clone())
                .map_err(|e| LanError::Certificate(e.to_string()))?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Hearth node");
            let cert = params
                .self_signed(&key)
                .map_err(|e| LanError::Certificate(e.to_string()))?;
            let der = cert.der().to_vec();
            tree.insert(CERT, &der)?;
            tree.insert(
                NAMES,
                &serde_json::to_vec(&all).map_err(|e| LanError::Certificate(e.to_string()))?,
            )?;
            (der, all)
        }
    };
    let pem = pem_of(&cert_der);
    let path = home.root().join("tls.pem");
    crate::home::write_file_atomic(&path, pem.as_bytes(), 0o644).map_err(|source| {
        LanError::Write {
            path: path.display().to_string(),
            source,
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LanError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .map_err(|e| LanError::Certificate(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(LanTls {
        config: Arc::new(config),
        fingerprint: fingerprint(&cert_der),
        names,
        cert_der,
    })
}

/// SHA-256 of a certificate, as upper-case hex pairs joined by `:`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn pem_of(der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
