//! The broker's backlog, read into `qt_backlog_messages` while the trigger runs.

use std::sync::Arc;
use std::time::Duration;

use qt_core::QueueAdapter;

use crate::metrics::Metrics;

/// How often the broker backlog is read into `qt_backlog_messages`.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

pub(super) async fn poll_backlog(adapter: Arc<dyn QueueAdapter>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(BACKLOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match adapter.backlog().await {
            Ok(b) => metrics.set_backlog(b),
            Err(e) => {
                metrics.set_backlog(None);
                tracing::debug!(error = %e, "backlog unavailable");
            }
        }
    }
}
