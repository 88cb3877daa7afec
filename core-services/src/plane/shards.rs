//! Crossing cores, Seastar-style: every shard has one bounded mailbox of jobs, and any
//! thread holding the node's [`Plane`] can put work in it.
//!
//! - [`Shards::invoke_on`] runs a closure on another shard with that shard's instance of
//!   a service (`Rc<T>`, looked up by type in its [`Registry`]) and returns the closure's
//!   answer — a typed question, not a serialised message;
//! - [`Shards::invoke_on_all`] and [`Shards::map_reduce`] broadcast;
//! - [`Shards::forward`] carries a verified client request to its owner shard;
//! - [`Shards::submit_on`] posts work without waiting for it (the delivery plane's fan-out).
//!
//! A full mailbox is not waited on by requests and typed calls: they fail at once with
//! [`Error::Overloaded`] and `selfie_shard_overloaded_total` counts it (the delivery plane
//! may wait a bounded time for room, see `Delivery::publish`). Each shard runs at most as
//! many mailbox jobs at once as its mailbox holds, so the bound covers work in progress,
//! not only work queued; its loop ([`serve_mailbox`]) counts the jobs it runs, so that a
//! draining edge waits for forwarded work before it stops.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use selfie_codec::Frame;
use tokio::sync::{mpsc, oneshot};

use super::delivery::{Bus, DeliveryConfig, DeliveryMetrics};
use super::{Registry, RequestContext, ShardId, owner_shard};
use crate::{Error, Result};

/// Work for a shard: a closure run there with the shard's registry.
pub type Job = Box<dyn FnOnce(Rc<Registry>) -> LocalBoxFuture<'static, ()> + Send>;

/// A shard's end of its mailbox (taken once, by the shard's thread).
pub struct Mailbox {
    shard: ShardId,
    depth: usize,
    rx: mpsc::Receiver<Job>,
}

/// Labels: the shard a job runs on, and what kind of job it is.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The target shard.
    pub shard: u16,
    /// `forward` (a client request), `call` (a typed call), `delivery` (fan-out).
    pub kind: &'static str,
}

/// Labels: one shard.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// Shard index.
    pub shard: u16,
}

/// The plane's metrics, registered by the edge with its own.
#[derive(Default)]
pub struct PlaneMetrics {
    /// Jobs posted to shards, by target and kind.
    pub calls: Family<CallLabels, Counter>,
    /// Jobs refused because the target's mailbox was full.
    pub overloaded: Family<ShardLabel, Counter>,
    /// Jobs running on each shard.
    pub inflight: Family<ShardLabel, Gauge>,
    /// The delivery plane's.
    pub delivery: DeliveryMetrics,
}

impl PlaneMetrics {
    /// Registers every plane metric in `r`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "selfie_shard_calls",
            "Jobs posted to a shard's mailbox (forwarded requests, typed calls, deliveries)",
            self.calls.clone(),
        );
        r.register(
            "selfie_shard_overloaded",
            "Jobs refused because the target shard's mailbox was full",
            self.overloaded.clone(),
        );
        r.register(
            "selfie_shard_jobs_inflight",
            "Mailbox jobs running on a shard",
            self.inflight.clone(),
        );
        self.delivery.register(r);
    }
}

/// Every shard's mailbox, by shard index. `Send + Sync`: any thread may post.
pub struct Shards {
    depth: usize,
    senders: Vec<mpsc::Sender<Job>>,
    receivers: Mutex<Vec<Option<mpsc::Receiver<Job>>>>,
    metrics: Arc<PlaneMetrics>,
}

