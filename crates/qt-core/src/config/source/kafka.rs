//! `source` with `type: kafka`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::problems::{ConfigErrors, Validate, join};
use crate::secret::{REDACTED, Secret};

/// How the Kafka connection is secured (librdkafka's `security.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "snake_case",
    expecting = "one of plaintext, ssl, sasl_plaintext or sasl_ssl"
)]
pub enum KafkaSecurityProtocol {
    /// Neither encrypted nor authenticated; refused under `security.require_tls`.
    #[default]
    Plaintext,
    /// TLS, configured by `ssl`.
    Ssl,
    /// SASL authentication (`sasl`) without encryption; refused under
    /// `security.require_tls`.
    SaslPlaintext,
    /// SASL authentication (`sasl`) over TLS (`ssl`).
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            KafkaSecurityProtocol::Plaintext => "plaintext",
            KafkaSecurityProtocol::Ssl => "ssl",
            KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
        )
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`). Lower case is accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "one of PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")]
pub enum SaslMechanism {
    /// User name and password sent as they are: use it over `sasl_ssl` only.
    #[serde(rename = "PLAIN", alias = "plain")]
    #[schemars(extend("x-aliases" = ["plain"]))]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    #[schemars(extend("x-aliases" = ["scram-sha-256"]))]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    #[schemars(extend("x-aliases" = ["scram-sha-512"]))]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `source.sasl`: SASL credentials for `sasl_plaintext` and `sasl_ssl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), `username` and `password`"
)]
pub struct KafkaSaslConfig {
    /// How the client proves who it is.
    pub mechanism: SaslMechanism,
    /// SASL user name.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub username: String,
    /// SASL password; a secret. Write `${KAFKA_PASSWORD}` to keep it out of the file.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub password: Secret,
}

/// `source.ssl`: TLS files for `ssl` and `sasl_ssl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `ca_location`, `certificate_location`, `key_location` and `key_password`"
)]
pub struct KafkaSslConfig {
    /// PEM CA bundle brokers are verified with. Unset: the system's CA store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (mutual TLS). Needs
    /// `key_location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_location: Option<PathBuf>,
    /// PEM private key of `certificate_location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_location: Option<PathBuf>,
    /// Passphrase of an encrypted `key_location`; a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<Secret>,
}

/// `source` with `type: kafka`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the kafka source fields (`brokers`, `topics`, `consumer_group`, ...)"
)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, each `host:port`; the rest of the cluster is discovered from them.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub brokers: Vec<String>,
    /// Topics to consume: a list, or one name.
    #[serde(default, alias = "queue_name", deserialize_with = "one_or_many")]
    #[schemars(extend("x-required" = true))]
    #[schemars(extend("x-aliases" = ["queue_name"]))]
    #[schemars(schema_with = "topics_schema")]
    pub topics: Vec<String>,
    /// Consumer group id. Every qt process with the same group shares the partitions of the
    /// topics; offsets are committed under it.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub consumer_group: String,
    /// Topic dead letters are produced to (original key, value and headers plus the
    /// `x-qt-dlq-*` headers); the original offset is committed only once the broker has
    /// confirmed the write. Unset: dead-lettering fails and leaves the message uncommitted,
    /// so set it when a `processing` action is `dlq`. `qt dlq` reads it in the consumer
    /// group `<consumer_group>-dlq`: a letter is in the DLQ until that group has committed
    /// past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_topic: Option<String>,
    /// Topic requeued messages are produced to, with an incremented `x-qt-attempt` header
    /// (and `x-qt-not-before` for a delay); qt consumes it in the same group as `topics`.
    /// Unset: back to the message's own topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_topic: Option<String>,
    /// How connections to the brokers are secured.
    #[serde(default)]
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL credentials; required with `sasl_plaintext` and `sasl_ssl`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslConfig>,
    /// TLS files for `ssl` and `sasl_ssl`. Unset: the system's CA store, no client
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<KafkaSslConfig>,
    /// How often the offsets of finished messages are committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub commit_interval: Duration,
    /// On partition revocation, how long in-flight messages of the revoked partitions may
    /// take before the partitions are let go; keep it below `max.poll.interval.ms`. On
    /// close, how long requeues and dead letters under way may take before the final commit.
    #[serde(default = "default_revoke_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub revoke_drain_timeout: Duration,
    /// When a message's handle is dropped unsettled or its settle fails, its partition is
    /// rewound to the first unfinished offset after this pause, so the message (and the
    /// later ones of that partition) are delivered again without a restart.
    #[serde(default = "default_redelivery_delay", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub redelivery_delay: Duration,
    /// How long a produce (dead letter, requeue, `qt send`) may wait for the broker's
    /// acknowledgement before it fails (librdkafka `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub delivery_timeout: Duration,
    /// How long qt waits at start for the cluster to describe the topics before it fails.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub connect_timeout: Duration,
    /// librdkafka consumer settings passed through as is (e.g. `session.timeout.ms`).
    /// Values of keys that look secret are masked when printed. Unless set here, qt uses
    /// `auto.offset.reset: earliest`, `statistics.interval.ms: 1000` (health and backlog
    /// come from the statistics) and `fetch.queue.backoff.ms: 100` (librdkafka's 1000
    /// idles a fast consumer for up to a second each time its prefetch queue fills).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_masked_options"
    )]
    pub options: BTreeMap<String, String>,
    /// librdkafka producer settings (dead letters, requeues, `qt send`) passed through as
    /// is (e.g. `linger.ms`, `compression.type`). Masked like `options`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_masked_options"
    )]
    pub producer_options: BTreeMap<String, String>,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_revoke_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_redelivery_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topics: Vec::new(),
            consumer_group: String::new(),
            dlq_topic: None,
            retry_topic: None,
            security_protocol: KafkaSecurityProtocol::default(),
            sasl: None,
            ssl: None,
            commit_interval: default_commit_interval(),
            revoke_drain_timeout: default_revoke_timeout(),
            redelivery_delay: default_redelivery_delay(),
            delivery_timeout: default_delivery_timeout(),
            connect_timeout: default_connect_timeout(),
            options: BTreeMap::new(),
            producer_options: BTreeMap::new(),
        }
    }
}

