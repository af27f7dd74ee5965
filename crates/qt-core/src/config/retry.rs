//! `retry`: how failed agent runs are retried (requirement 5.2).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::backoff::Backoff;
use crate::error_class::ErrorClass;

/// Exponential backoff: `initial * multiplier^(retry-1)`, capped at `max`, then reduced
/// by up to `jitter` (a fraction) at random so that many failing messages do not retry in
/// lock step.
// The law itself is `crate::backoff::Backoff`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    #[serde(default = "default_initial", with = "humantime_serde", alias = "base")]
    #[schemars(with = "HumanDuration")]
    #[schemars(extend("x-aliases" = ["base"]))]
    pub initial: Duration,
    /// Factor each further delay grows by, 1.0 to 100.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Longest single delay, at least `initial`.
    #[serde(default = "default_max", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub max: Duration,
    /// Fraction, 0 to 1, by which each delay is shortened at random.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max() -> Duration {
    Duration::from_secs(30)
}
fn default_jitter() -> f64 {
    0.2
}
fn default_max_retries() -> u32 {
    3
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            multiplier: default_multiplier(),
            max: default_max(),
            jitter: default_jitter(),
        }
    }
}

impl From<&BackoffConfig> for Backoff {
    fn from(c: &BackoffConfig) -> Self {
        Backoff {
            initial: c.initial,
            multiplier: c.multiplier,
            max: c.max,
            jitter: c.jitter,
        }
    }
}

/// A per-class override; unset fields fall back to the top-level values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRetryConfig {
    /// Retries after the first attempt for this class. Unset: `retry.max_retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Delay before the first retry. Unset: `retry.backoff.initial`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub initial: Option<Duration>,
    /// Growth factor of the delay, 1.0 to 100. Unset: `retry.backoff.multiplier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// Longest single delay. Unset: `retry.backoff.max`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub max: Option<Duration>,
    /// Random shortening of each delay, 0 to 1. Unset: `retry.backoff.jitter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// `retry`: how failed agent runs are retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt (so `max_retries + 1` attempts), at most 100.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The delays between attempts.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Stop retrying once this much time has passed since the first attempt. Unset: no
    /// budget.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub total_budget: Option<Duration>,
    /// Overrides of the fields above per error class: `retryable`, `rate_limited`,
    /// `timeout`. `permanent` failures are never retried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_class: BTreeMap<ErrorClass, ClassRetryConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            backoff: BackoffConfig::default(),
            total_budget: None,
            per_class: BTreeMap::new(),
        }
    }
}

/// The policy in force for one error class after applying overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveRetry {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The delays between attempts.
    pub backoff: BackoffConfig,
}

impl RetryConfig {
    /// The policy for failures of `class`: its override, field by field, over the top-level
    /// values; no retries for `permanent`.
    pub fn for_class(&self, class: ErrorClass) -> EffectiveRetry {
        if class == ErrorClass::Permanent {
            return EffectiveRetry {
                max_retries: 0,
                backoff: self.backoff.clone(),
            };
        }
        let o = self.per_class.get(&class).cloned().unwrap_or_default();
        EffectiveRetry {
            max_retries: o.max_retries.unwrap_or(self.max_retries),
            backoff: BackoffConfig {
                initial: o.initial.unwrap_or(self.backoff.initial),
                multiplier: o.multiplier.unwrap_or(self.backoff.multiplier),
                max: o.max.unwrap_or(self.backoff.max),
                jitter: o.jitter.unwrap_or(self.backoff.jitter),
            },
        }
    }
}

const MAX_RETRIES: u32 = 100;

fn check_backoff(
    path: &str,
    multiplier: Option<f64>,
    jitter: Option<f64>,
    initial: Option<Duration>,
    max: Option<Duration>,
    problems: &mut ConfigErrors,
) {
    if let Some(m) = multiplier
        && !(1.0..=100.0).contains(&m)
    {
        problems.push(
            join(path, "multiplier"),
            format!("must be between 1.0 and 100.0, got {m}"),
        );
    }
    if let Some(j) = jitter
        && !(0.0..=1.0).contains(&j)
    {
        problems.push(
            join(path, "jitter"),
            format!("must be a fraction between 0 and 1, got {j}"),
        );
    }
    if let (Some(i), Some(m)) = (initial, max)
        && i > m
    {
        problems.push(
            join(path, "max"),
            format!("must be at least initial ({})", humantime::format_duration(i)),
        );
    }
}

