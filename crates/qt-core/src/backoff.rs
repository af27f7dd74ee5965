//! Exponential backoff: how long to wait after a failure before trying again.
//!
//! One law for every wait of this kind in qt (agent retries, reconnecting to a broker, a
//! failing receive, a failing ledger): delay number `n`, counting from 0, is
//! `initial * multiplier^n`, capped at `max`, then shortened by up to `jitter` of itself.
//!
//! The random number that picks the jitter comes from the caller, so [`Backoff::delay`] is a
//! pure function: the same inputs give the same delay, tests can pin it, and this crate needs
//! no random number generator.

use std::time::Duration;

/// `powi` takes an `i32`; a multiplier of 2 or more has overflowed `f64` (and so reached
/// `max`) by this exponent, a smaller one stops growing here.
const MAX_EXPONENT: u32 = 1024;

/// An exponential backoff policy: `initial * multiplier^n`, at most `max`, less a random share
/// of up to `jitter`.
///
/// Every value is accepted and gives a delay between zero and `max`: a multiplier below 1 (or
/// NaN) counts as 1, so delays never shrink as `n` grows; a jitter outside `0..=1` is clamped
/// into it, NaN counts as 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay (`n = 0`).
    pub initial: Duration,
    /// Growth from one delay to the next.
    pub multiplier: f64,
    /// The longest delay, before jitter.
    pub max: Duration,
    /// The largest share (`0..=1`) of a delay that jitter takes off, so that many waiters that
    /// failed together do not all try again in the same instant. 0 for no jitter.
    pub jitter: f64,
}

impl Backoff {
    /// Delay number `n` (0 for the first) without jitter: `initial * multiplier^n`, at most
    /// `max`. Never shorter than the delay before it.
    pub fn base(&self, n: u32) -> Duration {
        // `f64::max` ignores NaN, so a NaN multiplier counts as 1 too.
        let growth = self.multiplier.max(1.0).powi(n.min(MAX_EXPONENT) as i32);
        let secs = self.initial.as_secs_f64() * growth;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        // `min`: the conversions round, by at most a few nanoseconds for delays of weeks.
        Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.min(self.max))
    }

    /// Delay number `n` (0 for the first) with jitter: [`base`](Self::base) shortened by
    /// `jitter * unit` of itself. `unit` is the caller's random number in `[0, 1)` (a value
    /// outside is clamped into `[0, 1]`; NaN or infinite counts as 0), so the result lies
    /// between `(1 - jitter) * base(n)` and `base(n)`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let base = self.base(n);
        let cut = fraction(self.jitter) * fraction(unit);
        Duration::try_from_secs_f64((1.0 - cut) * base.as_secs_f64()).map_or(base, |d| d.min(base))
    }
}

/// `x` clamped into `[0, 1]`, with NaN and infinities as 0.
fn fraction(x: f64) -> f64 {
    if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier: 2.0,
            max,
            jitter: 0.0,
        }
    }

    #[test]
    fn delay_zero_is_initial_and_each_next_one_is_multiplied() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            multiplier: 3.0,
            max: Duration::from_secs(2),
            jitter: 0.0,
        };
        let delays: Vec<u128> = (0..5).map(|n| b.base(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 300, 900, 2000, 2000]);
        assert_eq!(b.delay(1, 0.99), Duration::from_millis(300), "no jitter, no cut");
    }

    #[test]
    fn jitter_takes_off_its_share_of_the_unit() {
        let b = Backoff {
            jitter: 0.5,
            ..doubling(Duration::from_secs(1), Duration::from_secs(60))
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(750));
        assert_eq!(b.delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(
            b.delay(0, f64::NAN),
            Duration::from_secs(1),
            "a NaN draw takes nothing off"
        );
    }

    #[test]
    fn an_initial_above_max_is_capped() {
        let b = doubling(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(b.base(0), Duration::from_secs(1));
    }

    #[test]
    fn huge_attempts_multipliers_and_durations_stay_at_max() {
        for multiplier in [2.0, 100.0, f64::MAX, f64::INFINITY] {
            let b = Backoff {
                initial: Duration::from_nanos(1),
                multiplier,
                max: Duration::MAX,
                jitter: 0.0,
            };
            assert_eq!(b.base(u32::MAX), Duration::MAX);
            assert_eq!(b.delay(u32::MAX, 0.5), Duration::MAX);
        }
    }

    #[test]
    fn a_multiplier_below_one_or_nan_never_shrinks_the_delay() {
        for multiplier in [0.5, 0.0, -2.0, f64::NAN] {
            let b = Backoff {
                multiplier,
                ..doubling(Duration::from_millis(100), Duration::from_secs(5))
            };
            assert_eq!(b.base(7), Duration::from_millis(100));
        }
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the inputs, a delay is at most its base, the base at most `max`, and
        /// jitter takes off no more than its share.
        #[test]
        fn never_above_max_and_jitter_within_its_share(
            initial in any_duration(),
            max in any_duration(),
            multiplier in any::<f64>(),
            jitter in any::<f64>(),
            n in any::<u32>(),
            unit in any::<f64>(),
        ) {
            let b = Backoff { initial, multiplier, max, jitter };
            let base = b.base(n);
            let d = b.delay(n, unit);
            prop_assert!(base <= max);
            prop_assert!(d <= base);
            let floor = base.as_secs_f64() * (1.0 - fraction(jitter));
            prop_assert!(d.as_secs_f64() >= floor * (1.0 - 1e-12) - 1e-9);
        }

        /// Delays never shrink from one to the next, with or without jitter (for the same
        /// draw).
        #[test]
        fn non_decreasing(
            initial in any_duration(),
            max in any_duration(),
            multiplier in 0.0f64..1e6,
            jitter in 0.0f64..=1.0,
            n in any::<u32>(),
            unit in 0.0f64..1.0,
        ) {
            let b = Backoff { initial, multiplier, max, jitter };
            let next = n.saturating_add(1);
            prop_assert!(b.base(next) >= b.base(n));
            prop_assert!(b.delay(next, unit) >= b.delay(n, unit));
        }

        /// With whole milliseconds and a multiplier of 2, the law gives exactly what
        /// doubling a `Duration` and capping it gives.
        #[test]
        fn doubling_whole_milliseconds_is_exact(
            initial_ms in 1u64..100_000,
            max_ms in 1u64..86_400_000,
            n in 0u32..64,
        ) {
            let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            let b = doubling(initial, max);
            let mut doubled = initial.min(max);
            for _ in 0..n {
                doubled = (doubled * 2).min(max);
            }
            prop_assert_eq!(b.base(n), doubled);
            prop_assert_eq!(b.delay(n, 0.7), doubled);
        }
    }
}