/// Option maps with secret-looking values masked, for `Debug`.
struct MaskedOptions<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for MaskedOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret_option(k) { REDACTED } else { v.as_str() })),
            )
            .finish()
    }
}

impl fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("consumer_group", &self.consumer_group)
            .field("dlq_topic", &self.dlq_topic)
            .field("retry_topic", &self.retry_topic)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("ssl", &self.ssl)
            .field("commit_interval", &self.commit_interval)
            .field("revoke_drain_timeout", &self.revoke_drain_timeout)
            .field("redelivery_delay", &self.redelivery_delay)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &MaskedOptions(&self.options))
            .field("producer_options", &MaskedOptions(&self.producer_options))
            .finish()
    }
}

/// Accepts `topics: [a, b]` as well as `queue_name: a`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a topic name or a list of topic names")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1));
            while let Some(topic) = seq.next_element::<String>()? {
                out.push(topic);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_any(OneOrMany)
}

/// `topics` as [`one_or_many`] reads it: a topic name or a list of them.
fn topics_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
        ],
    })
}

/// Whether a librdkafka option name holds a credential.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("sasl.oauthbearer.config") || k.ends_with(".pem")
}

fn serialize_masked_options<S: Serializer>(options: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let masked: BTreeMap<&str, &str> = options
        .iter()
        .map(|(k, v)| (k.as_str(), if is_secret_option(k) { REDACTED } else { v.as_str() }))
        .collect();
    masked.serialize(s)
}

/// librdkafka settings qt sets from typed fields (or controls itself); setting them in
/// `options`/`producer_options` would silently fight the typed field, so it is refused.
const TYPED_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("security.protocol", "security_protocol"),
    ("sasl.mechanism", "sasl.mechanism"),
    ("sasl.mechanisms", "sasl.mechanism"),
    ("sasl.username", "sasl.username"),
    ("sasl.password", "sasl.password"),
    ("ssl.ca.location", "ssl.ca_location"),
    ("ssl.certificate.location", "ssl.certificate_location"),
    ("ssl.key.location", "ssl.key_location"),
    ("ssl.key.password", "ssl.key_password"),
];

/// Consumer settings qt owns: the offset handling is what makes at-least-once hold.
const CONSUMER_OWNED_KEYS: &[(&str, &str)] = &[
    ("group.id", "set it with consumer_group"),
    (
        "enable.auto.commit",
        "qt commits only finished offsets, every commit_interval",
    ),
    (
        "enable.auto.offset.store",
        "qt commits only finished offsets, every commit_interval",
    ),
    ("auto.commit.interval.ms", "set it with commit_interval"),
];

/// Producer settings qt owns.
const PRODUCER_OWNED_KEYS: &[(&str, &str)] = &[
    ("message.timeout.ms", "set it with delivery_timeout"),
    ("delivery.timeout.ms", "set it with delivery_timeout"),
    ("transactional.id", "qt's producer is not transactional"),
];

