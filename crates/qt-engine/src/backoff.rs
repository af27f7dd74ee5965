//! The retry law (requirements 5.2-5.4), as pure functions so it can be property-tested.

use std::time::Duration;

use qt_core::config::{EffectiveRetry, RetryConfig};
use qt_core::{Backoff, ErrorClass};

/// The delay before retry number `retry` (1 for the first retry): the policy's backoff delay
/// number `retry - 1`, so the first retry waits `initial`. `unit` is a random number in
/// `[0, 1)` that picks the jitter; passing it in keeps this function pure.
pub fn jittered_delay(policy: &EffectiveRetry, retry: u32, unit: f64) -> Duration {
    Backoff::from(&policy.backoff).delay(retry.saturating_sub(1), unit)
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Stop: retries for this class are used up, the class is permanent, or the budget is
    /// spent.
    GiveUp(GiveUpReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    Permanent,
    RetriesExhausted,
    BudgetExhausted,
}

impl GiveUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Permanent => "permanent_failure",
            GiveUpReason::RetriesExhausted => "retries_exhausted",
            GiveUpReason::BudgetExhausted => "retry_budget_exhausted",
        }
    }
}

/// Decides whether attempt number `attempts_made` (1-based) that failed with `class` gets
/// another try. `retry_after` (from a rate-limited agent) replaces the computed delay.
pub fn decide(
    config: &RetryConfig,
    class: ErrorClass,
    attempts_made: u32,
    elapsed: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> RetryDecision {
    if !class.is_retryable() {
        return RetryDecision::GiveUp(GiveUpReason::Permanent);
    }
    let policy = config.for_class(class);
    let retries_done = attempts_made.saturating_sub(1);
    if retries_done >= policy.max_retries {
        return RetryDecision::GiveUp(GiveUpReason::RetriesExhausted);
    }
    let delay = retry_after.unwrap_or_else(|| jittered_delay(&policy, retries_done + 1, unit));
    if let Some(budget) = config.total_budget
        && elapsed + delay > budget
    {
        return RetryDecision::GiveUp(GiveUpReason::BudgetExhausted);
    }
    RetryDecision::RetryAfter(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qt_core::config::{BackoffConfig, ClassRetryConfig};

    fn config(initial_ms: u64, multiplier: f64, max_ms: u64, jitter: f64, max_retries: u32) -> RetryConfig {
        RetryConfig {
            max_retries,
            backoff: BackoffConfig {
                initial: Duration::from_millis(initial_ms),
                multiplier,
                max: Duration::from_millis(max_ms),
                jitter,
            },
            total_budget: None,
            per_class: Default::default(),
        }
    }

    #[test]
    fn doubles_until_the_cap() {
        let policy = config(100, 2.0, 1000, 0.0, 6).for_class(ErrorClass::Retryable);
        let d: Vec<u128> = (1..=6).map(|n| jittered_delay(&policy, n, 0.0).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn permanent_is_never_retried_and_retry_after_is_honoured() {
        let c = config(100, 2.0, 1000, 0.0, 5);
        assert_eq!(
            decide(&c, ErrorClass::Permanent, 1, Duration::ZERO, None, 0.5),
            RetryDecision::GiveUp(GiveUpReason::Permanent)
        );
        assert_eq!(
            decide(
                &c,
                ErrorClass::RateLimited,
                1,
                Duration::ZERO,
                Some(Duration::from_secs(7)),
                0.5
            ),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );
    }

    #[test]
    fn per_class_overrides_apply() {
        let mut c = config(100, 2.0, 1000, 0.0, 5);
        c.per_class.insert(
            ErrorClass::Timeout,
            ClassRetryConfig {
                max_retries: Some(1),
                initial: Some(Duration::from_millis(10)),
                ..Default::default()
            },
        );
        assert_eq!(
            decide(&c, ErrorClass::Timeout, 1, Duration::ZERO, None, 0.0),
            RetryDecision::RetryAfter(Duration::from_millis(10))
        );
        assert_eq!(
            decide(&c, ErrorClass::Timeout, 2, Duration::ZERO, None, 0.0),
            RetryDecision::GiveUp(GiveUpReason::RetriesExhausted)
        );
        assert!(matches!(
            decide(&c, ErrorClass::Retryable, 2, Duration::ZERO, None, 0.0),
            RetryDecision::RetryAfter(_)
        ));
    }

    #[test]
    fn budget_stops_retries() {
        let mut c = config(100, 2.0, 1000, 0.0, 10);
        c.total_budget = Some(Duration::from_millis(250));
        assert!(matches!(
            decide(&c, ErrorClass::Retryable, 1, Duration::from_millis(100), None, 0.0),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            decide(&c, ErrorClass::Retryable, 2, Duration::from_millis(100), None, 0.0),
            RetryDecision::GiveUp(GiveUpReason::BudgetExhausted)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Backoff law: every delay lies in [(1-jitter)*base, base]; base never exceeds the
        /// cap and never shrinks from one retry to the next; exactly max_retries retries
        /// are granted.
        #[test]
        fn backoff_law(
            initial_ms in 1u64..5_000,
            multiplier in 1.0f64..10.0,
            max_extra_ms in 0u64..120_000,
            jitter in 0.0f64..=1.0,
            max_retries in 0u32..20,
            units in prop::collection::vec(0.0f64..1.0, 25),
        ) {
            let max_ms = initial_ms + max_extra_ms;
            let c = config(initial_ms, multiplier, max_ms, jitter, max_retries);
            let policy = c.for_class(ErrorClass::Retryable);
            let mut previous = Duration::ZERO;
            for retry in 1..=24u32 {
                let base = Backoff::from(&policy.backoff).base(retry - 1);
                prop_assert!(base <= Duration::from_millis(max_ms));
                prop_assert!(base >= previous);
                previous = base;
                let d = jittered_delay(&policy, retry, units[retry as usize]);
                prop_assert!(d <= base);
                prop_assert!(d.as_secs_f64() >= base.as_secs_f64() * (1.0 - jitter) - 1e-9);
            }
            let mut granted = 0;
            for attempt in 1..=max_retries + 5 {
                match decide(&c, ErrorClass::Retryable, attempt, Duration::ZERO, None, units[0]) {
                    RetryDecision::RetryAfter(_) => granted += 1,
                    RetryDecision::GiveUp(r) => { prop_assert_eq!(r, GiveUpReason::RetriesExhausted); break; }
                }
            }
            prop_assert_eq!(granted, max_retries);
        }
    }
}
