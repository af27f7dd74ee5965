//! The governance layer: may this tenant run this event now? (requirement 7.1)

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::health::Health;

/// What governance is asked about. Borrowed: asking governance costs no allocation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GovernanceContext<'a> {
    pub tenant_id: Option<&'a str>,
    pub event_name: &'a str,
    pub message_id: &'a str,
    pub queue: &'a str,
    pub adapter: &'a str,
    /// The agent target the event is routed to.
    pub target: &'a str,
}

/// The decision, with enough detail for the ledger (requirement 7.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny {
        reason: String,
        policies: Vec<String>,
    },
    /// Not now (rate limit, quota): requeue and try after `retry_after`.
    Defer {
        retry_after: Duration,
        reason: String,
        policies: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("governance unavailable: {reason}")]
pub struct GovernanceError {
    pub reason: String,
}

/// Decides whether a message may run. `finished` is called once for every `Allow` when the
/// run ends, so quota-keeping implementations can give the slot back.
#[async_trait]
pub trait Governance: Send + Sync + std::fmt::Debug {
    async fn check(&self, ctx: &GovernanceContext<'_>) -> Result<Decision, GovernanceError>;

    /// Decides right here when this governance needs no I/O to decide (in-process
    /// policies), so asking costs no future per message. `None` (the default) means ask
    /// [`Governance::check`]; the engine asks this first.
    fn check_now(&self, ctx: &GovernanceContext<'_>) -> Option<Result<Decision, GovernanceError>> {
        let _ = ctx;
        None
    }

    fn finished(&self, ctx: &GovernanceContext<'_>) {
        let _ = ctx;
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
