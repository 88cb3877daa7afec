//! The service plane: how verified requests reach the services of a shard, how shards
//! ask each other typed questions, and how events reach every subscribed connection.
//!
//! - **Service tables** ([`service_table!`](crate::plane::service_table)): each service
//!   declares one table (operation → handler, owner key); dispatch and routing are
//!   derived from it. Handlers take a [`Call`], which owns the verified frame, and read
//!   the request in place across `.await`s. Idempotency (0-RTT safety) is a protocol
//!   fact, declared in the schemas and generated into `selfie_protocol::is_idempotent`.
//! - **Crossing cores** ([`Shards`]): `invoke_on(shard, |svc| ...)` runs a typed call on
//!   another shard's instance of a service and returns its answer; `invoke_on_all` and
//!   `map_reduce` broadcast; `forward` carries a client request to its owner shard. Every
//!   shard's mailbox is bounded: full means [`Error::Overloaded`], counted.
//! - **The live delivery plane** ([`Delivery`]): topics, subscribers, ordered fan-out with
//!   per-topic sequences, cross-node through a [`Bus`].
//!
//! This module knows frames and protocol types, never sockets or quinn: the edge moves
//! the bytes. One [`Registry`] per shard holds the shard's services and typed locals.

mod delivery;
mod redis_bus;
mod shards;
mod table;
#[cfg(debug_assertions)]
pub(crate) use table::check_declared_answer;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::{UnionWIPOffset, WIPOffset};
use futures::future::LocalBoxFuture;
use selfie_codec::{Builder, Encoder, Frame, FrameArena, Limits};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::{Body, Envelope, EnvelopeArgs, common};
use selfie_storage::Cursor;

pub use delivery::{
    AUTHOR_ACTIVITY, Bus, BusEvent, Delivery, DeliveryConfig, DeliveryMetrics,
    PUSH_SEQ_PLACEHOLDER, ReasonLabel, Subscriber, SubscriberEvent, Topic,
};
pub use redis_bus::{RedisBus, run_inbox};
pub use shards::{MAILBOX_DEPTH, Mailbox, Plane, PlaneMetrics, Shards, serve_mailbox};
pub(crate) use table::{make, service_table, wire_enum};

use crate::{Error, Result};

/// Index of a shard on this node.
pub type ShardId = usize;

/// The owner shard of a key on this node (`hash(key) % shards`). The hash spreads
/// sequential ids (Snowflake ids share high bits) evenly.
pub fn owner_shard(key: u64, shards: usize) -> ShardId {
    // SplitMix64 finaliser.
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % shards.max(1) as u64) as usize
}

/// One key for the unordered pair {a, b}: both users' operations on the pair meet on its
/// owner shard.
pub fn pair_key(a: u64, b: u64) -> u64 {
    let (lo, hi) = (a.min(b), a.max(b));
    lo.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31) ^ hi
}

/// Who is calling: the user and login session an access token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user_id: u64,
    /// The login session (device) the token belongs to.
    pub session_id: u64,
    /// Roles (e.g. `admin`, `moderator`).
    pub roles: Vec<String>,
}

/// Who sent a request and where it is handled. `Send`, so it can travel to the owner
/// shard with the frame.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller, `None` when anonymous.
    pub principal: Option<Principal>,
    /// Shard that received the request.
    pub origin_shard: ShardId,
    /// Shard handling it.
    pub shard: ShardId,
    /// Connection id (unique per shard), for logs.
    pub connection: u64,
    /// The client's address (rate limits; never stored with content).
    pub peer_ip: std::net::IpAddr,
}

/// One request being handled: its context, the verified frame (read in place) and the
/// shard's encoder for the answer.
pub struct Call {
    /// Who asked, and where.
    pub ctx: RequestContext,
    frame: Frame,
    encoder: Rc<RefCell<Encoder>>,
    arena: Rc<RefCell<FrameArena>>,
}

