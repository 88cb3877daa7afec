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
use selfie_protocol::BodyT;
use selfie_protocol::feed::{self as pf, FeedKind};
use selfie_protocol::users as pu;
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
    /// `next_place` → the next place to hand out (never reused, so a flush working
    /// from an older snapshot can never remove a newer write).
    meta: Keyspace,
    queue_lock: std::sync::Mutex<()>,
    /// One flush at a time: two at once would send the same write twice.
    flush_lock: tokio::sync::Mutex<()>,
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
            meta: ks("outbox_meta")?,
            queue_lock: std::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
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
    /// place. Operations that create something (posts, comments, stories,
    /// conversations, payments) get an idempotency key here when they have none; a chat
    /// send needs its `client_msg_id`. Account operations (credentials) and control
    /// frames are refused: the outbox is on disk and never holds secrets.
    pub fn queue(&self, mut body: BodyT) -> Result<u64, ClientError> {
        let _place = self
            .queue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = self
            .meta
            .get(NEXT_PLACE)
            .map_err(store_err)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(1, u64::from_be_bytes);
        // Also past anything already queued (a store written before `next_place`).
        let last = self
            .outbox
            .last_key_value()
            .map(|kv| kv.key().map_err(store_err))
            .transpose()?
            .and_then(|k| <[u8; 8]>::try_from(&k[..]).ok())
            .map_or(0, u64::from_be_bytes);
        let place = next.max(last + 1);
        let key = self.idempotency_key(place);
        give_key(&mut body, key)?;
        self.outbox
            .insert(place.to_be_bytes(), packed_envelope(body))
            .map_err(store_err)?;
        self.meta
            .insert(NEXT_PLACE, (place + 1).to_be_bytes())
            .map_err(store_err)?;
        self.persist()?;
        Ok(place)
    }

    /// Removes one queued write without sending it (the app gave up on it).
    pub fn remove(&self, place: u64) -> Result<bool, ClientError> {
        let _place = self
            .queue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let had = self
            .outbox
            .contains_key(place.to_be_bytes())
            .map_err(store_err)?;
        self.outbox.remove(place.to_be_bytes()).map_err(store_err)?;
        self.persist()?;
        Ok(had)
    }

    /// Forgets everything: caches and queued writes (the account signed out for good).
    pub fn clear(&self) -> Result<(), ClientError> {
        let _place = self
            .queue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ks in [&self.profiles, &self.pages, &self.outbox] {
            let keys: Vec<_> = ks
                .iter()
                .map(|kv| kv.key().map_err(store_err))
                .collect::<Result<_, _>>()?;
            for k in keys {
                ks.remove(k).map_err(store_err)?;
            }
        }
        self.persist()
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
        let _one = self.flush_lock.lock().await;
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

const NEXT_PLACE: &[u8] = b"next_place";

/// Gives a write that creates something its idempotency key (when it has none), checks
/// a chat send has its `client_msg_id`, and refuses what must not be queued.
fn give_key(body: &mut BodyT, key: String) -> Result<(), ClientError> {
    use selfie_protocol::chat::ChatOpT;
    use selfie_protocol::payments::PaymentsOpT;
    use selfie_protocol::posts::PostsOpT;
    use selfie_protocol::stories::StoriesOpT;
    let refuse = |what: &str| Err(ClientError::Config(format!("{what} cannot be queued")));
    macro_rules! keyed {
        ($r:expr) => {{
            $r.idempotency_key.get_or_insert(key);
        }};
    }
    match body {
        BodyT::Auth(_) => return refuse("an account operation (credentials)"),
        BodyT::Control(_) | BodyT::NONE => return refuse("a control operation"),
        BodyT::Posts(p) => match &mut p.op {
            PostsOpT::CreatePostRequest(r) => keyed!(r),
            PostsOpT::CreateCommentRequest(r) => keyed!(r),
            _ => {}
        },
        BodyT::Stories(s) => {
            if let StoriesOpT::CreateStoryRequest(r) = &mut s.op {
                keyed!(r);
            }
        }
        BodyT::Chat(c) => match &mut c.op {
            ChatOpT::CreateConversationRequest(r) => keyed!(r),
            ChatOpT::SendMessageRequest(r)
                if r.client_msg_id.as_deref().is_none_or(str::is_empty) =>
            {
                return refuse("a chat send without a client_msg_id");
            }
            _ => {}
        },
        BodyT::Payments(p) => match &mut p.op {
            PaymentsOpT::CreateIntentRequest(r) => keyed!(r),
            PaymentsOpT::CreatorSubscribeRequest(r) => keyed!(r),
            PaymentsOpT::PayoutRequest(r) => keyed!(r),
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

/// Whether the server refused a write for good: the request itself was wrong (4xx: an
/// argument, a permission, a missing target, a conflict), or it cannot even be encoded.
/// Sending it again would get the same answer, so it leaves the outbox with its
/// refusal. Everything else — the network, limits, overload, the server failing, an
/// expired or revoked session (sign in again, then flush), a code newer than this
/// SDK — keeps it for the next flush.
pub fn refused_for_good(e: &ClientError) -> bool {
    use selfie_protocol::ErrorClass;
    match e {
        ClientError::Server { code, .. } => {
            matches!(code.class(), ErrorClass::Request) && !code.is_retryable()
        }
        ClientError::Codec(_) => true,
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

    /// A place is never handed out twice, even after the outbox emptied: a flush that
    /// read an older snapshot cannot remove a newer write by its place.
    #[test]
    fn places_are_never_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = OfflineStore::open(dir.path()).expect("store");
        assert_eq!(store.queue(post("a")).expect("queued"), 1);
        assert_eq!(store.queue(post("b")).expect("queued"), 2);
        assert!(store.remove(1).expect("removed"));
        assert!(store.remove(2).expect("removed"));
        assert!(!store.remove(2).expect("already gone"));
        assert_eq!(store.queue(post("c")).expect("queued"), 3);
        drop(store);
        let store = OfflineStore::open(dir.path()).expect("reopened");
        assert_eq!(store.queue(post("d")).expect("queued"), 4);
    }

    /// Credentials never reach the disk; a chat send without its idempotency id, or a
    /// control frame, cannot be queued; a new conversation gets a key.
    #[test]
    fn what_must_not_be_queued_is_refused_and_creations_get_keys() {
        use selfie_protocol::auth::{AuthOpT, AuthT, LoginRequestT};
        use selfie_protocol::chat::{ChatOpT, ChatT};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = OfflineStore::open(dir.path()).expect("store");
        let mut login = LoginRequestT::default();
        login.password = Some("hunter2".into());
        let mut auth = AuthT::default();
        auth.op = AuthOpT::LoginRequest(Box::new(login));
        assert!(store.queue(BodyT::Auth(Box::new(auth))).is_err());
        let mut chat = ChatT::default();
        chat.op = ChatOpT::SendMessageRequest(Box::default());
        assert!(store.queue(BodyT::Chat(Box::new(chat))).is_err());
        assert!(store.queue(BodyT::NONE).is_err());
        let mut chat = ChatT::default();
        chat.op = ChatOpT::CreateConversationRequest(Box::default());
        store.queue(BodyT::Chat(Box::new(chat))).expect("queued");
        let queued = store.outbox().expect("outbox");
        assert_eq!(queued.len(), 1, "nothing refused reached the disk");
        let BodyT::Chat(c) = &queued[0].1 else {
            panic!("not chat")
        };
        let ChatOpT::CreateConversationRequest(r) = &c.op else {
            panic!("not a new conversation")
        };
        assert!(r.idempotency_key.as_deref().is_some_and(|k| k.len() == 32));
    }

    /// Only a wrong request leaves the outbox; anything that may pass later stays.
    #[test]
    fn only_wrong_requests_are_refused_for_good() {
        use selfie_protocol::ErrorCode as C;
        let server = |code| ClientError::Server {
            code,
            message: String::new(),
            retry_after_ms: 0,
        };
        for code in [C::NotFound, C::Forbidden, C::InvalidArgument] {
            assert!(refused_for_good(&server(code)), "{code:?}");
        }
        for code in [
            C::RateLimited,
            C::Unavailable,
            C::TokenExpired,
            C::SessionRevoked,
            C::TooManyStreams,
            C::Internal,
            C(9999),
        ] {
            assert!(!refused_for_good(&server(code)), "{code:?}");
        }
        assert!(!refused_for_good(&ClientError::Timeout));
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
