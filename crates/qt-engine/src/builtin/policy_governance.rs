//! Governance from configuration: allow/deny rules by tenant and event glob, per-tenant
//! token-bucket rate limits that defer, and per-tenant in-flight quotas.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use globset::{Glob, GlobMatcher};
use parking_lot::Mutex;
use qt_core::config::{GovernanceConfig, RuleAction};
use qt_core::{Decision, Governance, GovernanceContext, GovernanceError};

#[derive(Debug)]
struct Rule {
    name: String,
    tenant: GlobMatcher,
    event: GlobMatcher,
    action: RuleAction,
    reason: Option<String>,
}

#[derive(Debug)]
struct RateLimit {
    name: String,
    tenant: GlobMatcher,
    per_second: f64,
    burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// The key messages without a tenant share for limits and quotas.
const NO_TENANT: &str = "";

#[derive(Debug)]
pub struct PolicyGovernance {
    default_action: RuleAction,
    rules: Vec<Rule>,
    limits: Vec<RateLimit>,
    max_in_flight: Option<u32>,
    defer_delay: Duration,
    buckets: Mutex<HashMap<(usize, String), Bucket>>,
    in_flight: Mutex<HashMap<String, u32>>,
}

fn matcher(glob: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(Glob::new(glob)?.compile_matcher())
}

impl PolicyGovernance {
    pub fn new(config: &GovernanceConfig) -> Result<Self, globset::Error> {
        let rules = config
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    name: r.name.clone(),
                    tenant: matcher(&r.tenant)?,
                    event: matcher(&r.event)?,
                    action: r.action,
                    reason: r.reason.clone(),
                })
            })
            .collect::<Result<_, globset::Error>>()?;
        let limits = config
            .rate_limits
            .iter()
            .map(|l| {
                Ok(RateLimit {
                    name: l.name.clone(),
                    tenant: matcher(&l.tenant)?,
                    per_second: l.per_second,
                    burst: f64::from(l.burst.unwrap_or_else(|| l.per_second.ceil().max(1.0) as u32)),
                })
            })
            .collect::<Result<_, globset::Error>>()?;
        Ok(Self {
            default_action: config.default_action,
            rules,
            limits,
            max_in_flight: config.max_in_flight_per_tenant,
            defer_delay: config.effective_defer_delay(),
            buckets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Allows everything: the governance of a configuration without rules.
    pub fn allow_all() -> Self {
        Self::new(&GovernanceConfig::default()).expect("the default configuration has no globs")
    }

    fn decide_rules(&self, tenant: &str, event: &str) -> Option<Decision> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.tenant.is_match(tenant) && r.event.is_match(event));
        let action = rule.map_or(self.default_action, |r| r.action);
        match action {
            RuleAction::Allow => None,
            RuleAction::Deny => Some(Decision::Deny {
                reason: rule.and_then(|r| r.reason.clone()).unwrap_or_else(|| match rule {
                    Some(r) => format!("denied by policy {}", r.name),
                    None => "denied by default_action".to_owned(),
                }),
                policies: rule
                    .map(|r| vec![r.name.clone()])
                    .unwrap_or_else(|| vec!["default_action".to_owned()]),
            }),
        }
    }

    /// The decision for `ctx`: rules first, then the tenant's quota and rate limits.
    fn decide(&self, ctx: &GovernanceContext<'_>) -> Result<Decision, GovernanceError> {
        let tenant = ctx.tenant_id.unwrap_or(NO_TENANT);
        if let Some(denied) = self.decide_rules(tenant, ctx.event_name) {
            return Ok(denied);
        }
        if let Some(quota) = self.max_in_flight {
            let mut in_flight = self.in_flight.lock();
            let n = in_flight.entry(tenant.to_owned()).or_insert(0);
            if *n >= quota {
                return Ok(Decision::Defer {
                    retry_after: self.defer_delay,
                    reason: format!("tenant {tenant:?} has {quota} runs in progress (max_in_flight_per_tenant)"),
                    policies: vec!["max_in_flight_per_tenant".to_owned()],
                });
            }
            if let Some(deferred) = self.take_tokens(tenant) {
                return Ok(deferred);
            }
            *n += 1;
            return Ok(Decision::Allow);
        }
        Ok(self.take_tokens(tenant).unwrap_or(Decision::Allow))
    }

    /// Takes one token from every bucket that applies, or says how long until one is free.
    fn take_tokens(&self, tenant: &str) -> Option<Decision> {
        if self.limits.is_empty() {
            return None;
        }
        // Read only when a limit applies: without rate limits, a check reads no clock.
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let applicable: Vec<usize> = (0..self.limits.len())
            .filter(|i| self.limits[*i].tenant.is_match(tenant))
            .collect();
        // Check every bucket before taking from any, so a deferral consumes nothing.
        for &i in &applicable {
            let limit = &self.limits[i];
            let bucket = buckets.entry((i, tenant.to_owned())).or_insert(Bucket {
                tokens: limit.burst,
                refilled_at: now,
            });
            let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
            bucket.refilled_at = now;
            if bucket.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second);
                return Some(Decision::Defer {
                    retry_after: wait.max(Duration::from_millis(1)),
                    reason: format!(
                        "tenant {tenant:?} is over rate limit {} ({}/s)",
                        limit.name, limit.per_second
                    ),
                    policies: vec![limit.name.clone()],
                });
            }
        }
        for &i in &applicable {
            if let Some(b) = buckets.get_mut(&(i, tenant.to_owned())) {
                b.tokens -= 1.0;
            }
        }
        None
    }
}

