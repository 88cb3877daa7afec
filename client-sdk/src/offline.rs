//! What a device keeps when it is offline ([`OfflineStore`], on fjall): the profiles and
//! feed pages it has seen, and a durable outbox of writes made offline.
//!
//! The outbox holds whole operations (the protocol's `Body`, packed) in the order they
//! were made. [`OfflineStore::flush`] sends them in that order and removes each once
//! the server has answered, so a write survives an app restart and is sent again until
//! answered. "Once" needs the server's help where the write creates something: queued
//! posts, comments and stories get an idempotency key when queued (kept with them), so a
//! write that reached the server but whose answer was lost (the app died, the network
//! dropped) is recognised when sent again and answered with the first result. Follows,
//! reactions and the like are idempotent by nature. Chat has its own store
//! ([`crate::chat::ChatStore`]) with gap-free sync.
//!
//! Token storage is the app's (the bindings' `TokenStore`: the Keychain on iOS, the
//! Keystore on Android); this store never holds credentials.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use selfie_protocol::feed::{self as pf, FeedKind};
use selfie_protocol::users as pu;
use selfie_protocol::{BodyT, ErrorCode};
use sha2::{Digest, Sha256};

use crate::{Client, ClientError};

fn store_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("local store: {e}"))
}

fn packed_envelope(body: BodyT) -> Vec<u8> {
    let mut e = selfie_protocol::EnvelopeT::default();
    e.body = body;
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let o = e.pack(&mut b);
    b.finish_minimal(o);
    b.finished_data().to_vec()
}

fn unpacked_envelope(bytes: &[u8]) -> Result<BodyT, ClientError> {
    Ok(flatbuffers::root::<selfie_protocol::Envelope>(bytes)
        .map_err(store_err)?
        .unpack()
        .body)
}

/// A device's cache and outbox on disk (see the module docs).
pub struct OfflineStore {
    db: Database,
    /// user id → `Profile`.
    profiles: Keyspace,
    /// (feed kind, target) → `FeedPage` (the newest page seen).
    pages: Keyspace,
    /// place → an envelope holding the queued operation.
    outbox: Keyspace,
    queue_lock: std::sync::Mutex<()>,
    keys: AtomicU64,
}

/// What one queued write became when flushed.
#[derive(Debug)]
pub struct Flushed {
    /// Its place in the outbox (as [`OfflineStore::queue`] returned it).
    pub place: u64,
    /// The server's answer, or its refusal (a refused write leaves the outbox too).
    pub answer: Result<BodyT, ClientError>,
}

