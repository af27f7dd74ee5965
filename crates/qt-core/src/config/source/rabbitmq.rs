//! `source` with `type: rabbitmq`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::problems::{ConfigErrors, Validate, join};
use crate::secret::SecretUrl;

/// AMQP 0-9-1 short strings (queue, exchange and routing key names) hold at most 255 bytes.
const MAX_NAME_BYTES: usize = 255;

/// A queue for qt to declare: the consumed queue (`declare.queue`) or the dead-letter queue
/// (`dlq.declare`), in the same shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `durable` (true or false) and `arguments` (a mapping of queue arguments), e.g. {durable: true}"
)]
pub struct QueueDeclaration {
    /// Whether the queue survives a broker restart.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Queue arguments such as `x-queue-type: quorum`, `x-dead-letter-exchange: ""`,
    /// `x-max-length: 10000`. Values are strings, integers, floats or booleans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// Durable, without arguments.
impl Default for QueueDeclaration {
    fn default() -> Self {
        Self {
            durable: true,
            arguments: BTreeMap::new(),
        }
    }
}

/// An exchange for qt to declare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `name`, `kind` (direct, fanout, topic or headers) and `durable`"
)]
pub struct ExchangeDeclaration {
    /// Exchange name, at most 255 bytes.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Exchange type: `direct`, `fanout`, `topic` or `headers`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Whether the exchange survives a broker restart.
    #[serde(default = "default_true")]
    pub durable: bool,
}

/// Binds the consumed queue to an exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with `exchange` and `routing_key`")]
pub struct QueueBinding {
    /// Exchange to bind to (not the default exchange `""`, which cannot be bound).
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub exchange: String,
    /// Routing key (binding key) of the binding; `""` for fanout and headers exchanges.
    #[serde(default)]
    pub routing_key: String,
}

/// What to declare at start (and after every reconnect). Without `queue`, qt only checks
/// passively that the queue exists and fails with an error naming it when it does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `queue` (a mapping with `durable` and `arguments`), `exchanges` (a list) and `bindings` (a list)"
)]
pub struct RabbitMqDeclare {
    /// Declare the consumed queue with these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueDeclaration>,
    /// Exchanges to declare, each `{name, kind, durable}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<ExchangeDeclaration>,
    /// Bindings of the consumed queue, each `{exchange, routing_key}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<QueueBinding>,
}

/// Where qt publishes dead letters (with publisher confirms, before acking the original).
/// Without it, dead-lettering a message fails and the message is redelivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `exchange`, `routing_key` and `declare` (a mapping with `durable` and `arguments`)"
)]
pub struct RabbitMqDlq {
    /// Exchange name; `""` is the default exchange, which routes by queue name.
    #[serde(default)]
    pub exchange: String,
    /// Routing key dead letters are published with: the DLQ queue's name when `exchange` is
    /// `""`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub routing_key: String,
    /// Declare the DLQ queue, named `routing_key`, with these settings: the same shape as
    /// `declare.queue` (`{}` is a durable queue without arguments). Only with `exchange: ""`.
    /// Unset: the DLQ destination is only checked at start. (The former `declare: true` is
    /// refused with this shape.)
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "queue_declaration_not_bool"
    )]
    pub declare: Option<QueueDeclaration>,
    /// The queue the dead letters end up in, which `qt dlq` reads. Unset: `routing_key`
    /// when `exchange` is `""`; with a named exchange qt cannot tell which queue is bound
    /// to it, so `qt dlq` needs this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl RabbitMqDlq {
    /// The queue holding the dead letters: `queue`, else `routing_key` on the default
    /// exchange; `None` for a named exchange without `queue`.
    pub fn queue_name(&self) -> Option<&str> {
        match &self.queue {
            Some(queue) => Some(queue),
            None if self.exchange.is_empty() => Some(&self.routing_key),
            None => None,
        }
    }
}

/// `dlq.declare` as a mapping, with a message that says what to write for the former boolean.
/// The mapping is read through the same deserializer, so a wrong nested field keeps its path.
fn queue_declaration_not_bool<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<QueueDeclaration>, D::Error> {
    use serde::de::{self, MapAccess, Visitor};

    struct Declaration;

    impl<'de> Visitor<'de> for Declaration {
        type Value = Option<QueueDeclaration>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping with `durable` (true or false) and `arguments` (a mapping of queue arguments), e.g. {durable: true}")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Err(E::custom(if v {
                "`declare: true` is no longer accepted: write `declare: {durable: true}` (a mapping with `durable` \
                 and `arguments`, as in declare.queue) to have qt declare the DLQ queue"
            } else {
                "`declare: false` is no longer accepted: leave `declare` out to have the DLQ queue checked, not declared"
            }))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            QueueDeclaration::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_any(Declaration)
}

