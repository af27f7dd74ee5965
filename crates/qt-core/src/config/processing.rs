//! `processing`: how many messages run at once, in what order, how they are parsed, and
//! what happens to the ones that cannot succeed.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::problems::{ConfigErrors, ConfigProblem, Validate, join};
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
    /// Hand it back to the broker for a later delivery after `requeue_delay`, at most
    /// `max_requeues` times; then dead-letter it.
    Requeue,
    /// Acknowledge and drop it (the ledger still records the failure).
    Ack,
}

/// How many times `on_failure: requeue` hands one failing message back to the broker: a
/// count, or `unlimited`. Written as a number or the word `unlimited` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequeueLimit {
    /// A message that fails again after this many requeues is dead-lettered instead.
    At(u32),
    /// A failing message is requeued however often it fails.
    Unlimited,
}

const UNLIMITED: &str = "unlimited";

impl RequeueLimit {
    /// Whether a message that failed on delivery `attempt` (1 for its first delivery) may
    /// be requeued once more. Every earlier delivery counts as one requeue.
    pub fn allows_requeue(self, attempt: u32) -> bool {
        match self {
            RequeueLimit::At(max) => attempt.saturating_sub(1) < max,
            RequeueLimit::Unlimited => true,
        }
    }
}

impl Default for RequeueLimit {
    fn default() -> Self {
        RequeueLimit::At(10)
    }
}

impl fmt::Display for RequeueLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequeueLimit::At(max) => write!(f, "{max}"),
            RequeueLimit::Unlimited => f.write_str(UNLIMITED),
        }
    }
}

impl Serialize for RequeueLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RequeueLimit::At(max) => serializer.serialize_u32(*max),
            RequeueLimit::Unlimited => serializer.serialize_str(UNLIMITED),
        }
    }
}

impl<'de> Deserialize<'de> for RequeueLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RequeueLimit;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number of requeues (0 or more) or `{UNLIMITED}`")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequeueLimit, E> {
                u32::try_from(v)
                    .map(RequeueLimit::At)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RequeueLimit, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequeueLimit, E> {
                if v == UNLIMITED {
                    Ok(RequeueLimit::Unlimited)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for RequeueLimit {
    fn schema_name() -> Cow<'static, str> {
        "RequeueLimit".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "integer or `unlimited`",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                {"const": UNLIMITED},
            ],
        })
    }
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
    /// With `on_failure: requeue`, how many times one message is requeued before a further
    /// failure dead-letters it (reason `requeues_exhausted`), so that a message that always
    /// fails cannot circle forever; `0` dead-letters at the first failure. Every earlier
    /// delivery of the message counts (its `x-qt-attempt` header, or the broker's delivery
    /// count where larger), deferrals and redeliveries included. A source without a
    /// dead-letter destination is refused, as for `dlq`. `unlimited` requeues for ever, and
    /// validation warns about it.
    #[serde(default)]
    pub max_requeues: RequeueLimit,
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

/// The path of the requeue cap, as `dead_letter_requests` names it.
pub(crate) const MAX_REQUEUES: &str = "processing.max_requeues";