impl Shards {
    fn new(count: usize, depth: usize, metrics: Arc<PlaneMetrics>) -> Self {
        let (senders, receivers) = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(depth.max(1));
                (tx, Some(rx))
            })
            .unzip();
        Self {
            depth: depth.max(1),
            senders,
            receivers: Mutex::new(receivers),
            metrics,
        }
    }

    /// How many shards.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// The owner shard of `key`.
    pub fn owner_of(&self, key: u64) -> ShardId {
        owner_shard(key, self.count())
    }

    /// Takes shard `shard`'s mailbox (once).
    pub fn take_mailbox(&self, shard: ShardId) -> Option<Mailbox> {
        let mut r = self.receivers.lock().ok()?;
        let rx = r.get_mut(shard)?.take()?;
        Some(Mailbox {
            shard,
            depth: self.depth,
            rx,
        })
    }

    /// Posts `job` to `shard` without waiting; a full mailbox is `Overloaded`.
    fn post(&self, shard: ShardId, kind: &'static str, job: Job) -> Result<()> {
        match self.try_post(shard, kind, job) {
            Ok(()) => Ok(()),
            Err(Some(_)) => {
                self.metrics
                    .overloaded
                    .get_or_create(&ShardLabel {
                        shard: shard as u16,
                    })
                    .inc();
                Err(Error::Overloaded)
            }
            Err(None) if shard >= self.senders.len() => {
                Err(Error::Internal("a job for a shard that does not exist"))
            }
            Err(None) => Err(Error::Unavailable("that shard")),
        }
    }

    /// Posts `job` to `shard` if its mailbox has room now; `Err(Some(job))` back when it
    /// is full (for the caller to wait with [`Shards::post_waiting`]; not counted as an
    /// overload), `Err(None)` when the shard is gone.
    pub(crate) fn try_post(
        &self,
        shard: ShardId,
        kind: &'static str,
        job: Job,
    ) -> std::result::Result<(), Option<Job>> {
        let Some(tx) = self.senders.get(shard) else {
            return Err(None);
        };
        match tx.try_send(job) {
            Ok(()) => {
                self.metrics
                    .calls
                    .get_or_create(&CallLabels {
                        shard: shard as u16,
                        kind,
                    })
                    .inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(job)) => Err(Some(job)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        }
    }

    /// Posts `job` to `shard`, waiting for room (for work that must not be lost, off the
    /// request path: a resync after a dropped delivery).
    pub(crate) async fn post_waiting(
        &self,
        shard: ShardId,
        kind: &'static str,
        job: Job,
    ) -> Result<()> {
        let tx = self
            .senders
            .get(shard)
            .ok_or(Error::Internal("a job for a shard that does not exist"))?;
        tx.send(job)
            .await
            .map_err(|_| Error::Unavailable("that shard"))?;
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                shard: shard as u16,
                kind,
            })
            .inc();
        Ok(())
    }

    /// Runs `f` on `shard` with that shard's `T` and returns its answer.
    pub async fn invoke_on<T, R, F, Fut>(&self, shard: ShardId, f: F) -> Result<R>
    where
        T: 'static,
        R: Send + 'static,
        F: FnOnce(Rc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let (tx, rx) = oneshot::channel::<R>();
        let job = Self::job(move |t: Rc<T>| async move {
            let _ = tx.send(f(t).await);
        });
        self.post(shard, "call", job)?;
        // A dropped sender: the shard has no `T`, or stopped before answering.
        rx.await
            .map_err(|_| Error::Unavailable("that service on that shard"))
    }

    /// Runs `f` on `shard` with that shard's `T`, without waiting for it.
    pub fn submit_on<T, F, Fut>(&self, shard: ShardId, kind: &'static str, f: F) -> Result<()>
    where
        T: 'static,
        F: FnOnce(Rc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.post(shard, kind, Self::job(f))
    }

    /// A job running `f` with the target shard's `T` (skipped where there is none).
    pub(crate) fn job<T, F, Fut>(f: F) -> Job
    where
        T: 'static,
        F: FnOnce(Rc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Box::new(move |registry: Rc<Registry>| match registry.local::<T>() {
            Some(t) => Box::pin(f(t)),
            None => Box::pin(async {}),
        })
    }

    /// Runs `f` on every shard (this one included) and returns the answers by shard.
    /// Not atomic: if a mailbox is full the call fails with `Overloaded`, while the jobs
    /// already posted still run.
    pub async fn invoke_on_all<T, R, F, Fut>(&self, f: F) -> Result<Vec<R>>
    where
        T: 'static,
        R: Send + 'static,
        F: Fn(Rc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let f = Arc::new(f);
        let calls: Vec<_> = (0..self.count())
            .map(|shard| {
                let f = f.clone();
                self.invoke_on::<T, R, _, _>(shard, move |t| f(t))
            })
            .collect();
        futures::future::try_join_all(calls).await
    }

    /// Runs `map` on every shard and folds the answers with `reduce`, starting from `init`.
    pub async fn map_reduce<T, R, A, F, Fut>(
        &self,
        map: F,
        init: A,
        reduce: impl FnMut(A, R) -> A,
    ) -> Result<A>
    where
        T: 'static,
        R: Send + 'static,
        F: Fn(Rc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
    {
        Ok(self
            .invoke_on_all::<T, R, F, Fut>(map)
            .await?
            .into_iter()
            .fold(init, reduce))
    }

    /// Runs a verified client request on `shard` (its owner) and returns the answer.
    pub async fn forward(
        &self,
        shard: ShardId,
        service: selfie_protocol::Service,
        ctx: RequestContext,
        frame: Frame,
    ) -> Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |registry: Rc<Registry>| {
            Box::pin(async move {
                let answer = match registry.get(service) {
                    Some(svc) => svc.handle(registry.call(ctx, frame)).await,
                    None => Err(Error::Unavailable("this service")),
                };
                let _ = tx.send(answer);
            })
        });
        self.post(shard, "forward", job)?;
        rx.await
            .map_err(|_| Error::Unavailable("the owner shard"))?
    }
}