impl OfflineStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ClientError> {
        let db = Database::builder(dir.as_ref()).open().map_err(store_err)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(store_err)
        };
        Ok(Self {
            profiles: ks("profiles")?,
            pages: ks("feed_pages")?,
            outbox: ks("outbox")?,
            queue_lock: std::sync::Mutex::new(()),
            keys: AtomicU64::new(0),
            db,
        })
    }

    fn persist(&self) -> Result<(), ClientError> {
        self.db.persist(PersistMode::SyncAll).map_err(store_err)
    }

    /// Keeps a profile seen online.
    pub fn put_profile(&self, profile: &pu::ProfileT) -> Result<(), ClientError> {
        let Some(id) = profile.user.as_ref().map(|u| u.user_id) else {
            return Ok(());
        };
        let mut r = pu::GetProfileResponseT::default();
        r.profile = Some(Box::new(profile.clone()));
        let mut users = selfie_protocol::users::UsersT::default();
        users.op = pu::UsersOpT::GetProfileResponse(Box::new(r));
        self.profiles
            .insert(
                id.to_be_bytes(),
                packed_envelope(BodyT::Users(Box::new(users))),
            )
            .map_err(store_err)
    }

    /// The profile last seen of `user_id`.
    pub fn profile(&self, user_id: u64) -> Result<Option<pu::ProfileT>, ClientError> {
        let Some(v) = self
            .profiles
            .get(user_id.to_be_bytes())
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        Ok(match unpacked_envelope(&v)? {
            BodyT::Users(u) => match u.op {
                pu::UsersOpT::GetProfileResponse(r) => r.profile.map(|p| *p),
                _ => None,
            },
            _ => None,
        })
    }

    fn page_key(kind: FeedKind, target: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = kind.0;
        k[1..].copy_from_slice(&target.to_be_bytes());
        k
    }

    /// Keeps the newest page seen of a feed (`target`: the user or list, else 0).
    pub fn put_feed_page(
        &self,
        kind: FeedKind,
        target: u64,
        page: &pf::FeedPageT,
    ) -> Result<(), ClientError> {
        let mut feed = pf::FeedT::default();
        feed.op = pf::FeedOpT::FeedPage(Box::new(page.clone()));
        self.pages
            .insert(
                Self::page_key(kind, target),
                packed_envelope(BodyT::Feed(Box::new(feed))),
            )
            .map_err(store_err)
    }

    /// The newest page seen of a feed.
    pub fn feed_page(
        &self,
        kind: FeedKind,
        target: u64,
    ) -> Result<Option<pf::FeedPageT>, ClientError> {
        let Some(v) = self
            .pages
            .get(Self::page_key(kind, target))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        Ok(match unpacked_envelope(&v)? {
            BodyT::Feed(f) => match f.op {
                pf::FeedOpT::FeedPage(p) => Some(*p),
                _ => None,
            },
            _ => None,
        })
    }

    /// A fresh idempotency key: unique per device and write, not secret.
    fn idempotency_key(&self, place: u64) -> String {
        let mut h = Sha256::new();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.update(nanos.to_be_bytes());
        h.update(std::process::id().to_be_bytes());
        h.update(place.to_be_bytes());
        h.update(self.keys.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        h.update(format!("{:p}", self).as_bytes());
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Writes an operation to the outbox (durable before it returns) and returns its
    /// place. Posts, comments and stories without an idempotency key get one here.
    pub fn queue(&self, mut body: BodyT) -> Result<u64, ClientError> {
        let _place = self
            .queue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = self
            .outbox
            .last_key_value()
            .map(|kv| kv.key().map_err(store_err))
            .transpose()?
            .and_then(|k| <[u8; 8]>::try_from(&k[..]).ok())
            .map_or(0, u64::from_be_bytes);
        let place = last + 1;
        let key = self.idempotency_key(place);
        use selfie_protocol::posts::PostsOpT;
        use selfie_protocol::stories::StoriesOpT;
        match &mut body {
            BodyT::Posts(p) => match &mut p.op {
                PostsOpT::CreatePostRequest(r) => {
                    r.idempotency_key.get_or_insert(key);
                }
                PostsOpT::CreateCommentRequest(r) => {
                    r.idempotency_key.get_or_insert(key);
                }
                _ => {}
            },
            BodyT::Stories(s) => {
                if let StoriesOpT::CreateStoryRequest(r) = &mut s.op {
                    r.idempotency_key.get_or_insert(key);
                }
            }
            _ => {}
        }
        self.outbox
            .insert(place.to_be_bytes(), packed_envelope(body))
            .map_err(store_err)?;
        self.persist()?;
        Ok(place)
    }

    /// The writes waiting, in order.
    pub fn outbox(&self) -> Result<Vec<(u64, BodyT)>, ClientError> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv.into_inner().map_err(store_err)?;
            let place = <[u8; 8]>::try_from(&k[..]).map_or(0, u64::from_be_bytes);
            out.push((place, unpacked_envelope(&v)?));
        }
        Ok(out)
    }

    /// Sends the outbox in order; each write leaves it once the server has answered
    /// (with a result or a refusal for good, both returned). Stops at the first
    /// transport failure or retryable answer, keeping it and the rest for the next
    /// flush.
    pub async fn flush(&self, client: &Client) -> Result<Vec<Flushed>, ClientError> {
        let mut done = Vec::new();
        for (place, body) in self.outbox()? {
            let answer = client.call(body).await;
            if let Err(e) = &answer
                && !refused_for_good(e)
            {
                return match answer {
                    Err(e) if done.is_empty() => Err(e),
                    _ => Ok(done),
                };
            }
            self.outbox.remove(place.to_be_bytes()).map_err(store_err)?;
            self.persist()?;
            done.push(Flushed { place, answer });
        }
        Ok(done)
    }
}

