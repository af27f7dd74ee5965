//! `processing`: how many messages run at once, in what order, how they are parsed, and
//! what happens to the ones that cannot succeed.

use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::extract::{ExtractionRules, FieldSource};
use crate::parse::PayloadFormat;

/// Which messages may run concurrently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Any message may run beside any other.
    #[default]
    None,
    /// Messages with the same ordering key never run at once and run in arrival order.
    Key,
    /// Messages of one broker partition (Kafka partition, SQS FIFO group) run one at a
    /// time, in order.
    Partition,
}

/// What happens to a message whose agent run failed for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Dead-letter it with the reason and attempt history.
    #[default]
    Dlq,
    /// Reject it: the broker's own dead-lettering applies (RabbitMQ DLX, SQS redrive).
    Nack,
    /// Hand it back to the broker for a later delivery after `requeue_delay`.
    Requeue,
    /// Acknowledge and drop it (the ledger still records the failure).
    Ack,
}

/// What happens to a message that cannot be parsed or extracted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnprocessableAction {
    /// Dead-letter it with the reason.
    #[default]
    Dlq,
    /// Reject it: the broker's own dead-lettering applies (RabbitMQ DLX, SQS redrive).
    Nack,
    /// Acknowledge and drop it (the ledger still records it).
    Ack,
}

/// What happens to a message governance denies (requirement 4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DenyAction {
    /// Acknowledge and drop it (the ledger records the denial).
    #[default]
    Ack,
    /// Dead-letter it with the reason.
    Dlq,
}

/// `processing`: how messages are taken, run and settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Agent runs in progress at once, 1 to 10000.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Which messages may run concurrently.
    #[serde(default)]
    pub ordering: Ordering,
    /// How message bodies are read: `json` (extraction pointers need it), `text` (UTF-8) or
    /// `binary` (passed to the agent as base64).
    #[serde(default, alias = "parser_type")]
    #[schemars(extend("x-aliases" = ["parser_type"]))]
    pub parser: PayloadFormat,
    /// Largest message body, in bytes (at most 256 MiB); larger bodies fail parsing. The admin
    /// server's `POST /send` takes bodies up to twice this plus 64 KiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most deliveries taken from the source at once (one idempotency round trip per
    /// batch), 1 to 10000. While less than a quarter of `max_in_flight` is free, intake
    /// waits up to 1 ms for a fuller batch instead of taking a trickle.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most messages taken from the source and not yet settled, at least `concurrency`.
    /// Unset: 4 × `concurrency`, at least 2 × `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// On stop, how long agent runs already in progress may take to finish before they are
    /// abandoned for redelivery; messages not yet running are handed back at once, and no
    /// run or retry starts.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub drain_timeout: Duration,
    /// Where the event name, tenant, dedup key and ordering key come from, and which part of
    /// the payload the agent sees.
    #[serde(default)]
    pub extraction: ExtractionRules,
    /// What happens to a message whose agent run failed permanently or ran out of retries;
    /// also to a message whose processing panicked, for which `requeue` means `nack` (it
    /// would only panic again).
    #[serde(default, alias = "ack_policy")]
    #[schemars(extend("x-aliases" = ["ack_policy"]))]
    pub on_failure: FailureAction,
    /// How long a message requeued by `on_failure: requeue` waits before it comes back.
    #[serde(default = "default_requeue_delay", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub requeue_delay: Duration,
    /// What happens to a message that cannot be parsed or extracted.
    #[serde(default)]
    pub on_parse_failure: UnprocessableAction,
    /// What happens to a message whose event name no route matches (and there is no
    /// default target).
    #[serde(default)]
    pub on_unrouted: UnprocessableAction,
    /// What happens to a message governance denied.
    #[serde(default)]
    pub on_governance_deny: DenyAction,
    /// How long a message waits before it comes back when another worker holds its
    /// idempotency key right now.
    #[serde(default = "default_in_flight_delay", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub duplicate_in_flight_delay: Duration,
}