/// Serves `mailbox` on the current shard's runtime (inside a `LocalSet`) until every
/// sender is gone. Each job runs as its own task, at most the mailbox's depth at once (a
/// job waits in the mailbox, where it counts against the bound, until one ends); the
/// registry counts the running ones for drain.
pub async fn serve_mailbox(mut mailbox: Mailbox, registry: Rc<Registry>, plane: Arc<Plane>) {
    let gauge = plane
        .metrics
        .inflight
        .get_or_create(&ShardLabel {
            shard: mailbox.shard as u16,
        })
        .clone();
    let running = Arc::new(tokio::sync::Semaphore::new(mailbox.depth));
    let inflight = registry.inflight.clone();
    loop {
        let Ok(permit) = running.clone().acquire_owned().await else {
            return;
        };
        let Some(job) = mailbox.rx.recv().await else {
            return;
        };
        let running = Running::new(inflight.clone(), gauge.clone());
        let registry = registry.clone();
        tokio::task::spawn_local(async move {
            // Released however the job ends (a panicking job included).
            let _slot = (permit, running);
            job(registry).await;
        });
    }
}

/// One running job, counted while it lives.
struct Running {
    inflight: Inflight,
    gauge: Gauge,
}

impl Running {
    fn new(inflight: Inflight, gauge: Gauge) -> Self {
        inflight.set(inflight.get() + 1);
        gauge.inc();
        Self { inflight, gauge }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.gauge.dec();
    }
}

/// The node's plane: every shard's mailbox, the delivery plane's settings and its
/// cross-node bus, and the metrics. Shared by all shards (`Arc`); everything mutable
/// lives in the shards themselves.
pub struct Plane {
    shards: Shards,
    /// The delivery plane's settings.
    pub delivery: DeliveryConfig,
    bus: OnceLock<Arc<dyn Bus>>,
    /// Metrics.
    pub metrics: Arc<PlaneMetrics>,
    /// Topics some shard of this node follows (written by owners when a topic gains its
    /// first or loses its last interested shard; read by the bus inbox).
    pub(crate) followed: std::sync::RwLock<std::collections::HashSet<super::Topic>>,
    /// Repairs and resync markers waiting for room, deduplicated.
    pub(crate) pending: Mutex<super::delivery::Pending>,
}

/// Mailbox depth per shard.
pub const MAILBOX_DEPTH: usize = 4096;

impl Plane {
    /// A plane for `shards` shards.
    pub fn new(shards: usize, delivery: DeliveryConfig) -> Arc<Self> {
        Self::with_mailbox_depth(shards, MAILBOX_DEPTH, delivery)
    }

    /// A plane whose mailboxes hold `depth` jobs each.
    pub fn with_mailbox_depth(shards: usize, depth: usize, delivery: DeliveryConfig) -> Arc<Self> {
        let metrics = Arc::new(PlaneMetrics::default());
        Arc::new(Self {
            shards: Shards::new(shards, depth, metrics.clone()),
            delivery,
            bus: OnceLock::new(),
            metrics,
            followed: Default::default(),
            pending: Default::default(),
        })
    }