/// `source` with `type: rabbitmq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the rabbitmq source fields (`url`, `queue`, `declare`, `dlq`, ...)"
)]
pub struct RabbitMqSourceConfig {
    /// `amqp://user:pass@host:5672/vhost`, or `amqps://` for TLS; the password is masked
    /// whenever the URL is printed. Query options such as `?heartbeat=30` are passed to the
    /// client.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub url: SecretUrl,
    /// Queue to consume, at most 255 bytes.
    #[serde(default, alias = "queue_name")]
    #[schemars(extend("x-required" = true))]
    #[schemars(extend("x-aliases" = ["queue_name"]))]
    pub queue: String,
    /// `basic.qos` prefetch count: most unacknowledged deliveries the broker sends, at
    /// least 1. Unset: `processing.max_in_flight`'s effective value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    /// The queue, exchanges and bindings qt declares at start. Unset: qt only checks that
    /// the queue exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<RabbitMqDeclare>,
    /// Where qt publishes dead letters. Unset: dead-lettering a message fails and it is
    /// redelivered, so set it when a `processing` action is `dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq: Option<RabbitMqDlq>,
    /// Queue used for delayed requeues (per-message TTL, dead-lettering back to the main
    /// queue); declared by qt at start unless it already exists. Unset: `<queue>.qt-retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_queue: Option<String>,
    /// PEM CA bundle trusted for `amqps://` besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS. Needs `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM) for mutual TLS. Needs `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// How long one connection attempt (TCP, TLS and AMQP handshake) may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub connect_timeout: Duration,
    /// How long a publish (dead letter, delayed requeue, `qt send`) waits for the broker's
    /// confirm before failing; the original message is then left for redelivery.
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub confirm_timeout: Duration,
    /// Delay before the first reconnect after the connection is lost; it doubles on each
    /// failed attempt up to `reconnect_max`.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts, at least `reconnect_initial`.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub reconnect_max: Duration,
}

fn default_true() -> bool {
    true
}
fn default_kind() -> String {
    "direct".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl RabbitMqSourceConfig {
    /// A configuration for `queue` at `url` with every other field at its default.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            queue: queue.into(),
            prefetch: None,
            declare: None,
            dlq: None,
            retry_queue: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            connect_timeout: default_connect_timeout(),
            confirm_timeout: default_confirm_timeout(),
            reconnect_initial: default_reconnect_initial(),
            reconnect_max: default_reconnect_max(),
        }
    }

    /// Whether the URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.url.scheme().as_deref() == Some("amqps")
    }

    /// The queue delayed requeues go through.
    pub fn retry_queue_name(&self) -> String {
        self.retry_queue
            .clone()
            .unwrap_or_else(|| format!("{}.qt-retry", self.queue))
    }

    /// The `amqp://` URL, masked, for `security.require_tls`.
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        if self.is_tls() {
            Vec::new()
        } else {
            vec![(join(path, "url"), self.url.masked())]
        }
    }
}

fn check_name(problems: &mut ConfigErrors, at: String, name: &str) {
    if name.len() > MAX_NAME_BYTES {
        problems.push(
            at,
            format!("at most {MAX_NAME_BYTES} bytes (AMQP short string), got {}", name.len()),
        );
    }
}

/// The arguments of a queue declaration at `at` (`...declare.queue` or `...dlq.declare`).
fn check_arguments(problems: &mut ConfigErrors, at: &str, q: &QueueDeclaration) {
    for (key, value) in &q.arguments {
        let field = format!("{at}.arguments.{key}");
        check_name(problems, field.clone(), key);
        if !(value.is_string() || value.is_number() || value.is_boolean()) {
            problems.push(field, "must be a string, a number or a boolean");
        }
    }
}

