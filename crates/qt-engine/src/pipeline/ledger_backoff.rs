//! While ledger writes fail, a batch whose write failed tries again after a pause, and intake
//! takes no more messages until that pause is over: messages taken meanwhile would only fail
//! against the same ledger, as fast as the source hands them over. The pause doubles with
//! each failure up to [`MAX_PAUSE`] and ends with the first write that succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qt_core::Backoff;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);
const PAUSES: Backoff = Backoff {
    initial: FIRST_PAUSE,
    multiplier: 2.0,
    max: MAX_PAUSE,
    jitter: 0.0,
};

#[derive(Debug, Default)]
pub(crate) struct LedgerBackoff {
    /// Checked on every write and every receive, so the healthy path takes no lock.
    failing: AtomicBool,
    pause: Mutex<Pause>,
}

#[derive(Debug, Default)]
struct Pause {
    /// Failed writes in the current outage so far; picks the next pause.
    failures: u32,
    until: Option<Instant>,
}

impl LedgerBackoff {
    /// A write failed: intake pauses, longer than after the previous failure.
    pub fn failed(&self) -> Duration {
        let mut pause = self.pause.lock();
        if !self.failing.swap(true, Ordering::Relaxed) {
            pause.failures = 0;
        }
        let length = PAUSES.base(pause.failures);
        pause.failures = pause.failures.saturating_add(1);
        pause.until = Some(Instant::now() + length);
        length
    }

    /// A write succeeded: no more pausing. Called after every write, so the healthy case
    /// only reads the flag: a write to it on every batch would bounce its cache line
    /// between the worker threads.
    pub fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            *self.pause.lock() = Pause::default();
        }
    }

    /// How long intake should still wait, if at all.
    pub fn remaining(&self) -> Option<Duration> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let until = self.pause.lock().until?;
        until.checked_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_bound_and_end_with_a_success() {
        let b = LedgerBackoff::default();
        assert_eq!(b.remaining(), None);
        assert_eq!(b.failed(), FIRST_PAUSE);
        assert!(b.remaining().is_some_and(|r| r <= FIRST_PAUSE));
        assert_eq!(b.failed(), FIRST_PAUSE * 2);
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.failed(), MAX_PAUSE);
        b.succeeded();
        assert_eq!(b.remaining(), None);
        assert_eq!(b.failed(), FIRST_PAUSE, "a new outage starts short again");
    }
}
