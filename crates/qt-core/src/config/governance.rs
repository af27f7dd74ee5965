//! `governance`: the built-in policy governance (requirements 4.5, 7.1).

use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};

/// What a governance rule decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// The message runs.
    #[default]
    Allow,
    /// The message does not run; `processing.on_governance_deny` settles it.
    Deny,
}

/// What to do when a (library-supplied) governance layer fails to answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnGovernanceError {
    /// Treat it as a deferral: requeue after `defer_delay`.
    #[default]
    FailClosed,
    /// Run the message anyway.
    FailOpen,
}

/// Allow or deny events by tenant and event name. The first matching rule wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GovernanceRule {
    /// Policy name recorded in the ledger.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Glob on the tenant id; `*` matches every tenant (and messages without one).
    #[serde(default = "star")]
    pub tenant: String,
    /// Glob on the event name.
    #[serde(default = "star")]
    pub event: String,
    /// What a matching message gets.
    #[serde(default)]
    pub action: RuleAction,
    /// Reason recorded in the ledger for a denial. Unset: `denied by policy <name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A token bucket per tenant matching `tenant`: each tenant gets its own bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Policy name recorded in the ledger.
    pub name: String,
    /// Glob on the tenant id; each matching tenant gets its own bucket.
    #[serde(default = "star")]
    pub tenant: String,
    /// Sustained runs per second per tenant, a positive number (fractions allowed: `0.5` is
    /// one run every 2 s). Runs over the limit are deferred.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub per_second: f64,
    /// Runs a tenant may make at once after being idle (the bucket's size), at least 1.
    /// Unset: `per_second` rounded up, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn star() -> String {
    "*".to_owned()
}

/// `governance`: rules, rate limits and quotas, applied before a message runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// What a message gets when no rule matches.
    #[serde(default)]
    pub default_action: RuleAction,
    /// Allow or deny rules by tenant and event name; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GovernanceRule>,
    /// Token buckets, one per tenant matching each rule; a message over the limit is
    /// deferred (requeued) rather than run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitRule>,
    /// Most agent runs one tenant may have in progress; further messages of that tenant are
    /// deferred so one tenant's flood cannot take every worker. At least 1. Unset: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_tenant: Option<u32>,
    /// How long a message deferred by the in-flight quota waits before it comes back.
    /// Unset: 1s.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub defer_delay: Option<Duration>,
    /// What to do when a governance layer supplied by a library (not these rules) fails to
    /// answer.
    #[serde(default)]
    pub on_error: OnGovernanceError,
}

impl GovernanceConfig {
    /// `defer_delay`, or its default when unset.
    pub fn effective_defer_delay(&self) -> Duration {
        self.defer_delay.unwrap_or(Duration::from_secs(1))
    }
}

fn check_glob(path: String, glob: &str, problems: &mut ConfigErrors) {
    if let Err(e) = globset::Glob::new(glob) {
        problems.push(path, format!("invalid glob {glob:?}: {}", e.kind()));
    }
}

impl Validate for GovernanceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        for (i, r) in self.rules.iter().enumerate() {
            let at = join(path, &format!("rules[{i}]"));
            if r.name.trim().is_empty() {
                problems.push(join(&at, "name"), "required");
            }
            check_glob(join(&at, "tenant"), &r.tenant, problems);
            check_glob(join(&at, "event"), &r.event, problems);
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            let at = join(path, &format!("rate_limits[{i}]"));
            if r.name.trim().is_empty() {
                problems.push(join(&at, "name"), "required");
            }
            check_glob(join(&at, "tenant"), &r.tenant, problems);
            if !(r.per_second.is_finite() && r.per_second > 0.0) {
                problems.push(
                    join(&at, "per_second"),
                    format!("must be a positive number, got {}", r.per_second),
                );
            }
            if r.burst == Some(0) {
                problems.push(join(&at, "burst"), "must be at least 1");
            }
        }
        if self.max_in_flight_per_tenant == Some(0) {
            problems.push(join(path, "max_in_flight_per_tenant"), "must be at least 1");
        }
    }
}
