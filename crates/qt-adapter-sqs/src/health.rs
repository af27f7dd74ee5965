//! How the pollers are doing: health for `/readyz`, and the latest receive failure for the
//! engine's next `receive` call.

use parking_lot::Mutex;
use qt_core::Health;
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    NotConnected,
    Receiving,
    Failing(String),
    Closed,
}

#[derive(Debug)]
pub struct Status {
    state: Mutex<State>,
    /// A receive failure not yet reported through `receive`.
    unreported: Mutex<Option<String>>,
    failed: Notify,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::NotConnected),
            unreported: Mutex::new(None),
            failed: Notify::new(),
        }
    }
}

impl Status {
    /// A receive call succeeded: healthy again, and an unreported failure is moot.
    pub fn receiving(&self) {
        let mut state = self.state.lock();
        if *state != State::Closed {
            *state = State::Receiving;
            *self.unreported.lock() = None;
        }
    }

    pub fn failing(&self, reason: String) {
        let mut state = self.state.lock();
        if *state != State::Closed {
            *state = State::Failing(reason.clone());
            *self.unreported.lock() = Some(reason);
            self.failed.notify_one();
        }
    }

    pub fn closed(&self) {
        *self.state.lock() = State::Closed;
    }

    pub fn is_closed(&self) -> bool {
        *self.state.lock() == State::Closed
    }

    /// Waits until a failure may be waiting; follow with [`Status::take_failure`].
    pub async fn failure_signalled(&self) {
        self.failed.notified().await;
    }

    pub fn take_failure(&self) -> Option<String> {
        self.unreported.lock().take()
    }

    pub fn health(&self) -> Health {
        match &*self.state.lock() {
            State::NotConnected => Health::Unhealthy("not connected yet".to_owned()),
            State::Receiving => Health::Healthy,
            State::Failing(reason) => Health::Unhealthy(reason.clone()),
            State::Closed => Health::Unhealthy("closed".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_is_reported_once_and_cleared_by_recovery() {
        let status = Status::default();
        assert!(!status.health().is_ready());
        status.receiving();
        assert!(status.health().is_healthy());
        status.failing("endpoint down".to_owned());
        assert_eq!(status.health(), Health::Unhealthy("endpoint down".to_owned()));
        status.receiving();
        assert!(status.health().is_healthy());
        assert_eq!(status.take_failure(), None);
        status.failing("again".to_owned());
        assert_eq!(status.take_failure().as_deref(), Some("again"));
        assert_eq!(status.take_failure(), None);
        status.closed();
        status.receiving();
        assert!(status.is_closed());
    }
}