impl Call {
    /// A call on a shard whose reusable encoder is `encoder`, its answers copied into
    /// `arena` (answers are sent and released: no allocation each).
    pub fn new(
        ctx: RequestContext,
        frame: Frame,
        encoder: Rc<RefCell<Encoder>>,
        arena: Rc<RefCell<FrameArena>>,
    ) -> Self {
        Self {
            ctx,
            frame,
            encoder,
            arena,
        }
    }

    /// The request, read in place.
    pub fn env(&self) -> Envelope<'_> {
        self.frame.envelope()
    }

    /// The request id (the answer carries it).
    pub fn id(&self) -> u64 {
        self.frame.id()
    }

    /// The operation's table, read in place; `f` picks it out of the envelope
    /// (`|e| e.body_as_posts()?.op_as_get_post_request()`).
    pub fn op<'a, T: 'a>(&'a self, f: impl FnOnce(Envelope<'a>) -> Option<T>) -> Result<T> {
        f(self.frame.envelope()).ok_or(Error::InvalidArgument { field: "op" })
    }

    /// The signed-in user (`Unauthenticated` for an anonymous session).
    pub fn user(&self) -> Result<u64> {
        self.principal().map(|p| p.user_id)
    }

    /// The signed-in principal.
    pub fn principal(&self) -> Result<&Principal> {
        self.ctx.principal.as_ref().ok_or(Error::Unauthenticated)
    }

    /// Encodes the answer with the shard's encoder; `f` gets the builder and the request
    /// id.
    pub fn encode(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<Bytes> {
        let id = self.id();
        let mut arena = self.arena.borrow_mut();
        self.encoder
            .borrow_mut()
            .encode_in(&mut arena, |b| f(b, id))
            .map_err(|_| Error::Internal("an answer too large to encode"))
    }

    /// An `Ack`.
    pub fn ack(&self) -> Result<Bytes> {
        self.encode(selfie_codec::build::ack)
    }

    /// Encodes `body` (an object-API answer) in an envelope answering this request.
    pub fn answer(&self, body: selfie_protocol::BodyT) -> Result<Bytes> {
        self.encode(|b, id| make!(selfie_protocol::EnvelopeT { id, body }).pack(b))
    }
}

/// An envelope around a service table (`body`) of kind `body_type`, answering request `id`
/// (or carrying a push when `id` is [`PUSH_SEQ_PLACEHOLDER`]).
pub fn envelope(
    b: &mut Builder,
    id: u64,
    body_type: Body,
    body: WIPOffset<UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type,
            body: Some(body),
            ..Default::default()
        },
    )
}

/// Ids from a request's vector, at most `max` + 1 (one more than allowed is enough to be
/// refused; more are never copied).
pub fn ids(v: Option<flatbuffers::Vector<'_, u64>>, max: usize) -> Vec<u64> {
    v.map(|v| v.iter().take(max.saturating_add(1)).collect())
        .unwrap_or_default()
}

/// A `UserSummary` naming only the user (clients look up the rest).
pub fn user_ref(user_id: u64) -> Option<Box<common::UserSummaryT>> {
    Some(Box::new(make!(common::UserSummaryT { user_id })))
}

/// A page reply for where the next page starts (`None`: the end).
pub fn page_t(cursor: Option<Cursor>) -> Option<Box<common::PageInfoT>> {
    Some(Box::new(make!(common::PageInfoT {
        has_more: cursor.is_some(),
        next_cursor: cursor.map(|c| c.0.to_vec()),
    })))
}

/// Most items per page of any list.
pub const PAGE_MAX: usize = 100;

/// A page request's size (20 by default, 1..=100) and cursor.
pub fn page_request(page: Option<common::PageRequest<'_>>) -> (usize, Option<Cursor>) {
    let limit = page
        .map_or(20, |p| usize::from(p.limit()))
        .clamp(1, PAGE_MAX);
    // An empty cursor is no cursor (object-API clients, such as the TypeScript one,
    // always write the vector).
    let cursor = page
        .and_then(|p| p.cursor())
        .filter(|c| !c.is_empty())
        .map(|c| Cursor(Bytes::copy_from_slice(c.bytes())));
    (limit, cursor)
}