/// Kafka's rule for topic names.
fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} is not a valid topic name"));
    }
    if name.len() > 249 {
        return Some(format!("is {} characters long; Kafka allows at most 249", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{name:?} contains {c:?}; topic names use only letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

impl KafkaSourceConfig {
    /// The unencrypted endpoints, as (field path, brokers and protocol), for
    /// `security.require_tls`.
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        if self.security_protocol.is_tls() {
            return Vec::new();
        }
        vec![(
            join(path, "security_protocol"),
            format!(
                "{} ({})",
                self.brokers.join(","),
                self.security_protocol.as_librdkafka()
            ),
        )]
    }

    /// Whether a librdkafka option name holds a credential (its value is masked when
    /// printed, and adapters keep it out of logs).
    pub fn is_secret_option(key: &str) -> bool {
        is_secret_option(key)
    }

    /// Every topic the consumer subscribes to: `topics` and the retry topic.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        if let Some(retry) = &self.retry_topic
            && !topics.contains(retry)
        {
            topics.push(retry.clone());
        }
        topics
    }

    fn validate_options(
        &self,
        path: &str,
        field: &str,
        options: &BTreeMap<String, String>,
        owned: &[(&str, &str)],
        problems: &mut ConfigErrors,
    ) {
        for key in options.keys() {
            let at = format!("{}.{key}", join(path, field));
            if let Some((_, typed)) = TYPED_KEYS.iter().find(|(k, _)| k == key) {
                problems.push(at, format!("set by qt; use {} instead", join(path, typed)));
            } else if let Some((_, why)) = owned.iter().find(|(k, _)| k == key) {
                problems.push(at, format!("set by qt ({why}); remove it here"));
            }
        }
    }
}

impl Validate for KafkaSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.brokers.is_empty() {
            problems.push(join(path, "brokers"), "at least one broker is required");
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                problems.push(
                    format!("{}[{i}]", join(path, "brokers")),
                    format!("expected host:port, got {b:?}"),
                );
            }
        }
        if self.topics.is_empty() {
            problems.push(join(path, "topics"), "at least one topic is required");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Some(problem) = topic_name_problem(t) {
                problems.push(format!("{}[{i}]", join(path, "topics")), problem);
            }
        }
        if self.consumer_group.trim().is_empty() {
            problems.push(join(path, "consumer_group"), "required");
        }
        if let Some(dlq) = &self.dlq_topic {
            if let Some(problem) = topic_name_problem(dlq) {
                problems.push(join(path, "dlq_topic"), problem);
            } else if self.topics.contains(dlq) || self.retry_topic.as_ref() == Some(dlq) {
                problems.push(
                    join(path, "dlq_topic"),
                    format!("{dlq:?} is also consumed; dead letters would be processed again"),
                );
            }
        }
        if let Some(retry) = &self.retry_topic
            && let Some(problem) = topic_name_problem(retry)
        {
            problems.push(join(path, "retry_topic"), problem);
        }
        if self.security_protocol.is_sasl() && self.sasl.is_none() {
            problems.push(
                join(path, "sasl"),
                format!(
                    "required with security_protocol {}",
                    self.security_protocol.as_librdkafka()
                ),
            );
        }
        if !self.security_protocol.is_sasl() && self.sasl.is_some() {
            problems.push(
                join(path, "sasl"),
                "set security_protocol to sasl_ssl (or sasl_plaintext) to use SASL",
            );
        }
        if let Some(sasl) = &self.sasl {
            if sasl.username.is_empty() {
                problems.push(join(path, "sasl.username"), "required");
            }
            if sasl.password.is_empty() {
                problems.push(
                    join(path, "sasl.password"),
                    "required (e.g. password: ${KAFKA_PASSWORD})",
                );
            }
        }
        if let Some(ssl) = &self.ssl {
            if !self.security_protocol.is_tls() {
                problems.push(
                    join(path, "ssl"),
                    "set security_protocol to ssl (or sasl_ssl) to use TLS settings",
                );
            }
            if ssl.key_location.is_some() != ssl.certificate_location.is_some() {
                problems.push(
                    join(path, "ssl"),
                    "certificate_location and key_location go together (mutual TLS needs both)",
                );
            }
            if ssl.key_password.is_some() && ssl.key_location.is_none() {
                problems.push(join(path, "ssl.key_password"), "set only with key_location");
            }
        }
        if self.commit_interval.is_zero() {
            problems.push(join(path, "commit_interval"), "must be longer than 0s");
        }
        if self.redelivery_delay.is_zero() {
            problems.push(
                join(path, "redelivery_delay"),
                "must be longer than 0s (a failing message would otherwise be redelivered in a tight loop)",
            );
        }
        if self.delivery_timeout < Duration::from_millis(1) {
            problems.push(join(path, "delivery_timeout"), "must be at least 1ms");
        }
        if self.connect_timeout < Duration::from_millis(1) {
            problems.push(join(path, "connect_timeout"), "must be at least 1ms");
        }
        if self
            .options
            .get("statistics.interval.ms")
            .is_some_and(|v| v.trim().parse::<u64>().map_or(true, |ms| ms == 0))
        {
            problems.push(
                format!("{}.statistics.interval.ms", join(path, "options")),
                "qt reads health and backlog from librdkafka statistics; use a positive interval (default 1000)",
            );
        }
        if let Some(max_poll) = self
            .options
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            && self.revoke_drain_timeout >= Duration::from_millis(max_poll)
        {
            problems.push(
                join(path, "revoke_drain_timeout"),
                format!(
                    "must be shorter than options.max.poll.interval.ms ({max_poll}ms): the group would drop this member while it drains"
                ),
            );
        }
        self.validate_options(path, "options", &self.options, CONSUMER_OWNED_KEYS, problems);
        self.validate_options(
            path,
            "producer_options",
            &self.producer_options,
            PRODUCER_OWNED_KEYS,
            problems,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    fn parse(yaml: &str) -> KafkaSourceConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = parse("brokers: [\"k1:9092\"]\ntopics: [orders]\nconsumer_group: g\n");
        assert!(
            problems_found(&c, "source").is_empty(),
            "{:?}",
            problems_found(&c, "source")
        );
        assert_eq!(c.commit_interval, Duration::from_secs(1));
        assert_eq!(c.revoke_drain_timeout, Duration::from_secs(10));
        assert_eq!(c.redelivery_delay, Duration::from_secs(1));
        assert_eq!(c.delivery_timeout, Duration::from_secs(30));
    }

    #[test]
    fn queue_name_is_an_alias_for_one_topic() {
        let c = parse("brokers: [\"k1:9092\"]\nqueue_name: orders\nconsumer_group: g\n");
        assert_eq!(c.topics, vec!["orders".to_owned()]);
    }

    #[test]
    fn retry_topic_is_subscribed_once() {
        let mut c = parse("brokers: [\"k1:9092\"]\ntopics: [a, b]\nconsumer_group: g\nretry_topic: r\n");
        assert_eq!(c.subscribed_topics(), vec!["a", "b", "r"]);
        c.retry_topic = Some("a".into());
        assert_eq!(c.subscribed_topics(), vec!["a", "b"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = r#"
brokers: ["nohost", "k:0"]
topics: ["ok", "bad topic"]
dlq_topic: ok
security_protocol: sasl_plaintext
sasl: {mechanism: PLAIN, username: "", password: ""}
ssl: {key_location: /k.pem}
commit_interval: 0s
redelivery_delay: 0s
options: {group.id: x, enable.auto.commit: "true", sasl.password: p, fetch.min.bytes: "1", statistics.interval.ms: "0", max.poll.interval.ms: "5000"}
producer_options: {message.timeout.ms: "5", linger.ms: "5"}
"#;
        let got = problems_found(&parse(yaml), "source");
        let expect = [
            "source.brokers[0]:",
            "source.brokers[1]:",
            "source.topics[1]:",
            "source.consumer_group:",
            "source.dlq_topic:",
            "source.sasl.username:",
            "source.sasl.password:",
            "source.ssl:",
            "source.commit_interval:",
            "source.redelivery_delay:",
            "source.options.group.id:",
            "source.options.enable.auto.commit:",
            "source.options.sasl.password: set by qt; use source.sasl.password instead",
            "source.producer_options.message.timeout.ms:",
            "source.options.statistics.interval.ms:",
            "source.revoke_drain_timeout: must be shorter than options.max.poll.interval.ms (5000ms)",
        ];
        for e in expect {
            assert!(got.iter().any(|p| p.starts_with(e)), "missing {e} in {got:#?}");
        }
        assert!(
            !got.iter()
                .any(|p| p.contains("fetch.min.bytes") || p.contains("linger.ms"))
        );
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let yaml = r#"
brokers: ["k1:9093"]
topics: [orders]
consumer_group: g
security_protocol: sasl_ssl
sasl: {mechanism: SCRAM-SHA-512, username: qt, password: "pw-123456"}
ssl: {certificate_location: /c.pem, key_location: /k.pem, key_password: "kp-654321"}
options: {sasl.oauthbearer.client.secret: "oauth-999"}
producer_options: {ssl.keystore.password: "ks-777"}
"#;
        let c = parse(yaml);
        assert!(
            problems_found(&c, "source").is_empty(),
            "{:?}",
            problems_found(&c, "source")
        );
        let printed = format!("{}\n{c:?}", serde_yaml_ng::to_string(&c).unwrap());
        for secret in ["pw-123456", "kp-654321", "oauth-999", "ks-777"] {
            assert!(!printed.contains(secret), "{secret} leaked in {printed}");
        }
        assert!(c.plaintext_endpoints("source").is_empty());
    }

    #[test]
    fn plaintext_protocols_are_reported_for_require_tls() {
        let c = parse("brokers: [\"k1:9092\"]\ntopics: [t]\nconsumer_group: g\n");
        let found = c.plaintext_endpoints("source");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "source.security_protocol");
        assert!(found[0].1.contains("k1:9092 (plaintext)"));
    }
}