/// Whether the server refused a write for good (a bad field, a block, a deleted
/// target): sending it again would get the same answer. The network, overload, rate
/// limits, expired tokens and storage failures are not.
fn refused_for_good(e: &ClientError) -> bool {
    use ErrorCode as C;
    match e {
        ClientError::Server { code, .. } => !matches!(
            *code,
            C::RateLimited
                | C::Overloaded
                | C::Draining
                | C::Unavailable
                | C::Timeout
                | C::StorageFailure
                | C::Internal
                | C::TokenExpired
                | C::Unauthenticated
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfie_protocol::posts::{CreatePostRequestT, PostsOpT, PostsT};

    fn post(text: &str) -> BodyT {
        let mut r = CreatePostRequestT::default();
        r.text = Some(text.into());
        let mut p = PostsT::default();
        p.op = PostsOpT::CreatePostRequest(Box::new(r));
        BodyT::Posts(Box::new(p))
    }

    fn key_of(body: &BodyT) -> Option<String> {
        match body {
            BodyT::Posts(p) => match &p.op {
                PostsOpT::CreatePostRequest(r) => r.idempotency_key.clone(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Writes queued survive closing and reopening the store, in order, each with its
    /// own idempotency key, kept across the restart.
    #[test]
    fn the_outbox_survives_a_restart_in_order_with_its_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys: Vec<String> = {
            let store = OfflineStore::open(dir.path()).expect("store");
            for i in 0..5 {
                store.queue(post(&format!("offline {i}"))).expect("queued");
            }
            store
                .outbox()
                .expect("outbox")
                .iter()
                .filter_map(|(_, b)| key_of(b))
                .collect()
        };
        assert_eq!(keys.len(), 5);
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5, "every write has its own key");
        let store = OfflineStore::open(dir.path()).expect("reopened");
        let queued = store.outbox().expect("outbox");
        let places: Vec<u64> = queued.iter().map(|(p, _)| *p).collect();
        assert_eq!(places, vec![1, 2, 3, 4, 5]);
        let again: Vec<String> = queued.iter().filter_map(|(_, b)| key_of(b)).collect();
        assert_eq!(again, keys, "keys are kept, so a resend is recognised");
    }

    /// Writes queued from several threads at once each get their own place.
    #[test]
    fn concurrent_queues_lose_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = std::sync::Arc::new(OfflineStore::open(dir.path()).expect("store"));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        store.queue(post(&format!("{t}-{i}"))).expect("queued");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(store.outbox().expect("outbox").len(), 80);
    }

    #[test]
    fn profiles_and_pages_come_back_as_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = OfflineStore::open(dir.path()).expect("store");
        let mut user = selfie_protocol::common::UserSummaryT::default();
        user.user_id = 42;
        user.username = Some("ada".into());
        let mut profile = pu::ProfileT::default();
        profile.user = Some(Box::new(user));
        profile.bio = Some("engines".into());
        store.put_profile(&profile).expect("kept");
        assert_eq!(store.profile(42).expect("read"), Some(profile));
        assert_eq!(store.profile(43).expect("read"), None);
        let mut page = pf::FeedPageT::default();
        page.newer_cursor = Some(vec![1, 2, 3]);
        store
            .put_feed_page(FeedKind::Following, 0, &page)
            .expect("kept");
        assert_eq!(
            store.feed_page(FeedKind::Following, 0).expect("read"),
            Some(page)
        );
        assert_eq!(store.feed_page(FeedKind::User, 0).expect("read"), None);
    }
}
