//! The live delivery plane: one mechanism for every push (a conversation's messages, a
//! home feed's new posts, notifications, presence, a post's counters).
//!
//! A [`Topic`] maps to the subscribers connected to this node. Each shard keeps its own
//! subscribers; the topic's **owner shard** (the owner of the topic's id, so a post's
//! topic lives where the post's interactions run) sequences its events and knows which
//! shards have subscribers (its *interest* set): an event costs one job on the owner (none
//! when the publisher is the owner) and one per interested shard, never one per
//! subscriber. On a fleet, events of topics nobody on a node follows stop at the node's
//! door (a node-wide interest set read by the bus inbox).
//!
//! - **Order and gaps.** Events carry a per-topic sequence in their envelope `id`
//!   (consecutive: 1, 2, 3, …). On one node the owner shard numbers them. On a fleet
//!   (`storage.redis_url`) every publish goes through one Redis script that numbers it
//!   and publishes it on the node-wide channel, so every node sees the same numbers in
//!   the same order; each node holds one Redis subscription, not one per topic or per
//!   connection. A shard that sees a number jump knows events were lost (a dropped Redis
//!   connection, a full mailbox) and cuts its subscribers of that topic with a resync
//!   signal rather than deliver a hole. An event lost *before* it got a number (its
//!   owner's mailbox stayed full, Redis refused it) cannot show as a jump: its topic is
//!   cut on every interested shard instead — and, on a fleet, on every node, by a resync
//!   marker published once Redis takes it.
//! - **Bounded.** A subscriber holds at most [`DeliveryConfig::subscriber_queue`] events.
//!   One that falls behind (a client that stops reading, so QUIC flow control stops the
//!   writer) is cut off with [`SubscriberEvent::Resync`]; the others keep receiving.
//!   Repairs (resyncs and withdrawals that found a mailbox full) are deduplicated per
//!   shard and topic, so an overload posts each at most once.
//! - **Clean ends.** Dropping a [`Subscriber`] (unsubscribe, disconnect, drain) removes
//!   it; a shard's last subscriber of a topic withdraws the shard's interest at the owner;
//!   an owner whose topic has no interest left forgets it. The gauges go back to zero.
//!
//! What a client does after a resync is the service's business: resubscribe with its
//! cursor (chat, feeds replay what was missed) or take a fresh snapshot (counters).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use selfie_codec::{Builder, Encoder, Frame, Limits};
use selfie_protocol::Envelope;
use selfie_protocol::control::SubscriptionKind;
use tokio::sync::mpsc;

use super::ShardId;
use super::shards::{Plane, Shards};
use crate::{BoxFuture, Error, Result};

/// The `id` a publisher gives an event; the owner shard replaces it with the topic's
/// sequence (`Frame::with_id`). Any value but 0 would do (a default 0 is not stored, so
/// there would be nothing to replace).
pub const PUSH_SEQ_PLACEHOLDER: u64 = u64::MAX;

/// A server-internal topic kind: a large author's new posts and stories, followed by the
/// feed services of shards whose connected readers follow the author ([`crate::feed`]).
/// It lies outside the protocol's `SubscriptionKind` values, so no client can subscribe
/// to it ([`super::subscription_service`] knows no service for it).
pub const AUTHOR_ACTIVITY: SubscriptionKind = SubscriptionKind(200);

/// What a subscription follows: a kind (the protocol's `SubscriptionKind`) and an id
/// (a conversation, a user, a post).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic {
    /// What kind of thing.
    pub kind: SubscriptionKind,
    /// Which one.
    pub id: u64,
}

impl Topic {
    /// The topic of `kind` for `id`.
    pub fn new(kind: SubscriptionKind, id: u64) -> Self {
        Self { kind, id }
    }

    /// The key whose owner shard sequences this topic: its id, so that a post's topic is
    /// sequenced where the post's interactions run.
    fn key(&self) -> u64 {
        self.id
    }

    /// 9 bytes: the kind, then the id (big-endian).
    fn to_bytes(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.kind.0;
        b[1..].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let kind = SubscriptionKind(*b.first()?);
        let id = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
        Some(Self { kind, id })
    }

    /// A stable name, for the fleet's sequence keys and logs (`post:42`).
    pub fn name(&self) -> String {
        let kind = match self.kind {
            AUTHOR_ACTIVITY => "author_activity",
            k => k.variant_name().unwrap_or("unknown"),
        };
        format!("{}:{}", kind.to_ascii_lowercase(), self.id)
    }
}

/// The delivery plane's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Events queued per subscriber before it is cut off with a resync signal.
    pub subscriber_queue: usize,
    /// How long a publisher waits for room in the owner shard's mailbox (or the bus
    /// queue) before the event is dropped and the topic's subscribers resync.
    pub publish_wait: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            subscriber_queue: 256,
            publish_wait: Duration::from_secs(1),
        }
    }
}

/// An event received from another node (or from this one, through the bus).
#[derive(Debug, Clone)]
pub struct BusEvent {
    /// The topic.
    pub topic: Topic,
    /// Its fleet-wide sequence number.
    pub seq: u64,
    /// The event frame (its `id` still the placeholder).
    pub frame: Bytes,
}

impl BusEvent {
    /// The bus payload of an event: the topic, then the frame.
    pub fn payload(topic: Topic, frame: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(9 + frame.len());
        p.extend_from_slice(&topic.to_bytes());
        p.extend_from_slice(frame);
        p
    }

    /// Reads a payload made by [`BusEvent::payload`] that arrived with `seq`.
    pub fn parse(seq: u64, payload: Bytes) -> Option<Self> {
        let topic = Topic::from_bytes(payload.get(..9)?)?;
        Some(Self {
            topic,
            seq,
            frame: payload.slice(9..),
        })
    }
}