fn default_concurrency() -> usize {
    8
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_batch_size() -> usize {
    64
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_requeue_delay() -> Duration {
    Duration::from_secs(10)
}
fn default_in_flight_delay() -> Duration {
    Duration::from_secs(5)
}

impl ProcessingConfig {
    /// The fields (as `processing.*` paths) whose action is to dead-letter; the source must
    /// then have a dead-letter destination.
    pub fn dead_letter_requests(&self) -> Vec<&'static str> {
        let mut asks = Vec::new();
        if self.on_failure == FailureAction::Dlq {
            asks.push("processing.on_failure");
        }
        if self.on_parse_failure == UnprocessableAction::Dlq {
            asks.push("processing.on_parse_failure");
        }
        if self.on_unrouted == UnprocessableAction::Dlq {
            asks.push("processing.on_unrouted");
        }
        if self.on_governance_deny == DenyAction::Dlq {
            asks.push("processing.on_governance_deny");
        }
        asks
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            ordering: Ordering::default(),
            parser: PayloadFormat::default(),
            max_message_bytes: default_max_message_bytes(),
            batch_size: default_batch_size(),
            max_in_flight: None,
            drain_timeout: default_drain_timeout(),
            extraction: ExtractionRules::default(),
            on_failure: FailureAction::default(),
            requeue_delay: default_requeue_delay(),
            on_parse_failure: UnprocessableAction::default(),
            on_unrouted: UnprocessableAction::default(),
            on_governance_deny: DenyAction::default(),
            duplicate_in_flight_delay: default_in_flight_delay(),
        }
    }
}

impl ProcessingConfig {
    /// The effective in-flight bound.
    pub fn effective_max_in_flight(&self) -> usize {
        self.max_in_flight
            .unwrap_or_else(|| (self.concurrency * 4).max(self.batch_size * 2))
    }
}

const MAX_CONCURRENCY: usize = 10_000;

impl Validate for ProcessingConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            problems.push(
                join(path, "concurrency"),
                format!("must be between 1 and {MAX_CONCURRENCY}, got {}", self.concurrency),
            );
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 256 << 20 {
            problems.push(
                join(path, "max_message_bytes"),
                format!(
                    "must be between 1 and {} (256 MiB), got {}",
                    256 << 20,
                    self.max_message_bytes
                ),
            );
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            problems.push(
                join(path, "batch_size"),
                format!("must be between 1 and 10000, got {}", self.batch_size),
            );
        }
        if let Some(m) = self.max_in_flight
            && m < self.concurrency
        {
            problems.push(
                join(path, "max_in_flight"),
                format!("must be at least concurrency ({}), got {m}", self.concurrency),
            );
        }
        let ex = join(path, "extraction");
        for (field, rules) in [
            ("event_name", &self.extraction.event_name),
            ("tenant_id", &self.extraction.tenant_id),
            ("dedup_key", &self.extraction.dedup_key),
            ("ordering_key", &self.extraction.ordering_key),
        ] {
            for (i, rule) in rules.iter().enumerate() {
                let at = format!("{}[{i}]", join(&ex, field));
                match rule {
                    FieldSource::Pointer(p) if !p.is_empty() && !p.starts_with('/') => {
                        problems.push(
                            join(&at, "pointer"),
                            format!("a JSON pointer starts with '/', got {p:?}"),
                        );
                    }
                    FieldSource::Pointer(_) if self.parser != PayloadFormat::Json => {
                        problems.push(
                            join(&at, "pointer"),
                            format!("pointers need `parser: json`, the parser is {}", self.parser.as_str()),
                        );
                    }
                    FieldSource::Header(h) if h.trim().is_empty() => {
                        problems.push(join(&at, "header"), "header name is empty");
                    }
                    _ => {}
                }
            }
        }
        if let Some(p) = &self.extraction.payload_pointer {
            if !p.is_empty() && !p.starts_with('/') {
                problems.push(
                    join(&ex, "payload_pointer"),
                    format!("a JSON pointer starts with '/', got {p:?}"),
                );
            }
            if self.parser != PayloadFormat::Json {
                problems.push(
                    join(&ex, "payload_pointer"),
                    format!("needs `parser: json`, the parser is {}", self.parser.as_str()),
                );
            }
        }
    }
}
