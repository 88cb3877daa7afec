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

/// Sessions a node keeps for clients to resume (with 0-RTT): a few hundred bytes each
/// (an encoded session of ~150 bytes, its 32-byte id, the map's and the eviction
/// queue's overhead), so some tens of MiB when full (see [`SessionCache`]).
pub const RESUMABLE_SESSIONS: usize = 131_072;

/// Locks of a [`SessionCache`]: the shards resume clients at once without queueing on
/// one lock, and a lock's occasional queue compaction is a 64th of the cache.
const SESSION_LOCKS: usize = 64;

/// The node's resumable TLS sessions, single-use (rustls accepts 0-RTT only from
/// sessions it can take once: its replay protection). Every operation is O(1)
/// amortised; capacity is `capacity` rounded up to a multiple of [`SESSION_LOCKS`],
/// each lock's share evicted oldest first.
///
/// rustls's own `ServerSessionMemoryCache` finds a session's place in its eviction
/// queue by a linear scan on every resumption (`LimitedCache::remove`): with
/// [`RESUMABLE_SESSIONS`] up to 131,072 key comparisons per returning client, under one
/// lock for all shards, and anyone fills the queue by connecting without returning
/// (`selfie-bench tls-sessions`). Here a taken session leaves its queue entry in place
/// (tagged with its insertion number, so that a stale entry never evicts a newer
/// session) until it reaches the front or the lock's queue is compacted, which happens
/// when it holds more than twice the lock's share: one pass over at most 4,097 entries
/// (for [`RESUMABLE_SESSIONS`]) after at least 2,049 puts to that lock. Ids are shared
/// by the map and the queue; stale entries keep only their id. Worst case when full:
/// the sessions, plus twice as many queue entries (24 bytes each) and up to as many
/// stale ids (~48 bytes each).
pub struct SessionCache {
    locks: Box<[std::sync::Mutex<SessionLock>]>,
    per_lock: usize,
    hasher: std::hash::RandomState,
}

type SessionId = Arc<[u8]>;

#[derive(Default)]
struct SessionLock {
    map: std::collections::HashMap<SessionId, (u64, Vec<u8>)>,
    order: std::collections::VecDeque<(u64, SessionId)>,
    next: u64,
    /// Compactions so far (for tests).
    compactions: u64,
}

impl SessionCache {
    /// A cache of about `capacity` sessions (rounded up to a multiple of the locks).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            locks: (0..SESSION_LOCKS).map(|_| Default::default()).collect(),
            per_lock: capacity.div_ceil(SESSION_LOCKS).max(1),
            hasher: std::hash::RandomState::new(),
        })
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.locks.iter().map(|l| lock(l).map.len()).sum()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_of(&self, key: &[u8]) -> std::sync::MutexGuard<'_, SessionLock> {
        use std::hash::BuildHasher;
        let i = self.hasher.hash_one(key) as usize % self.locks.len();
        lock(&self.locks[i])
    }
}

impl SessionLock {
    /// Adds a session, then evicts the oldest while over `cap`, and compacts the queue
    /// when it holds more than twice `cap` (taken sessions leave their entries).
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, cap: usize) {
        let seq = self.next;
        self.next += 1;
        let key: SessionId = key.into();
        self.order.push_back((seq, key.clone()));
        self.map.insert(key, (seq, value));
        while self.map.len() > cap {
            let Some((seq, key)) = self.order.pop_front() else {
                break;
            };
            // A stale entry (its session taken, maybe put again since) evicts nothing.
            if self.map.get(&key).is_some_and(|(s, _)| *s == seq) {
                self.map.remove(&key);
            }
        }
        if self.order.len() > 2 * cap {
            let map = &self.map;
            self.order
                .retain(|(seq, key)| map.get(key).is_some_and(|(s, _)| s == seq));
            self.order.shrink_to(2 * cap + 1);
            self.compactions += 1;
        }
    }
}