impl Validate for RetryConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.max_retries > MAX_RETRIES {
            problems.push(
                join(path, "max_retries"),
                format!("must be at most {MAX_RETRIES}, got {}", self.max_retries),
            );
        }
        let b = &self.backoff;
        check_backoff(
            &join(path, "backoff"),
            Some(b.multiplier),
            Some(b.jitter),
            Some(b.initial),
            Some(b.max),
            problems,
        );
        for (class, o) in &self.per_class {
            let at = join(&join(path, "per_class"), class.as_str());
            if *class == ErrorClass::Permanent {
                problems.push(at, "permanent failures are never retried; remove this entry");
                continue;
            }
            if o.max_retries.is_some_and(|m| m > MAX_RETRIES) {
                problems.push(join(&at, "max_retries"), format!("must be at most {MAX_RETRIES}"));
            }
            check_backoff(
                &at,
                o.multiplier,
                o.jitter,
                Some(o.initial.unwrap_or(b.initial)),
                Some(o.max.unwrap_or(b.max)),
                problems,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    #[test]
    fn out_of_range_backoff_values_are_each_named_with_their_path() {
        let cfg = RetryConfig {
            max_retries: 101,
            backoff: BackoffConfig {
                initial: Duration::from_secs(10),
                multiplier: 0.5,
                max: Duration::from_secs(1),
                jitter: 1.5,
            },
            ..RetryConfig::default()
        };
        assert_eq!(
            problems_found(&cfg, "retry"),
            [
                "retry.max_retries: must be at most 100, got 101",
                "retry.backoff.multiplier: must be between 1.0 and 100.0, got 0.5",
                "retry.backoff.jitter: must be a fraction between 0 and 1, got 1.5",
                "retry.backoff.max: must be at least initial (10s)",
            ]
        );
    }

    #[test]
    fn a_class_override_is_checked_against_the_top_level_values_it_leaves_out() {
        let mut cfg = RetryConfig::default();
        cfg.per_class.insert(
            ErrorClass::Timeout,
            ClassRetryConfig {
                max_retries: Some(1000),
                initial: Some(cfg.backoff.max + Duration::from_secs(1)),
                ..ClassRetryConfig::default()
            },
        );
        cfg.per_class.insert(ErrorClass::Permanent, ClassRetryConfig::default());
        let problems = problems_found(&cfg, "retry");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.contains(&"retry.per_class.timeout.max_retries: must be at most 100".to_owned()));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("retry.per_class.timeout.max: must be at least initial"))
        );
        assert!(problems.contains(
            &"retry.per_class.permanent: permanent failures are never retried; remove this entry".to_owned()
        ));
    }

    #[test]
    fn overrides_replace_only_their_own_fields_and_permanent_is_never_retried() {
        let mut cfg = RetryConfig::default();
        cfg.per_class.insert(
            ErrorClass::RateLimited,
            ClassRetryConfig {
                max_retries: Some(9),
                multiplier: Some(3.0),
                ..ClassRetryConfig::default()
            },
        );
        let limited = cfg.for_class(ErrorClass::RateLimited);
        assert_eq!(limited.max_retries, 9);
        assert_eq!(limited.backoff.multiplier, 3.0);
        assert_eq!(limited.backoff.initial, cfg.backoff.initial);
        assert_eq!(limited.backoff.max, cfg.backoff.max);
        assert_eq!(cfg.for_class(ErrorClass::Retryable).max_retries, cfg.max_retries);
        assert_eq!(cfg.for_class(ErrorClass::Permanent).max_retries, 0);
        assert!(problems_found(&cfg, "retry").is_empty());
    }
}