impl Validate for RabbitMqSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        match self.url.scheme().as_deref() {
            Some("amqp" | "amqps") => {}
            Some(other) => problems.push(
                join(path, "url"),
                format!("scheme must be amqp:// or amqps://, got {other}://"),
            ),
            None if self.url.expose().trim().is_empty() => problems.push(join(path, "url"), "required"),
            None => problems.push(join(path, "url"), format!("not a URL: {}", self.url)),
        }
        if self.queue.trim().is_empty() {
            problems.push(join(path, "queue"), "required");
        }
        check_name(problems, join(path, "queue"), &self.queue);
        if self.prefetch == Some(0) {
            problems.push(join(path, "prefetch"), "must be at least 1 (0 would mean unlimited)");
        }
        if let Some(d) = &self.declare {
            let declare = join(path, "declare");
            if let Some(q) = &d.queue {
                check_arguments(problems, &join(&declare, "queue"), q);
            }
            for (i, e) in d.exchanges.iter().enumerate() {
                if e.name.is_empty() {
                    problems.push(format!("{declare}.exchanges[{i}].name"), "required");
                }
                check_name(problems, format!("{declare}.exchanges[{i}].name"), &e.name);
                if !matches!(e.kind.as_str(), "direct" | "fanout" | "topic" | "headers") {
                    problems.push(
                        format!("{declare}.exchanges[{i}].kind"),
                        format!("must be direct, fanout, topic or headers, got {:?}", e.kind),
                    );
                }
            }
            for (i, b) in d.bindings.iter().enumerate() {
                if b.exchange.is_empty() {
                    problems.push(
                        format!("{declare}.bindings[{i}].exchange"),
                        "required (the default exchange cannot be bound)",
                    );
                }
                check_name(problems, format!("{declare}.bindings[{i}].exchange"), &b.exchange);
                check_name(problems, format!("{declare}.bindings[{i}].routing_key"), &b.routing_key);
            }
        }
        if let Some(dlq) = &self.dlq {
            if dlq.routing_key.is_empty() {
                problems.push(
                    join(path, "dlq.routing_key"),
                    "required (the DLQ queue name when exchange is \"\")",
                );
            }
            check_name(problems, join(path, "dlq.routing_key"), &dlq.routing_key);
            check_name(problems, join(path, "dlq.exchange"), &dlq.exchange);
            if let Some(q) = &dlq.declare {
                check_arguments(problems, &join(path, "dlq.declare"), q);
            }
            if dlq.declare.is_some() && !dlq.exchange.is_empty() {
                problems.push(
                    join(path, "dlq.declare"),
                    "only with exchange \"\" (qt declares the queue named routing_key); declare and bind \
                     the DLQ of a named exchange yourself",
                );
            }
            if dlq.exchange.is_empty() && !self.queue.is_empty() && dlq.routing_key == self.queue {
                problems.push(join(path, "dlq.routing_key"), "must not be the consumed queue itself");
            }
            if let Some(queue) = &dlq.queue {
                let at = join(path, "dlq.queue");
                check_name(problems, at.clone(), queue);
                if queue.trim().is_empty() {
                    problems.push(
                        at,
                        "must not be empty (leave it out for routing_key with exchange \"\")",
                    );
                } else if dlq.exchange.is_empty() && *queue != dlq.routing_key {
                    problems.push(
                        at,
                        format!(
                            "with exchange \"\" dead letters go to the queue named routing_key ({:?}); leave \
                             queue out or make it the same",
                            dlq.routing_key
                        ),
                    );
                } else if *queue == self.queue {
                    problems.push(at, "must not be the consumed queue itself");
                }
            }
        }
        if let Some(retry) = &self.retry_queue {
            if retry.trim().is_empty() {
                problems.push(
                    join(path, "retry_queue"),
                    "must not be empty (leave it out for <queue>.qt-retry)",
                );
            } else if *retry == self.queue {
                problems.push(join(path, "retry_queue"), "must not be the consumed queue itself");
            }
        }
        check_name(problems, join(path, "retry_queue"), &self.retry_queue_name());
        let tls = self.is_tls();
        for (field, value) in [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            if value.is_some() && !tls {
                problems.push(join(path, field), "only used with an amqps:// url");
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => problems.push(join(path, "client_key_file"), "required with client_cert_file"),
            (None, Some(_)) => problems.push(join(path, "client_cert_file"), "required with client_key_file"),
            _ => {}
        }
        if self.connect_timeout.is_zero() {
            problems.push(join(path, "connect_timeout"), "must be longer than 0s");
        }
        if self.confirm_timeout.is_zero() {
            problems.push(join(path, "confirm_timeout"), "must be longer than 0s");
        }
        if self.reconnect_initial.is_zero() || self.reconnect_initial > self.reconnect_max {
            problems.push(
                join(path, "reconnect_initial"),
                "must be above 0s and at most reconnect_max",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    #[test]
    fn defaults_are_valid_and_name_the_retry_queue() {
        let cfg = RabbitMqSourceConfig::new("amqp://guest:guest@localhost:5672/%2f", "orders");
        assert!(
            problems_found(&cfg, "source").is_empty(),
            "{:?}",
            problems_found(&cfg, "source")
        );
        assert_eq!(cfg.retry_queue_name(), "orders.qt-retry");
        assert!(!cfg.is_tls());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut cfg = RabbitMqSourceConfig::new("amqp://localhost", "");
        cfg.prefetch = Some(0);
        cfg.declare = Some(RabbitMqDeclare {
            queue: Some(QueueDeclaration {
                durable: true,
                arguments: [("x-bad".to_owned(), serde_json::json!([1]))].into_iter().collect(),
            }),
            exchanges: vec![ExchangeDeclaration {
                name: String::new(),
                kind: "fan".into(),
                durable: true,
            }],
            bindings: vec![QueueBinding {
                exchange: String::new(),
                routing_key: "k".repeat(300),
            }],
        });
        cfg.dlq = Some(RabbitMqDlq {
            exchange: "dlx".into(),
            routing_key: String::new(),
            declare: Some(QueueDeclaration::default()),
            queue: None,
        });
        cfg.ca_file = Some("/ca.pem".into());
        cfg.client_cert_file = Some("/c.pem".into());
        cfg.reconnect_initial = Duration::from_secs(60);
        let got = problems_found(&cfg, "source");
        for path in [
            "source.queue:",
            "source.prefetch:",
            "source.declare.queue.arguments.x-bad:",
            "source.declare.exchanges[0].name:",
            "source.declare.exchanges[0].kind:",
            "source.declare.bindings[0].exchange:",
            "source.declare.bindings[0].routing_key:",
            "source.dlq.routing_key:",
            "source.dlq.declare:",
            "source.ca_file:",
            "source.client_cert_file:",
            "source.client_key_file:",
            "source.reconnect_initial:",
        ] {
            assert!(got.iter().any(|p| p.starts_with(path)), "missing {path} in {got:#?}");
        }
    }

    #[test]
    fn tls_files_need_amqps_and_plaintext_is_reported_masked() {
        let mut cfg = RabbitMqSourceConfig::new("amqps://u:pw-123456@mq.example.com:5671/prod", "q");
        cfg.ca_file = Some("/etc/ca.pem".into());
        cfg.client_cert_file = Some("/etc/c.pem".into());
        cfg.client_key_file = Some("/etc/k.pem".into());
        assert!(
            problems_found(&cfg, "source").is_empty(),
            "{:?}",
            problems_found(&cfg, "source")
        );
        assert!(cfg.plaintext_endpoints("source").is_empty());

        let plain = RabbitMqSourceConfig::new("amqp://u:pw-123456@mq.example.com/prod", "q");
        let endpoints = plain.plaintext_endpoints("source");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].0, "source.url");
        assert!(!endpoints[0].1.contains("pw-123456"), "{}", endpoints[0].1);
    }

    #[test]
    fn dlq_and_retry_queue_may_not_be_the_consumed_queue() {
        let mut cfg = RabbitMqSourceConfig::new("amqp://localhost", "q");
        cfg.dlq = Some(RabbitMqDlq {
            exchange: String::new(),
            routing_key: "q".into(),
            declare: None,
            queue: None,
        });
        cfg.retry_queue = Some("q".into());
        let got = problems_found(&cfg, "source");
        assert!(got.iter().any(|p| p.starts_with("source.dlq.routing_key:")), "{got:#?}");
        assert!(got.iter().any(|p| p.starts_with("source.retry_queue:")), "{got:#?}");
    }

    #[test]
    fn the_dlq_queue_is_the_routing_key_on_the_default_exchange_and_must_be_named_for_a_named_one() {
        let mut cfg = RabbitMqSourceConfig::new("amqp://localhost", "q");
        let mut dlq = RabbitMqDlq {
            exchange: String::new(),
            routing_key: "q.dlq".into(),
            declare: None,
            queue: None,
        };
        assert_eq!(dlq.queue_name(), Some("q.dlq"));
        dlq.exchange = "dlx".into();
        assert_eq!(dlq.queue_name(), None);
        dlq.queue = Some("q.dead".into());
        assert_eq!(dlq.queue_name(), Some("q.dead"));
        cfg.dlq = Some(dlq.clone());
        assert!(
            problems_found(&cfg, "source").is_empty(),
            "{:?}",
            problems_found(&cfg, "source")
        );

        for (exchange, queue) in [("", "elsewhere"), ("dlx", "q"), ("dlx", " ")] {
            dlq.exchange = exchange.into();
            dlq.queue = Some(queue.into());
            cfg.dlq = Some(dlq.clone());
            let got = problems_found(&cfg, "source");
            assert!(
                got.iter().any(|p| p.starts_with("source.dlq.queue:")),
                "{exchange:?} {queue:?}: {got:#?}"
            );
        }
    }
}
