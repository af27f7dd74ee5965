//! `source` with `type: rabbitmq`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::problems::{ConfigErrors, Validate, join};
use crate::secret::SecretUrl;

/// A queue to declare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclaration {
    /// Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// `x-queue-type: quorum`, `x-dead-letter-exchange`, ... as strings or numbers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaration {
    #[serde(default)]
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`. Default `direct`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBinding {
    #[serde(default)]
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

/// What to declare at start. Without it, qt only checks passively that the queue exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqDeclare {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueDeclaration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<ExchangeDeclaration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<QueueBinding>,
}

/// Where qt publishes dead letters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqDlq {
    /// Exchange name; `""` is the default exchange, which routes by queue name.
    #[serde(default)]
    pub exchange: String,
    /// Routing key (the DLQ queue name when `exchange` is `""`). Required.
    #[serde(default)]
    pub routing_key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSourceConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://` for TLS. Required; the password is
    /// masked whenever the URL is printed.
    #[serde(default)]
    pub url: SecretUrl,
    /// Queue to consume. Required. (`queue_name` is accepted as an alias.)
    #[serde(default, alias = "queue_name")]
    pub queue: String,
    /// basic.qos prefetch count. Default: max_in_flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<RabbitMqDeclare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq: Option<RabbitMqDlq>,
    /// Queue used for delayed requeues (per-message TTL, dead-lettering back to the main
    /// queue); declared by qt. Default `<queue>.qt-retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_queue: Option<String>,
    /// CA bundle for amqps. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// First reconnect delay; doubles up to `reconnect_max`. Default 500ms.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Default 30s.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
}

fn default_true() -> bool {
    true
}
fn default_kind() -> String {
    "direct".to_owned()
}
fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl RabbitMqSourceConfig {
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        if self.url.scheme().as_deref() == Some("amqps") {
            Vec::new()
        } else {
            vec![(join(path, "url"), self.url.masked())]
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
            None => problems.push(join(path, "url"), format!("not a URL: {}", self.url)),
        }
        if self.queue.trim().is_empty() {
            problems.push(join(path, "queue"), "required");
        }
        if self.prefetch == Some(0) {
            problems.push(join(path, "prefetch"), "must be at least 1 (0 would mean unlimited)");
        }
        if let Some(d) = &self.declare {
            for (i, e) in d.exchanges.iter().enumerate() {
                if e.name.is_empty() {
                    problems.push(format!("{}.exchanges[{i}].name", join(path, "declare")), "required");
                }
                if !matches!(e.kind.as_str(), "direct" | "fanout" | "topic" | "headers") {
                    problems.push(
                        format!("{}.exchanges[{i}].kind", join(path, "declare")),
                        format!("must be direct, fanout, topic or headers, got {:?}", e.kind),
                    );
                }
            }
        }
        if let Some(dlq) = &self.dlq {
            if dlq.routing_key.is_empty() {
                problems.push(
                    join(path, "dlq.routing_key"),
                    "required (the DLQ queue name when exchange is \"\")",
                );
            }
        }
        if self.reconnect_initial.is_zero() || self.reconnect_initial > self.reconnect_max {
            problems.push(
                join(path, "reconnect_initial"),
                "must be above 0s and at most reconnect_max",
            );
        }
    }
}
