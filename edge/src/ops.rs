//! Ops HTTP on a TCP admin port: `/metrics` (Prometheus text), `/livez` (every shard's
//! loop ticked within the last 5 s), `/readyz` (every shard serving and not draining).
//! It runs on its own thread and runtime, never on a shard.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::shard::Shared;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ops router.
pub fn router(shared: Arc<Shared>) -> Router {
    let metrics = shared.clone();
    let live = shared.clone();
    let ready = shared;
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/livez",
            get(move || {
                let now = now_ms();
                let stale: Vec<usize> = live
                    .heartbeats
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| now.saturating_sub(h.load(Ordering::Relaxed)) > 5_000)
                    .map(|(i, _)| i)
                    .collect();
                async move {
                    if stale.is_empty() {
                        (StatusCode::OK, "live\n".to_string()).into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("stalled shards: {stale:?}\n"),
                        )
                            .into_response()
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let draining = *ready.drain.borrow();
                let running = ready.running.load(Ordering::SeqCst);
                let total = ready.shards;
                async move {
                    if draining {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string())
                    } else if running < total {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{running}/{total} shards serving\n"),
                        )
                    } else {
                        (StatusCode::OK, "ready\n".to_string())
                    }
                }
            }),
        )
}
