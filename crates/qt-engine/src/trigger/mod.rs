//! `QueueTrigger`: a configured pipeline with a lifecycle (requirement 2). Built by
//! [`builder`], started, paused, resumed and stopped by [`lifecycle`], observed through
//! [`status`]; [`backlog`] keeps the broker's backlog gauge current while it runs.

mod backlog;
mod builder;
mod lifecycle;
mod status;

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use qt_core::QueueAdapter;
use qt_core::config::Config;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::{BuildError, TriggerBuilder};
pub use lifecycle::{LifecycleError, StopReport};
pub use status::{ComponentHealth, HealthReport, Status};

use crate::metrics::MetricsSnapshot;
use crate::pipeline::Pipeline;

/// Where a trigger is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    Created,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl TriggerState {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerState::Created => "created",
            TriggerState::Starting => "starting",
            TriggerState::Running => "running",
            TriggerState::Paused => "paused",
            TriggerState::Stopping => "stopping",
            TriggerState::Stopped => "stopped",
            TriggerState::Failed => "failed",
        }
    }
}

struct Running {
    stop_intake: CancellationToken,
    intake: JoinHandle<&'static str>,
    /// The batch tasks, which settle their own messages: a stop waits for them (the drain).
    batches: TaskTracker,
    backlog_poller: JoinHandle<()>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    adapter: Arc<dyn QueueAdapter>,
    state: watch::Sender<TriggerState>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    source_error: Arc<Mutex<Option<String>>>,
    started_at: Mutex<Option<Instant>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

/// A running (or runnable) queue trigger.
#[derive(Clone)]
pub struct QueueTrigger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QueueTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueTrigger")
            .field("name", &self.shared.pipeline.config.name)
            .field("state", &self.state())
            .finish()
    }
}

impl QueueTrigger {
    pub fn state(&self) -> TriggerState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn subscribe_state(&self) -> watch::Receiver<TriggerState> {
        self.shared.state.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.shared.pipeline.config
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.pipeline.metrics.snapshot()
    }

    pub fn adapter(&self) -> &Arc<dyn QueueAdapter> {
        &self.shared.adapter
    }
}