/// The link between the nodes of a fleet: publishes an event to every node (this one
/// included), numbered in its topic's fleet-wide sequence. Received events come back
/// through [`Plane::on_bus_event`]; a lost subscription through [`Plane::on_bus_lost`].
pub trait Bus: Send + Sync {
    /// Publishes `frame` on `topic`; returns the number it was given.
    fn publish(&self, topic: Topic, frame: Bytes) -> BoxFuture<'static, Result<u64>>;
}

/// Labels: why a subscriber was cut off, or an event lost.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Subscribers: `slow_subscriber`, `gap` (a number jumped), `lost` (an event of the
    /// topic was lost before it got a number), `bus_lost` (the node's Redis subscription
    /// dropped). Events: `overloaded` (a mailbox stayed full), `bus` (Redis refused it),
    /// `corrupt`.
    pub reason: &'static str,
}

/// The delivery plane's metrics (node-wide).
#[derive(Default)]
pub struct DeliveryMetrics {
    /// Topics with subscribers on this node (one per shard that has some).
    pub topics: Gauge,
    /// Subscribers on this node.
    pub subscribers: Gauge,
    /// Topics sequenced by this node's shards (with interest somewhere on the node).
    pub owned_topics: Gauge,
    /// Events published by this node's services.
    pub published: Counter,
    /// Events handed to subscribers (one per subscriber).
    pub delivered: Counter,
    /// Subscribers cut off with the resync signal, by reason.
    pub resyncs: Family<ReasonLabel, Counter>,
    /// Events lost, by reason.
    pub lost: Family<ReasonLabel, Counter>,
    /// Events sent to the other nodes through the bus.
    pub bus_sent: Counter,
    /// Events received from the bus.
    pub bus_received: Counter,
}

