//! What a trigger says about itself: liveness and readiness with their reasons (`/healthz`,
//! `/readyz`) and the `/status` document.

use qt_core::Health;
use serde::Serialize;

use super::{QueueTrigger, TriggerState};
use crate::metrics::MetricsSnapshot;

/// A component's health, named.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentHealth {
    pub component: String,
    pub health: Health,
}

/// Liveness and readiness with the reasons behind them.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub state: TriggerState,
    /// The process is doing its job or trying to (not failed, intake alive while running).
    pub live: bool,
    /// Connected, running, not paused, every component able to work.
    pub ready: bool,
    pub components: Vec<ComponentHealth>,
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub state: TriggerState,
    pub adapter: String,
    pub queue: String,
    pub concurrency: usize,
    pub max_in_flight: usize,
    pub uptime_seconds: f64,
    pub metrics: MetricsSnapshot,
}

impl QueueTrigger {
    pub async fn health(&self) -> HealthReport {
        let s = &self.shared;
        let p = &s.pipeline;
        let state = self.state();
        let receive_error = s.source_error.lock().clone();
        let source_health = match receive_error {
            Some(e) => Health::Unhealthy(format!("receive failing: {e}")),
            None => s.adapter.health().await,
        };
        let mut components = vec![ComponentHealth {
            component: format!("source:{}", s.adapter.kind()),
            health: source_health,
        }];
        if let Some(store) = &p.store {
            let mut h = store.health().await;
            if matches!(
                p.config.idempotency.on_store_error,
                qt_core::config::OnStoreError::FailOpen
            ) && let Health::Unhealthy(reason) = h
            {
                // fail_open keeps processing without dedup: degraded, not down.
                h = Health::Degraded(format!("running without dedup: {reason}"));
            }
            components.push(ComponentHealth {
                component: "idempotency".to_owned(),
                health: h,
            });
        }
        components.push(ComponentHealth {
            component: "ledger".to_owned(),
            health: p.ledger.health().await,
        });
        components.push(ComponentHealth {
            component: "governance".to_owned(),
            health: p.governance.health().await,
        });
        let intake_alive = {
            let guard = s.running.lock().await;
            guard.as_ref().is_some_and(|r| !r.intake.is_finished())
        };
        let live = match state {
            TriggerState::Failed => false,
            TriggerState::Running | TriggerState::Paused => intake_alive,
            _ => true,
        };
        let ready = state == TriggerState::Running && live && components.iter().all(|c| c.health.is_ready());
        HealthReport {
            state,
            live,
            ready,
            components,
        }
    }

    pub fn status(&self) -> Status {
        let s = &self.shared;
        let p = &s.pipeline;
        Status {
            name: p.config.name.clone(),
            state: self.state(),
            adapter: s.adapter.kind().to_owned(),
            queue: s.adapter.queue().to_owned(),
            concurrency: p.config.processing.concurrency,
            max_in_flight: s.max_in_flight,
            uptime_seconds: s.started_at.lock().map_or(0.0, |t| t.elapsed().as_secs_f64()),
            metrics: p.metrics.snapshot(),
        }
    }
}
