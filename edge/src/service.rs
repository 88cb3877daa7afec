//! The service seam: what the edge dispatches verified requests to.
//!
//! Services are instantiated once per shard (shard-local state, `Rc`/`RefCell` inside);
//! a [`ServiceFactory`] builds a shard's [`Registry`]. A service names the key a request
//! belongs to ([`Service::owner_key`]); the edge runs the request on that key's owner
//! shard, forwarding it through the owner's mailbox when it arrived elsewhere.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::stream::LocalBoxStream;
use selfie_codec::Frame;
use selfie_protocol::control::{SubscribeRequest, SubscriptionKind};
use selfie_protocol::{Envelope, ErrorCode};

use crate::session::Principal;

/// Index of a shard on this node.
pub type ShardId = usize;

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

/// A typed refusal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Protocol error code.
    pub code: ErrorCode,
    /// Human-readable message (no secrets).
    pub message: String,
    /// Retry hint, 0 when none.
    pub retry_after_ms: u32,
}

impl ErrorReply {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }
}

/// A request handler for one service on one shard.
pub trait Service {
    /// The key whose owner shard must handle `env` (user, conversation, post id, a pair
    /// of users), or `None` when any shard may handle it. `caller` is the session's user.
    fn owner_key(&self, caller: Option<u64>, env: &Envelope<'_>) -> Option<u64>;

    /// Handles a verified request; the response is a whole encoded frame carrying the
    /// request's id.
    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>>;

    /// Opens a subscription: a stream of encoded push frames (events) that the edge
    /// writes on a server-initiated unidirectional stream until it ends or the client
    /// unsubscribes. Events missed since `request.since_cursor` come first.
    fn subscribe(
        &self,
        _ctx: RequestContext,
        _request: &SubscribeRequest<'_>,
    ) -> Result<LocalBoxStream<'static, Bytes>, ErrorReply> {
        Err(ErrorReply::new(
            ErrorCode::Unavailable,
            "this service has no subscriptions",
        ))
    }
}

/// The service that serves a subscription kind.
pub fn subscription_service(kind: SubscriptionKind) -> Option<selfie_protocol::Service> {
    use selfie_protocol::Service;
    Some(match kind {
        SubscriptionKind::Conversation | SubscriptionKind::AllConversations => Service::Chat,
        SubscriptionKind::HomeFeed => Service::Feed,
        SubscriptionKind::StoryTray => Service::Stories,
        SubscriptionKind::Notifications => Service::Notifications,
        SubscriptionKind::Presence | SubscriptionKind::User => Service::Users,
        SubscriptionKind::Post => Service::Posts,
        _ => return None,
    })
}

/// The services of one shard, by protocol service.
#[derive(Default, Clone)]
pub struct Registry {
    services: Vec<(selfie_protocol::Service, Rc<dyn Service>)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
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
}

/// Builds a shard's registry; called once on each shard thread.
pub type ServiceFactory = Arc<dyn Fn(ShardId) -> Registry + Send + Sync>;

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
}