#[async_trait]
impl Governance for PolicyGovernance {
    async fn check(&self, ctx: &GovernanceContext<'_>) -> Result<Decision, GovernanceError> {
        self.decide(ctx)
    }

    /// Policies are decided in process, always on the spot.
    fn check_now(&self, ctx: &GovernanceContext<'_>) -> Option<Result<Decision, GovernanceError>> {
        Some(self.decide(ctx))
    }

    fn finished(&self, ctx: &GovernanceContext<'_>) {
        if self.max_in_flight.is_some() {
            let tenant = ctx.tenant_id.unwrap_or(NO_TENANT);
            let mut in_flight = self.in_flight.lock();
            if let Some(n) = in_flight.get_mut(tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    in_flight.remove(tenant);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::config::{GovernanceRule, RateLimitRule};

    fn ctx<'a>(tenant: Option<&'a str>, event: &'a str) -> GovernanceContext<'a> {
        GovernanceContext {
            tenant_id: tenant,
            event_name: event,
            message_id: "m",
            queue: "q",
            adapter: "mock",
            target: "t",
        }
    }

    #[tokio::test]
    async fn rules_match_tenant_and_event_globs_first_wins() {
        let g = PolicyGovernance::new(&GovernanceConfig {
            rules: vec![
                GovernanceRule {
                    name: "block-evil".into(),
                    tenant: "evil-*".into(),
                    event: "*".into(),
                    action: RuleAction::Deny,
                    reason: Some("tenant suspended".into()),
                },
                GovernanceRule {
                    name: "no-deletes".into(),
                    tenant: "*".into(),
                    event: "*.delete".into(),
                    action: RuleAction::Deny,
                    reason: None,
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            g.check(&ctx(Some("evil-corp"), "order.create")).await.unwrap(),
            Decision::Deny {
                reason: "tenant suspended".into(),
                policies: vec!["block-evil".into()]
            }
        );
        assert!(matches!(
            g.check(&ctx(Some("acme"), "user.delete")).await.unwrap(),
            Decision::Deny { .. }
        ));
        assert_eq!(
            g.check(&ctx(Some("acme"), "user.create")).await.unwrap(),
            Decision::Allow
        );
        // The engine asks check_now first; it decides every case on the spot, alike.
        for (tenant, event) in [
            ("evil-corp", "order.create"),
            ("acme", "user.delete"),
            ("acme", "user.create"),
        ] {
            let now = g.check_now(&ctx(Some(tenant), event)).expect("decided on the spot");
            assert_eq!(now.unwrap(), g.check(&ctx(Some(tenant), event)).await.unwrap());
        }
    }

    #[tokio::test]
    async fn rate_limit_defers_per_tenant_without_starving_others() {
        let g = PolicyGovernance::new(&GovernanceConfig {
            rate_limits: vec![RateLimitRule {
                name: "slow".into(),
                tenant: "*".into(),
                per_second: 1.0,
                burst: Some(2),
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(g.check(&ctx(Some("a"), "e")).await.unwrap(), Decision::Allow);
        assert_eq!(g.check(&ctx(Some("a"), "e")).await.unwrap(), Decision::Allow);
        let Decision::Defer {
            retry_after, policies, ..
        } = g.check(&ctx(Some("a"), "e")).await.unwrap()
        else {
            panic!("third run within a second must be deferred")
        };
        assert!(retry_after <= Duration::from_secs(1));
        assert_eq!(policies, vec!["slow".to_owned()]);
        assert_eq!(g.check(&ctx(Some("b"), "e")).await.unwrap(), Decision::Allow);
    }

    #[tokio::test]
    async fn in_flight_quota_defers_until_a_run_finishes() {
        let g = PolicyGovernance::new(&GovernanceConfig {
            max_in_flight_per_tenant: Some(1),
            ..Default::default()
        })
        .unwrap();
        let c = ctx(Some("a"), "e");
        assert_eq!(g.check(&c).await.unwrap(), Decision::Allow);
        assert!(matches!(g.check(&c).await.unwrap(), Decision::Defer { .. }));
        assert_eq!(g.check(&ctx(Some("b"), "e")).await.unwrap(), Decision::Allow);
        g.finished(&c);
        assert_eq!(g.check(&c).await.unwrap(), Decision::Allow);
    }
}