/// A poisoned lock still holds a consistent cache (no operation panics half-way).
fn lock(l: &std::sync::Mutex<SessionLock>) -> std::sync::MutexGuard<'_, SessionLock> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("capacity", &(self.per_lock * self.locks.len()))
            .finish_non_exhaustive()
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.lock_of(&key).put(key, value, self.per_lock);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock_of(key).map.get(key).map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock_of(key).map.remove(key).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

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
    tls.session_storage = SessionCache::new(RESUMABLE_SESSIONS);
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

    use rustls::server::StoresServerSessions;

    fn key(i: u32) -> Vec<u8> {
        let mut k = vec![0xA5; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn a_session_is_taken_once() {
        let c = SessionCache::new(64);
        assert!(c.put(key(1), b"one".to_vec()));
        assert_eq!(c.get(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(c.take(&key(1)).as_deref(), Some(&b"one"[..]));
        // Single use: a replayed ticket finds nothing (rustls's 0-RTT replay guard).
        assert_eq!(c.take(&key(1)), None);
        assert_eq!(c.get(&key(1)), None);
        assert_eq!(c.take(&key(2)), None);
    }

    #[test]
    fn the_oldest_sessions_go_first_and_the_cache_stays_bounded() {
        let c = SessionCache::new(SESSION_LOCKS * 8);
        for i in 0..10_000 {
            c.put(key(i), i.to_be_bytes().to_vec());
        }
        // Every lock got more than its share of 8 (about 156 each), so each is full.
        assert_eq!(c.len(), SESSION_LOCKS * 8);
        // The newest are held, the oldest gone.
        assert_eq!(
            c.take(&key(9_999)).as_deref(),
            Some(&9_999u32.to_be_bytes()[..])
        );
        for i in 0..1_000 {
            assert_eq!(
                c.get(&key(i)),
                None,
                "session {i} outlived 9,000 newer ones"
            );
        }
    }

    #[test]
    fn taking_sessions_leaves_the_queue_bounded() {
        let c = SessionCache::new(SESSION_LOCKS * 4);
        // A client that returns at once, over and over: each put is taken again, so
        // the map never fills and eviction never runs; the queue is compacted instead.
        for i in 0..50_000 {
            c.put(key(i), vec![1]);
            assert!(c.take(&key(i)).is_some());
        }
        assert!(c.is_empty());
        let mut compactions = 0;
        for l in c.locks.iter() {
            let l = lock(l);
            assert!(l.order.len() <= 2 * c.per_lock);
            compactions += l.compactions;
        }
        // A compaction leaves only live entries (none here), so the next one waits for
        // more than a lock's share of puts: never one per put.
        assert!(compactions > 0);
        assert!(
            compactions <= 50_000 / (c.per_lock as u64 + 1),
            "{compactions} compactions"
        );
    }

    #[test]
    fn a_session_taken_by_racing_handshakes_goes_to_one() {
        let c = SessionCache::new(1024);
        for round in 0..200 {
            c.put(key(round), vec![1]);
            let won: usize = std::thread::scope(|s| {
                let takers: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| c.take(&key(round)).is_some()))
                    .collect();
                takers
                    .into_iter()
                    .map(|t| usize::from(t.join().expect("taker")))
                    .sum()
            });
            assert_eq!(won, 1, "round {round}: a replayed ticket resumed twice");
        }
    }

    #[test]
    fn a_stale_queue_entry_never_evicts_a_newer_session() {
        let mut l = SessionLock::default();
        l.put(key(7), b"first".to_vec(), 2);
        assert!(l.map.remove(key(7).as_slice()).is_some(), "taken");
        l.put(key(1), b"a".to_vec(), 2);
        l.put(key(7), b"second".to_vec(), 2);
        // Over capacity: the front entry is the first key 7's, stale; the oldest live
        // session (key 1) is the one to go.
        l.put(key(2), b"b".to_vec(), 2);
        assert_eq!(l.map.len(), 2);
        assert_eq!(
            l.map.get(key(7).as_slice()).map(|(_, v)| &v[..]),
            Some(&b"second"[..])
        );
        assert!(!l.map.contains_key(key(1).as_slice()));
    }

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