    /// The shards' mailboxes.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Connects the delivery plane to the other nodes (once, before shards start).
    pub fn set_bus(&self, bus: Arc<dyn Bus>) -> Result<()> {
        self.bus
            .set(bus)
            .map_err(|_| Error::Unavailable("a second event bus"))
    }

    /// The cross-node bus, when this node is part of a fleet.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.get()
    }
}

/// Jobs running on a shard (shared by its mailbox loop and its drain).
pub(crate) type Inflight = Rc<Cell<usize>>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A per-shard counter service, to call across shards.
    struct Tally {
        shard: ShardId,
        hits: Cell<u64>,
    }

    /// Runs `shards` shard threads serving their mailboxes; returns when `body` is done.
    fn with_shards<F, Fut>(plane: &Arc<Plane>, gate: Option<Arc<tokio::sync::Semaphore>>, body: F)
    where
        F: FnOnce(Arc<Plane>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut threads = Vec::new();
        for shard in 0..plane.shards().count() {
            let plane = plane.clone();
            let gate = gate.clone();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    if let Some(gate) = gate {
                        gate.acquire().await.expect("gate").forget();
                    }
                    let mut registry = Registry::new(shard, &plane);
                    registry.provide(Rc::new(Tally {
                        shard,
                        hits: Cell::new(0),
                    }));
                    let mailbox = plane.shards().take_mailbox(shard).expect("mailbox");
                    serve_mailbox(mailbox, Rc::new(registry), plane).await;
                });
            }));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(plane.clone()));
        drop(threads); // the shard threads end with the process
    }

    #[test]
    fn a_typed_call_runs_on_the_named_shard_and_returns_its_answer() {
        let plane = Plane::new(3, DeliveryConfig::default());
        with_shards(&plane, None, |plane| async move {
            for shard in 0..3 {
                let (ran_on, hits) = plane
                    .shards()
                    .invoke_on(shard, |t: Rc<Tally>| async move {
                        t.hits.set(t.hits.get() + 1);
                        (t.shard, t.hits.get())
                    })
                    .await
                    .expect("answered");
                assert_eq!((ran_on, hits), (shard, 1));
            }
            // A type no shard provides is refused, not lost.
            let err = plane
                .shards()
                .invoke_on(0, |_: Rc<String>| async {})
                .await
                .expect_err("no such local");
            assert!(matches!(err, Error::Unavailable(_)), "{err}");
        });
    }

    #[test]
    fn a_broadcast_reaches_every_shard_and_map_reduce_folds_the_answers() {
        let plane = Plane::new(4, DeliveryConfig::default());
        with_shards(&plane, None, |plane| async move {
            let shards = plane
                .shards()
                .invoke_on_all(|t: Rc<Tally>| async move {
                    t.hits.set(t.hits.get() + 10);
                    t.shard
                })
                .await
                .expect("broadcast");
            assert_eq!(shards, vec![0, 1, 2, 3]);
            let total = plane
                .shards()
                .map_reduce(|t: Rc<Tally>| async move { t.hits.get() }, 0, |a, h| a + h)
                .await
                .expect("map reduce");
            assert_eq!(total, 40);
        });
    }

    #[test]
    fn a_full_mailbox_is_answered_overloaded_and_counted() {
        // Shard threads wait at a gate, so nothing drains their mailboxes of depth 2.
        let plane = Plane::with_mailbox_depth(2, 2, DeliveryConfig::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let opened = gate.clone();
        with_shards(&plane, Some(gate), |plane| async move {
            let shards = plane.shards();
            for _ in 0..2 {
                shards
                    .submit_on(1, "call", |_: Rc<Tally>| async {})
                    .expect("room for two");
            }
            let err = shards
                .invoke_on(1, |t: Rc<Tally>| async move { t.shard })
                .await
                .expect_err("full");
            assert!(matches!(err, Error::Overloaded), "{err}");
            let refused = plane
                .metrics
                .overloaded
                .get_or_create(&ShardLabel { shard: 1 })
                .get();
            assert_eq!(refused, 1);
            // Once the shards run, the queued work is done and calls succeed again.
            opened.add_permits(2);
            let shard = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match shards
                        .invoke_on(1, |t: Rc<Tally>| async move { t.shard })
                        .await
                    {
                        Ok(s) => break s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
            .await
            .expect("served");
            assert_eq!(shard, 1);
        });
    }
}
