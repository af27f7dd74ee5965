//! How long to wait before the next reconnect attempt.

use std::time::Duration;

use qt_core::Backoff;

/// The share of a delay taken off at random, so that many qt processes that lost the broker
/// together do not all come back in the same instant.
const JITTER: f64 = 0.2;

/// Delay before reconnect attempt `attempt` (0 for the first): `initial * 2^attempt`, capped at
/// `max`, minus up to 20% chosen by `unit` (a number in `[0, 1)`).
pub(crate) fn reconnect_delay(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let backoff = Backoff {
        initial,
        multiplier: 2.0,
        max,
        jitter: JITTER,
    };
    backoff.delay(attempt, unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_then_caps() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        assert_eq!(reconnect_delay(0, i, m, 0.0), Duration::from_millis(500));
        assert_eq!(reconnect_delay(1, i, m, 0.0), Duration::from_secs(1));
        assert_eq!(reconnect_delay(3, i, m, 0.0), Duration::from_secs(4));
        assert_eq!(reconnect_delay(40, i, m, 0.0), m);
        assert_eq!(reconnect_delay(u32::MAX, i, m, 0.0), m);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Never above the cap, never below 80% of the undithered delay, never shrinking as
        /// attempts grow (for the same draw).
        #[test]
        fn bounded_and_monotone(
            attempt in 0u32..100,
            initial_ms in 1u64..10_000,
            extra_ms in 0u64..120_000,
            unit in 0.0f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let d = reconnect_delay(attempt, initial, max, unit);
            let undithered = reconnect_delay(attempt, initial, max, 0.0);
            prop_assert!(d <= max);
            prop_assert!(d.as_secs_f64() >= undithered.as_secs_f64() * 0.8 - 1e-9);
            prop_assert!(undithered >= initial.min(max));
            prop_assert!(reconnect_delay(attempt + 1, initial, max, unit) >= d);
        }
    }
}