/// What a subscription delivers: frames to send first (a snapshot, or what was missed
/// since the client's cursor), then the topic's live events.
pub struct Subscription {
    /// Written first, in order (their `id` is 0: not part of the topic's sequence).
    pub initial: Vec<Bytes>,
    /// The live events.
    pub events: Subscriber,
    /// Kept while the subscription lasts and dropped with it: a registration elsewhere
    /// (another shard's watch of the subscriber) whose guard ends it.
    pub hold: Option<Box<dyn Any>>,
}

impl Subscription {
    /// A subscription of `events`, after `initial`.
    pub fn new(initial: Vec<Bytes>, events: Subscriber) -> Self {
        Self {
            initial,
            events,
            hold: None,
        }
    }
}

/// A service on one shard, as the edge sees it. Implemented by
/// [`service_table!`](crate::plane::service_table) from a service's table.
pub trait Service {
    /// The key whose owner shard must handle `env` (a user, a post, a pair of users), or
    /// `None` when the receiving shard may. `caller` is the session's user.
    fn owner_key(&self, caller: Option<u64>, env: &Envelope<'_>) -> Option<u64>;

    /// Handles a verified request; the answer is a whole encoded frame carrying the
    /// request's id.
    fn handle(&self, call: Call) -> LocalBoxFuture<'static, Result<Bytes>>;

    /// Opens a subscription of `kind` (the call carries the `SubscribeRequest`): checks
    /// that the caller may follow the target, then joins its topic.
    fn subscribe(
        &self,
        _kind: SubscriptionKind,
        _call: Call,
    ) -> LocalBoxFuture<'static, Result<Subscription>> {
        Box::pin(async { Err(Error::Unavailable("this subscription")) })
    }
}

/// Where a shard hands the datagrams its signed-in sessions send (typing, presence),
/// verified. Datagrams are never answered: a refusal is the `Err` the edge counts.
pub trait Datagrams {
    /// Handles `datagram` from `user`.
    fn datagram(
        &self,
        user: u64,
        datagram: selfie_codec::DatagramFrame,
    ) -> LocalBoxFuture<'static, Result<()>>;
}

/// Raw bytes that follow a header frame on a request stream (a media chunk).
pub type ByteStream = futures::stream::LocalBoxStream<'static, std::io::Result<Bytes>>;

/// A download: the header frame, then the raw bytes it announces.
pub struct RawDownload {
    /// The `DownloadHeader` frame (answering the request).
    pub header: Bytes,
    /// The bytes, in order.
    pub body: ByteStream,
}

/// Where a shard hands the requests whose bytes travel raw beside the frames: a media
/// chunk (a header frame, then its bytes on the same stream) and a download (a header
/// frame, then the bytes, on the answer). They run on the shard that received them.
pub trait RawStreams {
    /// Handles an upload chunk: `call` carries the header frame, `body` the bytes after
    /// it; the answer is a whole frame.
    fn upload(&self, call: Call, body: ByteStream) -> LocalBoxFuture<'static, Result<Bytes>>;

    /// Handles a download request.
    fn download(&self, call: Call) -> LocalBoxFuture<'static, Result<RawDownload>>;

    /// Opens what a signed HTTPS URL path (`/media/...`) names, for the edge's HTTPS
    /// listener: checked as [`crate::media::Media::signed`] checks it.
    fn signed(&self, path: String) -> LocalBoxFuture<'static, Result<crate::media::Signed>>;
}

/// The service that serves a subscription kind.
pub fn subscription_service(kind: SubscriptionKind) -> Option<selfie_protocol::Service> {
    use selfie_protocol::Service;
    Some(match kind {
        // Presence carries typing and presence changes, which chat owns for now.
        SubscriptionKind::Conversation
        | SubscriptionKind::AllConversations
        | SubscriptionKind::Presence => Service::Chat,
        SubscriptionKind::HomeFeed => Service::Feed,
        SubscriptionKind::StoryTray => Service::Stories,
        SubscriptionKind::Notifications => Service::Notifications,
        SubscriptionKind::User => Service::Users,
        SubscriptionKind::Post => Service::Posts,
        SubscriptionKind::Media => Service::Media,
        _ => return None,
    })
}