impl ProcessingConfig {
    /// The fields (as `processing.*` paths) whose action is to dead-letter, the requeue cap
    /// among them; the source must then have a dead-letter destination.
    pub fn dead_letter_requests(&self) -> Vec<&'static str> {
        let mut asks = Vec::new();
        if self.on_failure == FailureAction::Dlq {
            asks.push("processing.on_failure");
        }
        if self.on_failure == FailureAction::Requeue && self.max_requeues != RequeueLimit::Unlimited {
            asks.push(MAX_REQUEUES);
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

    /// What to set instead of a dead-letter destination, for the fields
    /// [`dead_letter_requests`](Self::dead_letter_requests) named.
    pub fn without_dead_letters(asks: &[&str]) -> String {
        let (cap, actions): (Vec<&str>, Vec<&str>) = asks.iter().partition(|a| **a == MAX_REQUEUES);
        let mut instead = Vec::new();
        if !actions.is_empty() {
            instead.push(format!(
                "set {} to another action (e.g. nack or ack)",
                actions.join(", ")
            ));
        }
        if !cap.is_empty() {
            instead.push(format!("set {MAX_REQUEUES}: {UNLIMITED}"));
        }
        instead.join(", or ")
    }

    /// Settings that are valid but most likely not wanted, each at its path under `path`.
    pub fn warnings(&self, path: &str) -> Vec<ConfigProblem> {
        let mut warnings = Vec::new();
        if self.on_failure == FailureAction::Requeue && self.max_requeues == RequeueLimit::Unlimited {
            warnings.push(ConfigProblem {
                path: join(path, "max_requeues"),
                message:
                    "on_failure: requeue without a limit hands a message that always fails back to the broker for \
                 ever, taking a worker each time; set a number to dead-letter it after that many requeues"
                        .to_owned(),
            });
        }
        warnings
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
            max_requeues: RequeueLimit::default(),
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
                    FieldSource::Pointer(p) if !p.as_str().is_empty() && !p.as_str().starts_with('/') => {
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
            if !p.as_str().is_empty() && !p.as_str().starts_with('/') {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, load_str};

    fn load(processing: &str) -> Result<Config, Vec<String>> {
        let yaml =
            format!("source: {{type: mock}}\nagent: {{targets: {{a: {{type: log}}}}}}\nprocessing: {processing}\n");
        load_str(&yaml, |_| None).map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn max_requeues_is_ten_unless_set_and_reads_a_number_or_unlimited() {
        let default = load("{}").unwrap();
        assert_eq!(default.processing.max_requeues, RequeueLimit::At(10));
        assert_eq!(
            load("{max_requeues: 3}").unwrap().processing.max_requeues,
            RequeueLimit::At(3)
        );
        assert_eq!(
            load("{max_requeues: 0}").unwrap().processing.max_requeues,
            RequeueLimit::At(0)
        );
        assert_eq!(
            load("{max_requeues: unlimited}").unwrap().processing.max_requeues,
            RequeueLimit::Unlimited
        );
    }

    #[test]
    fn a_max_requeues_that_is_neither_a_count_nor_unlimited_is_refused_with_what_it_takes() {
        for bad in ["-1", "forever", "1.5", "4294967296"] {
            let got = load(&format!("{{max_requeues: {bad}}}")).unwrap_err();
            assert!(
                got.iter().any(|p| p.starts_with("processing.max_requeues:")
                    && p.contains("a number of requeues (0 or more) or `unlimited`")),
                "{bad}: {got:#?}"
            );
        }
    }

    #[test]
    fn max_requeues_is_written_back_as_it_is_read() {
        for (limit, yaml) in [(RequeueLimit::At(7), "7"), (RequeueLimit::Unlimited, "unlimited")] {
            assert_eq!(serde_yaml_ng::to_string(&limit).unwrap().trim(), yaml);
            assert_eq!(serde_yaml_ng::from_str::<RequeueLimit>(yaml).unwrap(), limit);
            assert_eq!(limit.to_string(), yaml);
        }
    }

    #[test]
    fn every_earlier_delivery_counts_as_one_requeue_against_the_limit() {
        let three = RequeueLimit::At(3);
        // Deliveries 1 to 3 have been requeued 0 to 2 times: one more is allowed.
        assert!((1..=3).all(|attempt| three.allows_requeue(attempt)));
        assert!(!three.allows_requeue(4), "requeued three times already");
        assert!(!three.allows_requeue(40));
        assert!(!RequeueLimit::At(0).allows_requeue(1), "0: never requeued");
        assert!(RequeueLimit::Unlimited.allows_requeue(u32::MAX));
    }

    #[test]
    fn requeueing_without_a_limit_is_valid_but_warned_about() {
        let unlimited = load("{on_failure: requeue, max_requeues: unlimited}").unwrap();
        let warnings: Vec<String> = unlimited.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("processing.max_requeues: on_failure: requeue without a limit"),
            "{warnings:#?}"
        );
        for quiet in [
            "{on_failure: requeue}",
            "{on_failure: requeue, max_requeues: 100}",
            "{on_failure: dlq, max_requeues: unlimited}",
        ] {
            assert_eq!(load(quiet).unwrap().warnings(), Vec::new(), "{quiet}");
        }
    }

    #[test]
    fn a_capped_requeue_asks_for_dead_lettering_and_an_unlimited_one_does_not() {
        let mut p = ProcessingConfig {
            on_failure: FailureAction::Requeue,
            on_parse_failure: UnprocessableAction::Ack,
            on_unrouted: UnprocessableAction::Ack,
            ..ProcessingConfig::default()
        };
        assert_eq!(p.dead_letter_requests(), ["processing.max_requeues"]);
        assert_eq!(
            ProcessingConfig::without_dead_letters(&p.dead_letter_requests()),
            "set processing.max_requeues: unlimited"
        );
        p.max_requeues = RequeueLimit::Unlimited;
        assert!(p.dead_letter_requests().is_empty());
        p.on_parse_failure = UnprocessableAction::Dlq;
        p.max_requeues = RequeueLimit::At(2);
        assert_eq!(
            ProcessingConfig::without_dead_letters(&p.dead_letter_requests()),
            "set processing.on_parse_failure to another action (e.g. nack or ack), or set processing.max_requeues: unlimited"
        );
    }
}