impl DeliveryMetrics {
    /// Registers the delivery metrics in `r`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "selfie_delivery_topics",
            "Topics with subscribers on this node, counted per shard",
            self.topics.clone(),
        );
        r.register(
            "selfie_delivery_subscribers",
            "Subscribers connected to this node",
            self.subscribers.clone(),
        );
        r.register(
            "selfie_delivery_owned_topics",
            "Topics sequenced by this node's shards",
            self.owned_topics.clone(),
        );
        r.register(
            "selfie_delivery_published",
            "Events published by this node's services",
            self.published.clone(),
        );
        r.register(
            "selfie_delivery_delivered",
            "Events handed to subscribers",
            self.delivered.clone(),
        );
        r.register(
            "selfie_delivery_resyncs",
            "Subscribers cut off with the resync signal, by reason",
            self.resyncs.clone(),
        );
        r.register(
            "selfie_delivery_lost",
            "Events lost before delivery, by reason",
            self.lost.clone(),
        );
        r.register(
            "selfie_delivery_bus_sent",
            "Events sent to the other nodes through Redis",
            self.bus_sent.clone(),
        );
        r.register(
            "selfie_delivery_bus_received",
            "Events received from the other nodes through Redis",
            self.bus_received.clone(),
        );
    }

    fn resync(&self, reason: &'static str) {
        self.resyncs.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn lose(&self, reason: &'static str) {
        self.lost.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// An event frame, stamped with its topic sequence.
    Event(Bytes),
    /// The subscriber fell behind or events were lost: it has been removed from the
    /// topic and must resubscribe (from its cursor) to continue.
    Resync,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Bytes>,
    /// No more events: what is queued goes out, then the resync signal.
    cut: bool,
    /// Cut because it fell behind: what was queued is gone (it is what made it too long).
    overflowed: bool,
    waker: Option<Waker>,
}

/// One subscriber's bounded queue (shard-local).
#[derive(Default)]
struct Queue {
    state: RefCell<QueueState>,
}

impl Queue {
    /// Queues `frame`; `false` when the subscriber is (now) cut off.
    fn push(&self, frame: Bytes, capacity: usize) -> bool {
        let mut q = self.state.borrow_mut();
        if q.cut {
            return false;
        }
        if q.events.len() >= capacity {
            q.cut = true;
            q.overflowed = true;
            q.events.clear();
        } else {
            q.events.push_back(frame);
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        !q.cut
    }

    /// No more events for this subscriber; the ones queued are still whole and go out.
    fn cut(&self) {
        let mut q = self.state.borrow_mut();
        q.cut = true;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

/// A subscription to one topic on this shard. Dropping it unsubscribes.
pub struct Subscriber {
    queue: Rc<Queue>,
    topic: Topic,
    id: u64,
    delivery: Rc<Delivery>,
}

impl Subscriber {
    /// The topic.
    pub fn topic(&self) -> Topic {
        self.topic
    }

    /// The next event, or the resync signal (after which nothing more comes). Events
    /// queued before a gap still come first; a subscriber cut off for falling behind gets
    /// the signal at once.
    pub async fn next(&self) -> SubscriberEvent {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.state.borrow_mut();
            if let Some(f) = q.events.pop_front() {
                return Poll::Ready(SubscriberEvent::Event(f));
            }
            if q.cut {
                return Poll::Ready(SubscriberEvent::Resync);
            }
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Resolves when the subscriber is cut off for falling behind (for a writer blocked
    /// on a client that stopped reading: it must give up now, not after the write).
    pub async fn overflowed(&self) {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.state.borrow_mut();
            if q.overflowed {
                return Poll::Ready(());
            }
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Events waiting (tests, metrics).
    pub fn queued(&self) -> usize {
        self.queue.state.borrow().events.len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.delivery.unsubscribe(self.topic, self.id);
    }
}

/// Shards with subscribers of a topic (at most 256 shards, as connection ids allow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShardSet([u64; 4]);

impl ShardSet {
    fn insert(&mut self, s: ShardId) {
        if let Some(w) = self.0.get_mut(s / 64) {
            *w |= 1 << (s % 64);
        }
    }

    fn remove(&mut self, s: ShardId) {
        if let Some(w) = self.0.get_mut(s / 64) {
            *w &= !(1 << (s % 64));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn iter(self) -> impl Iterator<Item = ShardId> {
        (0..256).filter(move |s| self.0[s / 64] & (1 << (s % 64)) != 0)
    }
}

/// A topic's subscribers on this shard.
struct Local {
    subscribers: HashMap<u64, Rc<Queue>>,
    /// The last sequence delivered here (0: none yet).
    last_seq: u64,
    /// The owner's acknowledgement of this shard's interest.
    ready: Shared<LocalBoxFuture<'static, bool>>,
}

/// A topic this shard sequences.
#[derive(Default)]
struct Owned {
    /// Last number given (one node) or seen (fleet).
    seq: u64,
    interest: ShardSet,
}

/// The delivery plane of one shard.
pub struct Delivery {
    shard: ShardId,
    plane: Arc<Plane>,
    local: RefCell<HashMap<Topic, Local>>,
    owned: RefCell<HashMap<Topic, Owned>>,
    next_subscriber: Cell<u64>,
    encoder: RefCell<Encoder>,
    /// Events on their way to the bus, in order (fleet only; started on first use).
    outbox: RefCell<Option<mpsc::Sender<(Topic, Bytes)>>>,
    /// [`Delivery::publish_soon`]'s events waiting for room, per destination (an owner
    /// shard's mailbox, or `None`: the bus), in publishing order, each queue drained by
    /// one task: while one holds events, later ones for that destination queue behind
    /// them, never past them.
    pending: RefCell<HashMap<Option<ShardId>, Waiting>>,
    /// Events in `pending`, all destinations (tests, metrics).
    waiting: Cell<usize>,
}

/// Events waiting for one destination, oldest first.
type Waiting = VecDeque<(Topic, Bytes)>;

impl Delivery {
    /// The delivery plane of `shard` on `plane`.
    pub fn new(shard: ShardId, plane: Arc<Plane>) -> Self {
        Self {
            shard,
            plane,
            local: RefCell::default(),
            owned: RefCell::default(),
            next_subscriber: Cell::new(1),
            encoder: RefCell::new(Encoder::new(Limits::DEFAULT)),
            outbox: RefCell::new(None),
            pending: RefCell::default(),
            waiting: Cell::new(0),
        }
    }

    fn metrics(&self) -> &DeliveryMetrics {
        &self.plane.metrics.delivery
    }

    fn shards(&self) -> &Shards {
        self.plane.shards()
    }

    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The node's plane.
    pub fn plane(&self) -> &Arc<Plane> {
        &self.plane
    }

    /// The shard that sequences `topic`.
    pub fn owner(&self, topic: Topic) -> ShardId {
        self.shards().owner_of(topic.key())
    }

    /// Encodes an event for publishing (its `id` is the placeholder the owner replaces).
    pub fn encode_event(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> flatbuffers::WIPOffset<Envelope<'static>>,
    ) -> Result<Bytes> {
        self.encoder
            .borrow_mut()
            .encode_bytes(|b| f(b, PUSH_SEQ_PLACEHOLDER))
            .map_err(|_| Error::Internal("an event too large to encode"))
    }

    /// Publishes an event on `topic` to every subscriber on every shard of this node and,
    /// on a fleet, of every node. Returns once the event is on its way: on the owner shard
    /// at once; elsewhere it waits for room in the owner's mailbox (or the bus queue), at
    /// most [`DeliveryConfig::publish_wait`]. Past that the event is lost and the topic's
    /// subscribers resync.
    pub async fn publish(self: &Rc<Self>, topic: Topic, frame: Bytes) -> Result<()> {
        let Ok(frame) = Frame::verify(frame, &Limits::DEFAULT) else {
            self.metrics().lose("corrupt");
            return Err(Error::Internal("an event that is not a valid frame"));
        };
        if frame.id() != PUSH_SEQ_PLACEHOLDER {
            self.metrics().lose("corrupt");
            return Err(Error::Internal("an event without the sequence placeholder"));
        }
        self.metrics().published.inc();
        let owner = self.owner(topic);
        if self.plane.bus().is_some() {
            let queued = tokio::time::timeout(
                self.plane.delivery.publish_wait,
                self.outbox().send((topic, frame.as_bytes().clone())),
            )
            .await;
            if !matches!(queued, Ok(Ok(()))) {
                self.metrics().lose("overloaded");
                self.plane.lost(topic);
                return Err(Error::Overloaded);
            }
            return Ok(());
        }
        if owner == self.shard {
            self.sequence(topic, None, frame);
            return Ok(());
        }
        let job = Shards::job(move |d: Rc<Delivery>| async move { d.sequence(topic, None, frame) });
        let posted = tokio::time::timeout(
            self.plane.delivery.publish_wait,
            self.shards().post_waiting(owner, "delivery", job),
        )
        .await;
        if matches!(posted, Ok(Ok(()))) {
            Ok(())
        } else {
            self.metrics().lose("overloaded");
            self.plane.lost(topic);
            Err(Error::Overloaded)
        }
    }

    /// [`Delivery::publish`] for callers that do not wait for it: on one node the event
    /// is sequenced at once (owner here) or posted to the owner's mailbox when it has
    /// room and nothing waits for it, with no task; otherwise (a full mailbox, events
    /// already waiting, a fleet's bus) it queues behind its destination's waiting
    /// events, which one task publishes in order, with waiting. Losses are counted and
    /// resync the topic's subscribers, as there.
    pub fn publish_soon(self: &Rc<Self>, topic: Topic, frame: Bytes) {
        if self.plane.bus().is_none() {
            let Ok(verified) = Frame::verify(frame.clone(), &Limits::DEFAULT) else {
                self.metrics().lose("corrupt");
                return;
            };
            if verified.id() != PUSH_SEQ_PLACEHOLDER {
                self.metrics().lose("corrupt");
                return;
            }
            let owner = self.owner(topic);
            if owner == self.shard {
                // (A topic owned here never waits in a task on one node.)
                self.metrics().published.inc();
                self.sequence(topic, None, verified);
                return;
            }
            if self.pending.borrow().contains_key(&Some(owner)) {
                return self.publish_later(topic, frame);
            }
            let job =
                Shards::job(
                    move |d: Rc<Delivery>| async move { d.sequence(topic, None, verified) },
                );
            match self.shards().try_post(owner, "delivery", job) {
                Ok(()) => {
                    self.metrics().published.inc();
                    return;
                }
                // Full: the waiting path below (which verifies again).
                Err(Some(_)) => {}
                Err(None) => {
                    self.metrics().lose("overloaded");
                    self.plane.lost(topic);
                    return;
                }
            }
        }
        self.publish_later(topic, frame);
    }

    /// Queues the event behind those waiting for its destination, and starts that
    /// queue's one draining task if none runs. One task per destination, publishing in
    /// turn, is what keeps the order: with a task per event, a task woken with a freed
    /// slot from another thread could run after a newer one that found a slot free.
    fn publish_later(self: &Rc<Self>, topic: Topic, frame: Bytes) {
        let dest = if self.plane.bus().is_some() {
            None
        } else {
            Some(self.owner(topic))
        };
        self.waiting.set(self.waiting.get() + 1);
        let mut pending = self.pending.borrow_mut();
        let queue = pending.entry(dest).or_default();
        queue.push_back((topic, frame));
        if queue.len() == 1 {
            tokio::task::spawn_local(self.clone().drain_pending(dest));
        }
    }

    /// Publishes `dest`'s waiting events in order ([`Delivery::publish`]: with waiting,
    /// losses counted), each removed once handled; ends when the queue is empty.
    async fn drain_pending(self: Rc<Self>, dest: Option<ShardId>) {
        loop {
            let next = self
                .pending
                .borrow()
                .get(&dest)
                .and_then(|q| q.front().cloned());
            let Some((topic, frame)) = next else {
                return;
            };
            if let Err(e) = self.publish(topic, frame).await {
                tracing::debug!(error = %e, topic = %topic.name(), "event not published");
            }
            self.waiting.set(self.waiting.get().saturating_sub(1));
            let mut pending = self.pending.borrow_mut();
            let Some(queue) = pending.get_mut(&dest) else {
                return;
            };
            queue.pop_front();
            if queue.is_empty() {
                pending.remove(&dest);
                return;
            }
        }
    }

    /// The ordered queue to the bus, and its task (started on first use).
    fn outbox(self: &Rc<Self>) -> mpsc::Sender<(Topic, Bytes)> {
        if let Some(tx) = self.outbox.borrow().as_ref() {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel::<(Topic, Bytes)>(4096);
        *self.outbox.borrow_mut() = Some(tx.clone());
        let plane = self.plane.clone();
        tokio::task::spawn_local(async move {
            use futures::StreamExt;
            let Some(bus) = plane.bus().cloned() else {
                return;
            };
            // Commands leave in order on one multiplexed connection (and the script is
            // sent whole, never retried behind a NOSCRIPT), so pipelining keeps this
            // shard's events in publish order.
            let sends = stream_of(rx)
                .map(|(topic, frame)| {
                    let bus = bus.clone();
                    async move { (topic, bus.publish(topic, frame).await) }
                })
                .buffered(64);
            futures::pin_mut!(sends);
            while let Some((topic, sent)) = sends.next().await {
                let metrics = &plane.metrics.delivery;
                match sent {
                    Ok(_) => {
                        metrics.bus_sent.inc();
                    }
                    Err(e) => {
                        // Lost before it got a number: no node can see a gap, so every
                        // node's subscribers of the topic must be told.
                        tracing::warn!(error = %e, topic = %topic.name(), "event not published to the fleet");
                        metrics.lose("bus");
                        plane.lost(topic);
                    }
                }
            }
        });
        tx
    }

    /// On the owner: numbers an event (one node) or takes the fleet's number, stamps it,
    /// and hands it to every shard with subscribers.
    fn sequence(&self, topic: Topic, fleet_seq: Option<u64>, frame: Frame) {
        let (seq, interest) = {
            let mut owned = self.owned.borrow_mut();
            let Some(o) = owned.get_mut(&topic) else {
                return; // no subscriber anywhere on this node
            };
            o.seq = fleet_seq.unwrap_or(o.seq + 1);
            (o.seq, o.interest)
        };
        let Some(stamped) = frame.with_id(seq, &Limits::DEFAULT) else {
            self.metrics().lose("corrupt");
            return;
        };
        let bytes = stamped.as_bytes().clone();
        for shard in interest.iter() {
            if shard == self.shard {
                self.deliver(topic, seq, bytes.clone());
                continue;
            }
            let b = bytes.clone();
            let posted =
                self.shards()
                    .submit_on(shard, "delivery", move |d: Rc<Delivery>| async move {
                        d.deliver(topic, seq, b)
                    });
            if posted.is_err() {
                // That shard's subscribers would see the jump only with the next event.
                self.metrics().lose("overloaded");
                self.plane.repair(shard, topic, Repair::Cut);
            }
        }
    }

    /// On the owner: the last sequence number of `topic` (0 when none yet). A snapshot
    /// read here, between two numbers, covers exactly the events up to it.
    pub fn current_seq(&self, topic: Topic) -> u64 {
        self.owned.borrow().get(&topic).map_or(0, |o| o.seq)
    }

    /// On a shard with subscribers: hands event `seq` of `topic` to each of them.
    fn deliver(&self, topic: Topic, seq: u64, frame: Bytes) {
        let capacity = self.plane.delivery.subscriber_queue;
        let mut local = self.local.borrow_mut();
        let Some(l) = local.get_mut(&topic) else {
            drop(local);
            // Nobody here any more (the withdrawal was lost): withdraw again.
            self.withdraw(topic);
            return;
        };
        if l.last_seq != 0 && seq != l.last_seq + 1 {
            // Events in between never arrived: a hole must not be delivered as if whole.
            drop(local);
            self.cut_topic(topic, "gap");
            return;
        }
        l.last_seq = seq;
        let mut slow = Vec::new();
        for (&id, q) in &l.subscribers {
            if q.push(frame.clone(), capacity) {
                self.metrics().delivered.inc();
            } else {
                slow.push(id);
            }
        }
        for id in slow {
            l.subscribers.remove(&id);
            self.metrics().subscribers.dec();
            self.metrics().resync("slow_subscriber");
        }
        if l.subscribers.is_empty() {
            local.remove(&topic);
            drop(local);
            self.metrics().topics.dec();
            self.withdraw(topic);
        }
    }

    /// Cuts every subscriber of `topic` on this shard with the resync signal.
    pub fn cut_topic(&self, topic: Topic, reason: &'static str) {
        let Some(l) = self.local.borrow_mut().remove(&topic) else {
            return;
        };
        self.metrics().topics.dec();
        for q in l.subscribers.values() {
            q.cut();
            self.metrics().subscribers.dec();
            self.metrics().resync(reason);
        }
        self.withdraw(topic);
    }

    /// Cuts every subscriber on this shard (the bus lost events).
    pub fn cut_all(&self, reason: &'static str) {
        let topics: Vec<Topic> = self.local.borrow().keys().copied().collect();
        for t in topics {
            self.cut_topic(t, reason);
        }
    }

    /// On the owner: cuts `topic`'s subscribers on every shard that follows it.
    fn cut_everywhere(&self, topic: Topic) {
        let interest = self.owned.borrow().get(&topic).map(|o| o.interest);
        for s in interest.into_iter().flat_map(ShardSet::iter) {
            if s == self.shard {
                self.cut_topic(topic, "lost");
            } else {
                self.plane.repair(s, topic, Repair::Cut);
            }
        }
    }

    /// Subscribes to `topic`: events published after this returns are delivered.
    pub async fn subscribe(self: &Rc<Self>, topic: Topic) -> Result<Subscriber> {
        let queue = Rc::new(Queue::default());
        let id = self.next_subscriber.get();
        self.next_subscriber.set(id + 1);
        let ready = {
            let mut local = self.local.borrow_mut();
            let l = match local.entry(topic) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    self.metrics().topics.inc();
                    v.insert(Local {
                        subscribers: HashMap::new(),
                        last_seq: 0,
                        ready: self.declare_interest(topic),
                    })
                }
            };
            l.subscribers.insert(id, queue.clone());
            l.ready.clone()
        };
        self.metrics().subscribers.inc();
        let sub = Subscriber {
            queue,
            topic,
            id,
            delivery: self.clone(),
        };
        if ready.await {
            Ok(sub)
        } else {
            Err(Error::Overloaded) // `sub` drops: unsubscribed
        }
    }

    /// Tells the owner this shard has subscribers of `topic`; resolves once it knows.
    fn declare_interest(&self, topic: Topic) -> Shared<LocalBoxFuture<'static, bool>> {
        let (owner, me) = (self.owner(topic), self.shard);
        if owner == me {
            self.add_interest(topic, me);
            return futures::future::ready(true).boxed_local().shared();
        }
        let plane = self.plane.clone();
        async move {
            plane
                .shards()
                .invoke_on(owner, move |d: Rc<Delivery>| async move {
                    d.add_interest(topic, me)
                })
                .await
                .is_ok()
        }
        .boxed_local()
        .shared()
    }

    fn add_interest(&self, topic: Topic, shard: ShardId) {
        let mut owned = self.owned.borrow_mut();
        let o = owned.entry(topic).or_insert_with(|| {
            self.metrics().owned_topics.inc();
            self.plane.follow(topic, true);
            Owned::default()
        });
        o.interest.insert(shard);
    }

    fn remove_interest(&self, topic: Topic, shard: ShardId) {
        let mut owned = self.owned.borrow_mut();
        if let Some(o) = owned.get_mut(&topic) {
            o.interest.remove(shard);
            if o.interest.is_empty() {
                owned.remove(&topic);
                self.metrics().owned_topics.dec();
                self.plane.follow(topic, false);
            }
        }
    }

    /// Withdraws this shard's interest in `topic` at its owner (waiting for room when
    /// the owner's mailbox is full, so the owner's record goes too).
    fn withdraw(&self, topic: Topic) {
        let (owner, me) = (self.owner(topic), self.shard);
        if owner == me {
            self.remove_interest(topic, me);
        } else if self
            .shards()
            .submit_on(owner, "delivery", move |d: Rc<Delivery>| async move {
                d.remove_interest(topic, me)
            })
            .is_err()
        {
            self.plane.repair(owner, topic, Repair::Withdraw(me));
        }
    }

    fn unsubscribe(&self, topic: Topic, id: u64) {
        let mut local = self.local.borrow_mut();
        let Some(l) = local.get_mut(&topic) else {
            return; // already cut
        };
        if l.subscribers.remove(&id).is_none() {
            return;
        }
        self.metrics().subscribers.dec();
        if l.subscribers.is_empty() {
            local.remove(&topic);
            drop(local);
            self.metrics().topics.dec();
            self.withdraw(topic);
        }
    }

    /// Subscribers on this shard (tests).
    pub fn subscriber_count(&self) -> usize {
        self.local
            .borrow()
            .values()
            .map(|l| l.subscribers.len())
            .sum()
    }
}

/// Work a shard must not miss although its mailbox was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Repair {
    /// Cut the topic's subscribers there (and, on the owner, everywhere it is followed).
    Cut,
    /// On the owner: forget that shard's interest.
    Withdraw(ShardId),
}

impl Plane {
    /// An event from the bus: this node's owner shard of its topic numbers it in. Events
    /// of topics nobody on this node follows stop here; an empty frame is a resync marker
    /// (the event was lost before it got a number, on some node).
    pub fn on_bus_event(self: &Arc<Self>, event: BusEvent) {
        let metrics = &self.metrics.delivery;
        metrics.bus_received.inc();
        let topic = event.topic;
        if !self.follows(topic) {
            return;
        }
        let owner = self.shards().owner_of(topic.key());
        if event.frame.is_empty() {
            self.repair(owner, topic, Repair::Cut);
            return;
        }
        let Ok(frame) = Frame::verify(event.frame, &Limits::DEFAULT) else {
            metrics.lose("corrupt");
            return;
        };
        let seq = event.seq;
        let posted =
            self.shards()
                .submit_on(owner, "delivery", move |d: Rc<Delivery>| async move {
                    d.sequence(topic, Some(seq), frame)
                });
        if posted.is_err() {
            metrics.lose("overloaded");
            self.repair(owner, topic, Repair::Cut);
        }
    }

    /// The bus lost events (this node's subscription dropped and came back): every
    /// subscriber on the node resyncs.
    pub fn on_bus_lost(self: &Arc<Self>) {
        for shard in 0..self.shards().count() {
            let plane = self.clone();
            tokio::spawn(async move {
                let job = Shards::job(|d: Rc<Delivery>| async move { d.cut_all("bus_lost") });
                let _ = plane.shards().post_waiting(shard, "delivery", job).await;
            });
        }
    }

    /// An event of `topic` was lost before it got a number: its subscribers on this node
    /// resync, and on a fleet every other node's too (a marker, published once the bus
    /// takes it).
    pub fn lost(self: &Arc<Self>, topic: Topic) {
        self.repair(self.shards().owner_of(topic.key()), topic, Repair::Cut);
        if let Some(bus) = self.bus().cloned() {
            let marked = self
                .pending
                .lock()
                .map(|mut p| p.markers.insert(topic))
                .unwrap_or(false);
            if !marked {
                return;
            }
            let plane = self.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(100);
                while bus.publish(topic, Bytes::new()).await.is_err() {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                if let Ok(mut p) = plane.pending.lock() {
                    p.markers.remove(&topic);
                }
            });
        }
    }

    /// Posts `what` for `topic` to `shard`, waiting for room in its mailbox (off the
    /// request path), once per pending (shard, topic, what).
    pub(crate) fn repair(self: &Arc<Self>, shard: ShardId, topic: Topic, what: Repair) {
        let key = (shard, topic, what);
        let fresh = self
            .pending
            .lock()
            .map(|mut p| p.repairs.insert(key))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let plane = self.clone();
        tokio::spawn(async move {
            let job = Shards::job(move |d: Rc<Delivery>| async move {
                match what {
                    Repair::Withdraw(from) => d.remove_interest(topic, from),
                    Repair::Cut if d.owner(topic) == d.shard => d.cut_everywhere(topic),
                    Repair::Cut => d.cut_topic(topic, "lost"),
                }
            });
            let _ = plane.shards().post_waiting(shard, "delivery", job).await;
            if let Ok(mut p) = plane.pending.lock() {
                p.repairs.remove(&key);
            }
        });
    }

    /// Records whether some shard of this node follows `topic` (owners call it).
    fn follow(&self, topic: Topic, yes: bool) {
        if let Ok(mut t) = self.followed.write() {
            if yes {
                t.insert(topic);
            } else {
                t.remove(&topic);
            }
        }
    }

    /// Whether some shard of this node follows `topic`.
    fn follows(&self, topic: Topic) -> bool {
        self.followed.read().is_ok_and(|t| t.contains(&topic))
    }
}

/// Repairs and resync markers waiting for room (see [`Plane::repair`]).
#[derive(Default)]
pub(crate) struct Pending {
    repairs: HashSet<(ShardId, Topic, Repair)>,
    markers: HashSet<Topic>,
}

/// A `Stream` over an mpsc receiver.
fn stream_of<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plane::{Registry, serve_mailbox};

    fn event(delivery: &Delivery, n: u32) -> Bytes {
        delivery
            .encode_event(|b, id| {
                use selfie_protocol::notifications as nt;
                let ev = nt::NotificationEvent::create(
                    b,
                    &nt::NotificationEventArgs {
                        unread_notifications: n,
                        ..Default::default()
                    },
                );
                let body = nt::Notifications::create(
                    b,
                    &nt::NotificationsArgs {
                        op_type: nt::NotificationsOp::NotificationEvent,
                        op: Some(ev.as_union_value()),
                    },
                );
                crate::plane::envelope(
                    b,
                    id,
                    selfie_protocol::Body::Notifications,
                    body.as_union_value(),
                )
            })
            .expect("encoded")
    }

    fn seq_of(e: &SubscriberEvent) -> u64 {
        match e {
            SubscriberEvent::Event(b) => Frame::verify(b.clone(), &Limits::DEFAULT)
                .expect("valid")
                .id(),
            SubscriberEvent::Resync => 0,
        }
    }

    /// One shard on the current thread.
    async fn one_shard(config: DeliveryConfig) -> (Arc<Plane>, Rc<Delivery>) {
        let plane = Plane::new(1, config);
        let registry = Rc::new(Registry::new(0, &plane));
        let delivery = registry.delivery().clone();
        let mailbox = plane.shards().take_mailbox(0).expect("mailbox");
        tokio::task::spawn_local(serve_mailbox(mailbox, registry, plane.clone()));
        (plane, delivery)
    }

    #[tokio::test]
    async fn subscribers_receive_events_in_sequence_and_leave_nothing_behind() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (plane, d) = one_shard(DeliveryConfig::default()).await;
                let topic = Topic::new(SubscriptionKind::Post, 42);
                // Nobody listens: the event goes nowhere, and nothing is kept for it.
                d.publish(topic, event(&d, 0)).await.expect("published");
                let a = d.subscribe(topic).await.expect("subscribed");
                let b = d.subscribe(topic).await.expect("subscribed");
                for n in 1..=3 {
                    d.publish(topic, event(&d, n)).await.expect("published");
                }
                for s in [&a, &b] {
                    let got = [s.next().await, s.next().await, s.next().await];
                    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2, 3]);
                    assert_eq!(s.queued(), 0, "exactly once");
                }
                let m = &plane.metrics.delivery;
                assert_eq!(
                    (m.topics.get(), m.subscribers.get(), m.owned_topics.get()),
                    (1, 2, 1)
                );
                drop(a);
                drop(b);
                assert_eq!(
                    (m.topics.get(), m.subscribers.get(), m.owned_topics.get()),
                    (0, 0, 0)
                );
                assert_eq!(m.delivered.get(), 6);
            })
            .await;
    }

    #[tokio::test]
    async fn publish_soon_sequences_at_once_on_the_owner_and_refuses_corrupt_events() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (plane, d) = one_shard(DeliveryConfig::default()).await;
                let topic = Topic::new(SubscriptionKind::Post, 7);
                let s = d.subscribe(topic).await.expect("subscribed");
                for n in 1..=3 {
                    d.publish_soon(topic, event(&d, n));
                }
                // No task in between: the events are already in the subscriber's queue.
                assert_eq!(s.queued(), 3);
                let got = [s.next().await, s.next().await, s.next().await];
                assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2, 3]);
                let m = &plane.metrics.delivery;
                assert_eq!(m.published.get(), 3);
                let lost =
                    |reason: &'static str| m.lost.get_or_create(&ReasonLabel { reason }).get();
                d.publish_soon(topic, Bytes::from_static(b"not a frame"));
                assert_eq!(lost("corrupt"), 1);
                assert_eq!((m.published.get(), s.queued()), (3, 0));
            })
            .await;
    }

    /// The `n` an [`event`] carries.
    fn n_of(e: &SubscriberEvent) -> u32 {
        match e {
            SubscriberEvent::Event(b) => Frame::verify(b.clone(), &Limits::DEFAULT)
                .expect("valid")
                .envelope()
                .body_as_notifications()
                .and_then(|n| n.op_as_notification_event())
                .map_or(0, |e| e.unread_notifications()),
            SubscriberEvent::Resync => 0,
        }
    }

    /// The race `publish_soon` must not lose: a topic owned by another shard whose
    /// mailbox fills, so some events wait in tasks while later ones could be posted at
    /// once. Every event arrives once, in publishing order, with no sequence hole.
    #[test]
    fn publish_soon_keeps_order_across_shards_when_the_owners_mailbox_fills() {
        const DEPTH: usize = 4;
        const FIRST: u32 = 20; // published while the owner serves nothing
        const TOTAL: u32 = 40; // the rest while the waiting ones drain
        let plane = Plane::with_mailbox_depth(2, DEPTH, DeliveryConfig::default());
        let topic = (0..)
            .map(|key| Topic::new(SubscriptionKind::Post, key))
            .find(|t| plane.shards().owner_of(t.key()) == 1)
            .expect("a topic owned by shard 1");
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        // The owner: subscribes, then serves its mailbox only when told, and returns
        // what its subscriber received.
        let owner = {
            let plane = plane.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let registry = Rc::new(Registry::new(1, &plane));
                    let s = registry.delivery().subscribe(topic).await.expect("sub");
                    subscribed_tx.send(()).expect("told");
                    go_rx.await.expect("go");
                    let mailbox = plane.shards().take_mailbox(1).expect("mailbox");
                    tokio::task::spawn_local(serve_mailbox(mailbox, registry, plane.clone()));
                    let mut got = Vec::new();
                    for _ in 0..TOTAL {
                        let e = tokio::time::timeout(Duration::from_secs(30), s.next())
                            .await
                            .expect("every event arrives");
                        got.push((seq_of(&e), n_of(&e)));
                    }
                    (got, s.queued())
                })
            })
        };
        subscribed_rx.recv().expect("subscribed");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let registry = Rc::new(Registry::new(0, &plane));
            let d = registry.delivery().clone();
            for n in 1..=FIRST {
                d.publish_soon(topic, event(&d, n));
            }
            // The mailbox took DEPTH; the rest wait in tasks, in order.
            assert_eq!(d.waiting.get(), (FIRST as usize) - DEPTH);
            go_tx.send(()).expect("go");
            // More while those drain: none may pass an event still waiting.
            for n in FIRST + 1..=TOTAL {
                d.publish_soon(topic, event(&d, n));
                tokio::task::yield_now().await;
            }
            while d.waiting.get() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let (got, left) = owner.join().expect("owner thread");
        let expected: Vec<(u64, u32)> = (1..=TOTAL).map(|n| (u64::from(n), n)).collect();
        assert_eq!(got, expected, "in order, once each, no hole");
        assert_eq!(left, 0, "nothing more");
        let m = &plane.metrics.delivery;
        assert_eq!(m.published.get(), u64::from(TOTAL));
        for reason in ["overloaded", "corrupt"] {
            assert_eq!(m.lost.get_or_create(&ReasonLabel { reason }).get(), 0);
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_cut_off_and_the_others_keep_receiving() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let config = DeliveryConfig {
                    subscriber_queue: 4,
                    ..DeliveryConfig::default()
                };
                let (plane, d) = one_shard(config).await;
                let topic = Topic::new(SubscriptionKind::Post, 7);
                let slow = d.subscribe(topic).await.expect("subscribed");
                let fast = d.subscribe(topic).await.expect("subscribed");
                for n in 1..=10 {
                    d.publish(topic, event(&d, n)).await.expect("published");
                    assert_eq!(seq_of(&fast.next().await), u64::from(n));
                }
                assert_eq!(slow.next().await, SubscriberEvent::Resync);
                let m = &plane.metrics.delivery;
                assert_eq!(m.subscribers.get(), 1, "the slow one is gone");
                let slow_drops = m
                    .resyncs
                    .get_or_create(&ReasonLabel {
                        reason: "slow_subscriber",
                    })
                    .get();
                assert_eq!(slow_drops, 1);
                drop(slow); // already cut: dropping it changes nothing
                assert_eq!(m.subscribers.get(), 1);
            })
            .await;
    }

    #[tokio::test]
    async fn a_jump_in_the_fleet_sequence_resyncs_the_topic_instead_of_delivering_a_hole() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (_plane, d) = one_shard(DeliveryConfig::default()).await;
                let topic = Topic::new(SubscriptionKind::Conversation, 9);
                let s = d.subscribe(topic).await.expect("subscribed");
                let frame = |n| Frame::verify(event(&d, n), &Limits::DEFAULT).expect("valid");
                d.sequence(topic, Some(41), frame(1));
                d.sequence(topic, Some(42), frame(2));
                d.sequence(topic, Some(44), frame(3)); // 43 was lost
                assert_eq!(seq_of(&s.next().await), 41);
                assert_eq!(seq_of(&s.next().await), 42);
                assert_eq!(s.next().await, SubscriberEvent::Resync);
            })
            .await;
    }

    #[tokio::test]
    async fn bus_events_reach_followed_topics_only_and_an_empty_one_resyncs() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (plane, d) = one_shard(DeliveryConfig::default()).await;
                let followed = Topic::new(SubscriptionKind::Post, 1);
                let other = Topic::new(SubscriptionKind::Post, 2);
                let s = d.subscribe(followed).await.expect("subscribed");
                let bus = |topic, seq, frame: Bytes| {
                    BusEvent::parse(seq, BusEvent::payload(topic, &frame).into()).expect("parsed")
                };
                // Nobody on this node follows `other`: its event is counted and dropped
                // before it costs a shard anything.
                plane.on_bus_event(bus(other, 7, event(&d, 1)));
                plane.on_bus_event(bus(followed, 7, event(&d, 2)));
                assert_eq!(seq_of(&s.next().await), 7, "numbered by the bus");
                plane.on_bus_event(bus(followed, 8, Bytes::from_static(b"not a frame")));
                // An empty frame is another node's marker for a lost event.
                plane.on_bus_event(bus(followed, 9, Bytes::new()));
                assert_eq!(s.next().await, SubscriberEvent::Resync);
                let m = &plane.metrics.delivery;
                assert_eq!(m.bus_received.get(), 4);
                assert_eq!(m.delivered.get(), 1);
                let corrupt = m.lost.get_or_create(&ReasonLabel { reason: "corrupt" });
                assert_eq!(corrupt.get(), 1);
                assert_eq!(m.subscribers.get(), 0, "the resynced subscriber is gone");
            })
            .await;
    }

    #[tokio::test]
    async fn an_event_lost_before_it_was_numbered_resyncs_its_subscribers() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (plane, d) = one_shard(DeliveryConfig::default()).await;
                let topic = Topic::new(SubscriptionKind::Conversation, 3);
                let bystander = Topic::new(SubscriptionKind::Conversation, 4);
                let s = d.subscribe(topic).await.expect("subscribed");
                let b = d.subscribe(bystander).await.expect("subscribed");
                plane.lost(topic);
                assert_eq!(s.next().await, SubscriberEvent::Resync);
                d.publish(bystander, event(&d, 1)).await.expect("published");
                assert_eq!(seq_of(&b.next().await), 1, "other topics are untouched");
            })
            .await;
    }

    #[test]
    fn topics_and_bus_payloads_round_trip() {
        let t = Topic::new(SubscriptionKind::HomeFeed, u64::MAX - 3);
        let ev = BusEvent::parse(5, BusEvent::payload(t, b"frame").into()).expect("parsed");
        assert_eq!((ev.topic, ev.seq, ev.frame.as_ref()), (t, 5, &b"frame"[..]));
        assert_eq!(t.name(), format!("homefeed:{}", u64::MAX - 3));
        let mut set = ShardSet::default();
        for s in [0, 63, 64, 255] {
            set.insert(s);
        }
        set.remove(63);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 64, 255]);
    }
}