/// The services of one shard, by protocol service, and its typed locals (service
/// instances that other shards reach with [`Shards::invoke_on`]).
pub struct Registry {
    shard: ShardId,
    services: Vec<(selfie_protocol::Service, Rc<dyn Service>)>,
    locals: Vec<(TypeId, Rc<dyn Any>)>,
    encoder: Rc<RefCell<Encoder>>,
    arena: Rc<RefCell<FrameArena>>,
    delivery: Rc<Delivery>,
    inflight: shards::Inflight,
    datagrams: Option<Rc<dyn Datagrams>>,
    raw: Option<Rc<dyn RawStreams>>,
}

impl Registry {
    /// An empty registry for `shard` of `plane`, with the shard's delivery plane.
    pub fn new(shard: ShardId, plane: &std::sync::Arc<Plane>) -> Self {
        let delivery = Rc::new(Delivery::new(shard, plane.clone()));
        let mut r = Self {
            shard,
            services: Vec::new(),
            locals: Vec::new(),
            encoder: Rc::new(RefCell::new(Encoder::new(Limits::DEFAULT))),
            arena: Rc::default(),
            delivery: delivery.clone(),
            inflight: Default::default(),
            datagrams: None,
            raw: None,
        };
        r.provide(delivery);
        r
    }

    /// The shard this registry serves.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Registers `service` for `kind` (replacing an earlier one).
    pub fn register(&mut self, kind: selfie_protocol::Service, service: Rc<dyn Service>) {
        self.services.retain(|(k, _)| *k != kind);
        self.services.push((kind, service));
    }

    /// The service for `kind`.
    pub fn get(&self, kind: selfie_protocol::Service) -> Option<&Rc<dyn Service>> {
        self.services
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s)
    }

    /// Makes `value` reachable by type from other shards ([`Shards::invoke_on`]).
    pub fn provide<T: 'static>(&mut self, value: Rc<T>) {
        let id = TypeId::of::<T>();
        self.locals.retain(|(t, _)| *t != id);
        self.locals.push((id, value));
    }

    /// This shard's instance of `T`, if provided.
    pub fn local<T: 'static>(&self) -> Option<Rc<T>> {
        let id = TypeId::of::<T>();
        self.locals
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.clone().downcast::<T>().ok())
    }

    /// Sends the sessions' datagrams to `handler`.
    pub fn set_datagrams(&mut self, handler: Rc<dyn Datagrams>) {
        self.datagrams = Some(handler);
    }

    /// Where datagrams go, if anywhere.
    pub fn datagrams(&self) -> Option<&Rc<dyn Datagrams>> {
        self.datagrams.as_ref()
    }

    /// Sends media chunks and downloads to `handler`.
    pub fn set_raw_streams(&mut self, handler: Rc<dyn RawStreams>) {
        self.raw = Some(handler);
    }

    /// Where media chunks and downloads go, if anywhere.
    pub fn raw_streams(&self) -> Option<&Rc<dyn RawStreams>> {
        self.raw.as_ref()
    }

    /// The shard's reusable encoder.
    pub fn encoder(&self) -> &Rc<RefCell<Encoder>> {
        &self.encoder
    }

    /// The shard's delivery plane.
    pub fn delivery(&self) -> &Rc<Delivery> {
        &self.delivery
    }

    /// Mailbox jobs (forwarded requests, typed calls) running on this shard now.
    pub fn jobs_inflight(&self) -> usize {
        self.inflight.get()
    }

    /// A call handled on this shard.
    pub fn call(&self, ctx: RequestContext, frame: Frame) -> Call {
        Call::new(ctx, frame, self.encoder.clone(), self.arena.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_evenly_and_are_stable() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for k in 0..40_000u64 {
            counts[owner_shard(k << 22, shards)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(owner_shard(12345, 4), owner_shard(12345, 4));
        assert_eq!(owner_shard(12345, 1), 0);
    }

    #[test]
    fn a_pair_has_one_key_whichever_side_asks() {
        assert_eq!(pair_key(3, 9), pair_key(9, 3));
        assert_ne!(pair_key(3, 9), pair_key(3, 10));
    }
}
