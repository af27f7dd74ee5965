//! What the adapter reports as its health, and why: every state `/readyz` can show for a
//! RabbitMQ source, worded for the operator who reads it. The connection supervisor in
//! `adapter.rs` decides when each applies.

use qt_core::Health;

/// Before the first connect.
pub(crate) fn not_connected() -> Health {
    Health::Unhealthy("not connected yet".into())
}

/// The first connect failed.
pub(crate) fn connect_failed(error: impl std::fmt::Display) -> Health {
    Health::Unhealthy(error.to_string())
}

/// After `close`.
pub(crate) fn closed() -> Health {
    Health::Unhealthy("closed".into())
}

/// The connection was lost; the supervisor is reconnecting.
pub(crate) fn lost(url: &str, reason: &str) -> Health {
    Health::Unhealthy(format!("connection to {url} lost: {reason}; reconnecting"))
}

/// A reconnect attempt failed; the next one follows after the backoff.
pub(crate) fn reconnect_failed(url: &str, attempt: u32, reason: &str) -> Health {
    Health::Unhealthy(format!("reconnecting to {url} (attempt {attempt}): {reason}"))
}

/// The broker blocked publishing (a resource alarm): consuming and acking go on, but dead
/// letters and delayed requeues, which publish, wait.
pub(crate) fn blocked(reason: impl std::fmt::Display) -> Health {
    Health::Degraded(format!(
        "the broker blocked publishing ({reason}): dead letters and delayed requeues wait until the resource \
         alarm clears"
    ))
}
