//! `source` with `type: kafka`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::config::problems::{ConfigErrors, Validate, join};
use crate::secret::{REDACTED, Secret};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
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

    pub fn is_tls(self) -> bool {
        matches!(self, KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl)
    }

    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    pub mechanism: SaslMechanism,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSslConfig {
    /// CA bundle to verify brokers with. Default: the system store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_location: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_location: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<Secret>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`. Required.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Topics to consume. Required. (`queue_name` is accepted as an alias for one topic.)
    #[serde(default)]
    pub topics: Vec<String>,
    /// Consumer group id. Required.
    #[serde(default)]
    pub consumer_group: String,
    /// Failed messages are produced here. Default: none (dead-lettering then fails and the
    /// message is left uncommitted, so set it when `on_failure: dlq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_topic: Option<String>,
    /// Requeued messages are produced here. Default: back to their own topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_topic: Option<String>,
    /// Default `plaintext`.
    #[serde(default)]
    pub security_protocol: KafkaSecurityProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<KafkaSslConfig>,
    /// How often completed offsets are committed. Default 1s.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On partition revocation, how long in-flight messages of the revoked partitions may
    /// take before the partitions are let go. Default 10s.
    #[serde(default = "default_revoke_timeout", with = "humantime_serde")]
    pub revoke_drain_timeout: Duration,
    /// librdkafka settings passed through as is (e.g. `session.timeout.ms`). Values of
    /// keys that look secret are masked when printed.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_masked_options"
    )]
    pub options: BTreeMap<String, String>,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_revoke_timeout() -> Duration {
    Duration::from_secs(10)
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

impl KafkaSourceConfig {
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
}

impl Validate for KafkaSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.brokers.is_empty() {
            problems.push(join(path, "brokers"), "at least one broker is required");
        }
        for (i, b) in self.brokers.iter().enumerate() {
            if !b.contains(':') {
                problems.push(
                    format!("{}[{i}]", join(path, "brokers")),
                    format!("expected host:port, got {b:?}"),
                );
            }
        }
        if self.topics.is_empty() {
            problems.push(join(path, "topics"), "at least one topic is required");
        }
        if self.consumer_group.trim().is_empty() {
            problems.push(join(path, "consumer_group"), "required");
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
        if self.commit_interval.is_zero() {
            problems.push(join(path, "commit_interval"), "must be longer than 0s");
        }
        for key in self.options.keys() {
            let k = key.as_str();
            if matches!(
                k,
                "group.id" | "bootstrap.servers" | "enable.auto.offset.store" | "security.protocol"
            ) {
                problems.push(
                    format!("{}.{k}", join(path, "options")),
                    "set by qt from the typed fields; remove it here",
                );
            }
        }
    }
}
