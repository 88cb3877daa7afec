//! The delivery plane across nodes, through Redis: every event is numbered and published
//! by one atomic script (`EventBus::publish_sequenced`), on one channel that each node
//! subscribes to once. Each node hands what it receives to its owner shards
//! ([`Plane::on_bus_event`]); when its subscription drops it resubscribes and tells every
//! subscriber to resync ([`Plane::on_bus_lost`]), since Redis pub/sub does not replay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use selfie_storage::redis::EventBus;

use super::delivery::{Bus, BusEvent, Topic};
use super::shards::Plane;
use crate::{BoxFuture, Result};

/// The bus channel of the delivery plane.
const CHANNEL: &str = "delivery";
/// How long a topic's sequence is kept after its last event. A topic silent for longer
/// starts again at 1; a subscriber connected across that sees the number go back, which
/// its shard treats like a gap (resync).
const KEEP: Duration = Duration::from_secs(3600);

/// [`Bus`] over a Redis [`EventBus`].
pub struct RedisBus {
    bus: EventBus,
}

impl RedisBus {
    /// Over `bus`.
    pub fn new(bus: EventBus) -> Self {
        Self { bus }
    }
}

impl Bus for RedisBus {
    fn publish(&self, topic: Topic, frame: Bytes) -> BoxFuture<'static, Result<u64>> {
        let bus = self.bus.clone();
        Box::pin(async move {
            let payload = BusEvent::payload(topic, &frame);
            Ok(bus
                .publish_sequenced(CHANNEL, &topic.name(), &payload, KEEP)
                .await?)
        })
    }
}

/// Receives the fleet's events for `plane` until the process ends: one subscription,
/// resubscribed after a loss (and then every subscriber resyncs). `subscribed` is told
/// once the first subscription is confirmed.
pub async fn run_inbox(
    bus: EventBus,
    plane: Arc<Plane>,
    subscribed: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut subscribed = subscribed;
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        match bus.subscribe().await {
            Ok((mut sub, messages)) => match sub.subscribe(CHANNEL).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    if lost {
                        plane.on_bus_lost();
                    }
                    let mut messages = std::pin::pin!(messages);
                    while let Some(m) = messages.next().await {
                        match m.sequenced().and_then(|(seq, p)| BusEvent::parse(seq, p)) {
                            Some(event) => plane.on_bus_event(event),
                            None => plane.metrics.delivery.lose("corrupt"),
                        }
                    }
                    tracing::warn!("delivery: fleet subscription lost; resubscribing");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery: cannot subscribe to the fleet channel")
                }
            },
            Err(e) => tracing::warn!(error = %e, "delivery: cannot open the fleet bus"),
        }
        lost = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
