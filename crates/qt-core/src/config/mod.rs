//! The one YAML file that drives a trigger.
//!
//! Loading substitutes `${VAR}` / `${VAR:-default}`, parses with unknown fields rejected,
//! and reports **every** problem with its path: a structural problem (unknown field, wrong
//! type, bad value) is recorded, the offending node is set aside so the rest can still be
//! read, and semantic validation then runs on what remains.

#![warn(missing_docs)]

mod agent;
mod env;
mod governance;
mod idempotency;
mod ledger;
mod load;
mod observability;
mod problems;
mod processing;
mod redis;
mod retry;
mod schema;
mod source;

pub use agent::{
    AgentConfig, BasicAuth, CommandTarget, HTTP_METHODS, HttpAuth, HttpTarget, HttpTls, HttpVersion, Route,
    TargetConfig,
};
pub use env::substitute;
pub use governance::{GovernanceConfig, GovernanceRule, OnGovernanceError, RateLimitRule, RuleAction};
pub use idempotency::{IdempotencyConfig, MemoryStoreConfig, OnStoreError, StoreConfig};
pub use ledger::{
    JsonlLedgerConfig, LedgerConfig, POSTGRES_MAX_POOL_SIZE, POSTGRES_MAX_SCHEMA_LEN, POSTGRES_MAX_TABLE_LEN,
    PostgresLedgerConfig, PostgresTls,
};
pub use load::{load_file, load_str};
pub use observability::{
    AdminConfig, LogConfig, LogFormat, ObservabilityConfig, OtlpProtocol, SecurityConfig, TracingConfig,
};
pub use problems::{ConfigErrors, ConfigProblem, Validate, join};
pub use processing::{DenyAction, FailureAction, Ordering, ProcessingConfig, RequeueLimit, UnprocessableAction};
pub use redis::RedisStoreConfig;
pub use retry::{BackoffConfig, ClassRetryConfig, EffectiveRetry, RetryConfig};
pub use schema::json_schema;
pub use source::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole trigger configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this trigger in logs, metrics, `/status` and broker client ids; give each trigger
    /// of a deployment its own.
    #[serde(default = "default_name")]
    pub name: String,
    /// The broker messages come from, picked by `type`.
    pub source: SourceConfig,
    /// How many messages run at once, in what order, how they are parsed, and what happens
    /// to those that cannot succeed.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// How failed agent runs are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// De-duplication: at most one run per key within a window.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// Tenant and event rules, rate limits and quotas applied before a run.
    #[serde(default)]
    pub governance: GovernanceConfig,
    /// The targets events are delivered to and the routes that pick one.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub agent: AgentConfig,
    /// Where the audit record of each message's outcome is written, picked by `type`.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The admin server, logs and traces.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// Settings that hold across every connection qt makes.
    #[serde(default)]
    pub security: SecurityConfig,
}

fn default_name() -> String {
    "qt".to_owned()
}

impl Config {
    /// A configuration with defaults everywhere but the source.
    pub fn with_source(source: SourceConfig) -> Self {
        Self {
            name: default_name(),
            source,
            processing: ProcessingConfig::default(),
            retry: RetryConfig::default(),
            idempotency: IdempotencyConfig::default(),
            governance: GovernanceConfig::default(),
            agent: AgentConfig::default(),
            ledger: LedgerConfig::default(),
            observability: ObservabilityConfig::default(),
            security: SecurityConfig::default(),
        }
    }

    /// Settings that are valid but most likely not wanted: `qt validate` prints them and
    /// `qt run` logs them at start.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        self.processing.warnings("processing")
    }

    /// The effective configuration as YAML, secrets masked.
    pub fn to_masked_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

impl Validate for Config {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.name.trim().is_empty() {
            problems.push(join(path, "name"), "must not be empty");
        }
        self.source.validate(&join(path, "source"), problems);
        self.processing.validate(&join(path, "processing"), problems);
        self.retry.validate(&join(path, "retry"), problems);
        self.idempotency.validate(&join(path, "idempotency"), problems);
        self.governance.validate(&join(path, "governance"), problems);
        self.agent.validate(&join(path, "agent"), problems);
        self.ledger.validate(&join(path, "ledger"), problems);
        self.observability.validate(&join(path, "observability"), problems);
        let asks = self.processing.dead_letter_requests();
        if let Some(field) = self.source.missing_dead_letter_field()
            && !asks.is_empty()
        {
            let verb = if asks.len() == 1 { "asks" } else { "ask" };
            let mut why = Vec::new();
            if asks.iter().any(|a| *a != processing::MAX_REQUEUES) {
                why.push("dlq, the default of on_failure, on_parse_failure and on_unrouted");
            }
            if asks.contains(&processing::MAX_REQUEUES) {
                why.push("on_failure: requeue dead-letters a message still failing after max_requeues requeues");
            }
            problems.push(
                join(path, &format!("source.{field}")),
                format!(
                    "required: {} {verb} for dead-lettering ({}), but this {} source has no dead-letter \
                     destination; set source.{field}, or {}",
                    asks.join(", "),
                    why.join("; "),
                    self.source.kind(),
                    ProcessingConfig::without_dead_letters(&asks)
                ),
            );
        }
        if self.security.require_tls {
            for (at, endpoint) in self.source.plaintext_endpoints(&join(path, "source")) {
                problems.push(at, format!("security.require_tls is set but {endpoint} is not TLS"));
            }
            if let StoreConfig::Redis(r) = &self.idempotency.store
                && !r.is_tls()
            {
                problems.push(
                    join(path, "idempotency.store.url"),
                    format!("security.require_tls is set but {} is not TLS (use rediss://)", r.url),
                );
            }
            if let LedgerConfig::Postgres(p) = &self.ledger
                && !p.is_tls()
            {
                problems.push(
                    join(path, "ledger.url"),
                    format!(
                        "security.require_tls is set but {} is not TLS (set ledger.tls: verify-full)",
                        p.url
                    ),
                );
            }
            if self.observability.tracing.is_plaintext() {
                problems.push(
                    join(path, "observability.tracing.endpoint"),
                    format!(
                        "security.require_tls is set but {} is not TLS (use https://)",
                        self.observability.tracing.effective_endpoint()
                    ),
                );
            }
            for (name, target) in &self.agent.targets {
                if let TargetConfig::Http(h) = target
                    && h.is_plaintext()
                {
                    problems.push(
                        join(path, &format!("agent.targets.{name}.url")),
                        format!("security.require_tls is set but {} is not TLS (use https://)", h.url),
                    );
                }
            }
        }
    }
}
