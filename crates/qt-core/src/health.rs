//! Health as reported by every component and rolled up into `/readyz` and `/status`.

use serde::Serialize;

/// How a component is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Working, but something needs attention (e.g. running without dedup after a store
    /// failure).
    Degraded(String),
    /// Not able to do its job; the detail says why.
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Whether the component can do its job (healthy or degraded).
    pub fn is_ready(&self) -> bool {
        !matches!(self, Health::Unhealthy(_))
    }
}
