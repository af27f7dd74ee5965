//! Bounded polling: no test waits for anything without a limit.

use std::time::{Duration, Instant};

/// Calls `check` every `every` until it returns `Some`; `None` once `within` has passed,
/// for callers that must clean up before they fail.
pub fn poll<T>(within: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls `done` every 100ms until it holds; fails after `within` with `context()`.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool, context: impl FnOnce() -> String) {
    if poll(within, Duration::from_millis(100), || done().then_some(())).is_none() {
        panic!("{what}: not reached within {within:?}\n{}", context());
    }
}

/// Polls `check` every 50ms until it returns `Some`, and returns that; fails after `within`.
pub fn wait_for<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(within, Duration::from_millis(50), check).unwrap_or_else(|| panic!("{what}: not reached within {within:?}"))
}
