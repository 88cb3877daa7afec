//! TLS for QUIC: the operator's certificate, or a generated development certificate.
//!
//! The development certificate is ECDSA P-256 and valid for 14 days, the most that
//! browsers accept for WebTransport `serverCertificateHashes`; it is kept in
//! `<data_dir>/tls/` and replaced a day before it expires. Clients pin its SHA-256,
//! which `selfie serve` prints at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// Validity of a development certificate (the WebTransport maximum).
const DEV_CERT_DAYS: i64 = 14;

/// A loaded certificate chain and key.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// Where it came from (for logs).
    pub source: PathBuf,
}

impl Identity {
    /// SHA-256 of the leaf certificate (what clients pin), lower-case hex.
    pub fn fingerprint(&self) -> String {
        self.certs
            .first()
            .map_or_else(String::new, |c| hex(&Sha256::digest(c.as_ref())))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Certificate generation failed.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read_pem(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    Ok(Identity {
        certs,
        key: key_der,
        source: cert.to_path_buf(),
    })
}

/// Loads the configured certificate, or creates/reuses the development one in
/// `data_dir`.
pub fn load_identity(tls: &TlsConfig, data_dir: &Path) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        return read_pem(cert, key);
    }
    let dir = data_dir.join("tls");
    let cert_path = dir.join("dev-cert.pem");
    let key_path = dir.join("dev-key.pem");
    if let Ok(identity) = read_pem(&cert_path, &key_path)
        && dev_cert_still_valid(&cert_path)
    {
        return Ok(identity);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(DEV_CERT_DAYS) - time::Duration::hours(2);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "selfie development certificate");
    let cert = params.self_signed(&key_pair)?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    std::fs::write(
        dir.join("dev-cert.expires"),
        (params.not_after.unix_timestamp()).to_string(),
    )
    .map_err(io(&dir))?;
    read_pem(&cert_path, &key_path)
}

/// The development certificate is reused until a day before its recorded expiry.
fn dev_cert_still_valid(cert_path: &Path) -> bool {
    let Some(dir) = cert_path.parent() else {
        return false;
    };
    std::fs::read_to_string(dir.join("dev-cert.expires"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .is_some_and(|expires| {
            expires - time::OffsetDateTime::now_utc().unix_timestamp() > 24 * 3600
        })
}

/// Writes a secret file readable by its owner only (mode 0600).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Sessions a node keeps for clients to resume (with 0-RTT), oldest evicted first: a
/// few hundred bytes each (an encoded session of ~150 bytes, its id, the map's
/// overhead), so some tens of MiB when full.
pub const RESUMABLE_SESSIONS: usize = 131_072;

/// The crypto provider of every TLS configuration the edge builds: aws-lc-rs with its
/// defaults (X25519MLKEM768 first, then X25519 and P-256), the cheaper of the two
/// rustls providers per handshake on the server (`bench/tls-providers`).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The QUIC server configuration for `selfie/1`, and `h3` (WebTransport) when
/// `webtransport` (TLS 1.3 only, as QUIC requires).
pub fn quic_server_config(
    identity: &Identity,
    webtransport: bool,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![selfie_protocol::ALPN.to_vec()];
    if webtransport {
        tls.alpn_protocols.push(crate::shard::H3_ALPN.to_vec());
    }
    // 0-RTT: early data is accepted, but the edge acts on none of it before the TLS
    // handshake has completed: a connection is served only once quinn's `Connecting`
    // resolves, which on a server happens when the client's Finished has arrived
    // (quinn-proto emits `Event::Connected` then), and a replayed first flight can never
    // produce one. The edge does not check idempotency itself; clients send only
    // idempotent requests early (`selfie_protocol::is_idempotent`) because early data
    // is discarded when the server refuses it.
    tls.max_early_data_size = u32::MAX;
    // Resumable sessions: rustls's default keeps the 256 most recent per process, which
    // a busy edge cycles through in well under a second, sending returning clients
    // back to full handshakes without 0-RTT. Stateless tickets would hold any number,
    // but rustls accepts early data only from single-use (stateful) sessions, its
    // replay protection; so the cache is large instead, and each handshake issues one
    // ticket (a client gets a fresh one with every connection).
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMABLE_SESSIONS);
    tls.send_tls13_tickets = 1;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The TLS configuration of the HTTPS listener (`[web]`): TLS 1.3 and 1.2, HTTP/1.1.
pub fn https_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_certificate_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = load_identity(&TlsConfig::default(), dir.path()).expect("generated");
        let b = load_identity(&TlsConfig::default(), dir.path()).expect("reused");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        quic_server_config(&a, true).expect("usable by quinn");
        https_server_config(&a).expect("usable over TCP");
        let mode = std::fs::metadata(dir.path().join("tls/dev-key.pem"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("key exists");
        assert_eq!(mode, 0o600);
    }
}
