//! `source` with `type: sqs`.

use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::problems::{ConfigErrors, Validate, join};

/// The longest visibility SQS allows for a message, counted from its receipt.
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// The longest long-poll wait SQS allows.
pub const SQS_MAX_WAIT: Duration = Duration::from_secs(20);

/// `source` with `type: sqs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the sqs source fields (`queue_url`, `region`, ...)"
)]
pub struct SqsSourceConfig {
    /// Queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`), or a bare queue
    /// name that is looked up with GetQueueUrl on connect. A name ending in `.fifo` is a FIFO
    /// queue.
    #[serde(default, alias = "queue_name")]
    #[schemars(extend("x-required" = true))]
    #[schemars(extend("x-aliases" = ["queue_name"]))]
    pub queue_url: String,
    /// AWS region of the queue, e.g. `eu-west-1`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub region: String,
    /// Endpoint override for local emulators (e.g. `http://127.0.0.1:4566`). Unset: AWS's
    /// endpoint for `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Named profile from the shared AWS config. Unset: the standard provider chain
    /// (environment, shared profile, web identity, container and instance credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Dead letters are sent here (URL or queue name), with the failure details as message
    /// attributes, before the original is deleted. Unset: a dead-letter settlement fails
    /// and the message is left for redelivery; use the queue's own redrive policy
    /// (`on_failure: nack`) instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_queue_url: Option<String>,
    /// Concurrent long-poll loops, 1 to 64; more carry a higher message rate.
    #[serde(default = "default_pollers")]
    pub pollers: usize,
    /// Long-poll wait per receive, whole seconds, `0s` to `20s`.
    #[serde(default = "default_wait_time", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub wait_time: Duration,
    /// Messages per receive, 1 to 10.
    #[serde(default = "default_max_messages")]
    pub max_messages: i32,
    /// Visibility timeout asked for on receive, whole seconds, `1s` to `12h`. Unset: the
    /// queue's own.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub visibility_timeout: Option<Duration>,
    /// While a message is unsettled its visibility is extended whenever half of the
    /// visibility timeout has passed, until the message has been invisible this long since
    /// it was received; after that it is left to time out and be redelivered. `0s` turns
    /// the heartbeat off; at most `12h`, the SQS maximum.
    #[serde(default = "default_max_extension", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub max_visibility_extension: Duration,
    /// How soon a nacked message becomes visible again, whole seconds, at most `12h`.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub nack_delay: Duration,
}

fn default_pollers() -> usize {
    2
}
fn default_wait_time() -> Duration {
    SQS_MAX_WAIT
}
fn default_max_messages() -> i32 {
    10
}
fn default_max_extension() -> Duration {
    SQS_MAX_VISIBILITY
}

impl Default for SqsSourceConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            region: String::new(),
            endpoint_url: None,
            profile: None,
            dlq_queue_url: None,
            pollers: default_pollers(),
            wait_time: default_wait_time(),
            max_messages: default_max_messages(),
            visibility_timeout: None,
            max_visibility_extension: default_max_extension(),
            nack_delay: Duration::ZERO,
        }
    }
}

/// Whether an SQS queue URL or name names a FIFO queue (SQS requires the `.fifo` suffix).
pub fn is_fifo_queue(url_or_name: &str) -> bool {
    url_or_name.trim_end_matches('/').ends_with(".fifo")
}

impl SqsSourceConfig {
    /// Whether the queue is a FIFO queue (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        is_fifo_queue(&self.queue_url)
    }

    /// The `http://` endpoints, as (field path, masked URL), for `security.require_tls`.
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (field, value) in [
            ("endpoint_url", self.endpoint_url.as_deref()),
            ("queue_url", Some(self.queue_url.as_str())),
            ("dlq_queue_url", self.dlq_queue_url.as_deref()),
        ] {
            if let Some(v) = value
                && v.trim().to_ascii_lowercase().starts_with("http://")
            {
                out.push((join(path, field), crate::secret::mask_url_credentials(v)));
            }
        }
        out
    }
}

fn is_whole_seconds(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

/// A queue reference is either an http(s) URL or a bare queue name.
fn check_queue_ref(value: &str, at: String, problems: &mut ConfigErrors) {
    let value = value.trim();
    if value.contains("://") {
        match url::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => problems.push(at, format!("scheme must be https:// or http://, got {}://", u.scheme())),
            Err(e) => problems.push(
                at,
                format!("not a URL ({e}): {}", crate::secret::mask_url_credentials(value)),
            ),
        }
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        problems.push(
            at,
            "must be a queue URL or a queue name (letters, digits, '-', '_', optional .fifo suffix)",
        );
    }
}

impl Validate for SqsSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.queue_url.trim().is_empty() {
            problems.push(join(path, "queue_url"), "required");
        } else {
            check_queue_ref(&self.queue_url, join(path, "queue_url"), problems);
        }
        if self.region.trim().is_empty() {
            problems.push(join(path, "region"), "required");
        }
        if let Some(endpoint) = &self.endpoint_url {
            match url::Url::parse(endpoint.trim()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => problems.push(
                    join(path, "endpoint_url"),
                    format!(
                        "must be an http:// or https:// URL, got {}",
                        crate::secret::mask_url_credentials(endpoint)
                    ),
                ),
            }
        }
        if let Some(dlq) = &self.dlq_queue_url {
            if dlq.trim().is_empty() {
                problems.push(
                    join(path, "dlq_queue_url"),
                    "must not be empty (leave it out to use no DLQ)",
                );
            } else {
                check_queue_ref(dlq, join(path, "dlq_queue_url"), problems);
                if dlq.trim() == self.queue_url.trim() {
                    problems.push(join(path, "dlq_queue_url"), "must differ from queue_url");
                }
            }
        }
        if self.pollers == 0 || self.pollers > 64 {
            problems.push(
                join(path, "pollers"),
                format!("must be between 1 and 64, got {}", self.pollers),
            );
        }
        if self.wait_time > SQS_MAX_WAIT {
            problems.push(join(path, "wait_time"), "SQS allows at most 20s");
        } else if !is_whole_seconds(self.wait_time) {
            problems.push(join(path, "wait_time"), "SQS takes whole seconds");
        }
        if !(1..=10).contains(&self.max_messages) {
            problems.push(
                join(path, "max_messages"),
                format!("SQS allows 1 to 10, got {}", self.max_messages),
            );
        }
        if let Some(v) = self.visibility_timeout {
            if v > SQS_MAX_VISIBILITY {
                problems.push(join(path, "visibility_timeout"), "SQS allows at most 12h");
            } else if v < Duration::from_secs(1) {
                problems.push(
                    join(path, "visibility_timeout"),
                    "must be at least 1s (0s would redeliver every message while it is being handled)",
                );
            } else if !is_whole_seconds(v) {
                problems.push(join(path, "visibility_timeout"), "SQS takes whole seconds");
            }
        }
        if self.max_visibility_extension > SQS_MAX_VISIBILITY {
            problems.push(
                join(path, "max_visibility_extension"),
                "SQS keeps a message invisible at most 12h after its receipt",
            );
        }
        if self.nack_delay > SQS_MAX_VISIBILITY {
            problems.push(join(path, "nack_delay"), "SQS allows at most 12h");
        } else if !is_whole_seconds(self.nack_delay) {
            problems.push(join(path, "nack_delay"), "SQS takes whole seconds");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    #[test]
    fn a_minimal_config_is_valid() {
        let cfg = SqsSourceConfig {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/orders".into(),
            region: "eu-west-1".into(),
            ..SqsSourceConfig::default()
        };
        assert!(
            problems_found(&cfg, "source").is_empty(),
            "{:?}",
            problems_found(&cfg, "source")
        );
        assert!(!cfg.is_fifo());
        let by_name = SqsSourceConfig {
            queue_url: "orders.fifo".into(),
            ..cfg
        };
        assert!(problems_found(&by_name, "source").is_empty());
        assert!(by_name.is_fifo());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let cfg = SqsSourceConfig {
            queue_url: String::new(),
            region: " ".into(),
            endpoint_url: Some("localhost:4566".into()),
            dlq_queue_url: Some("ftp://x/y".into()),
            pollers: 0,
            wait_time: Duration::from_millis(1500),
            max_messages: 11,
            visibility_timeout: Some(Duration::ZERO),
            max_visibility_extension: Duration::from_secs(13 * 3600),
            nack_delay: Duration::from_millis(10),
            ..SqsSourceConfig::default()
        };
        let problems = problems_found(&cfg, "source");
        for path in [
            "source.queue_url: required",
            "source.region: required",
            "source.endpoint_url:",
            "source.dlq_queue_url: scheme",
            "source.pollers:",
            "source.wait_time: SQS takes whole seconds",
            "source.max_messages:",
            "source.visibility_timeout: must be at least 1s",
            "source.max_visibility_extension:",
            "source.nack_delay: SQS takes whole seconds",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(path)),
                "{path} missing in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 10, "{problems:#?}");
    }

    #[test]
    fn plaintext_endpoints_are_named_and_masked() {
        let cfg = SqsSourceConfig {
            queue_url: "http://127.0.0.1:4566/000000000000/q".into(),
            region: "us-east-1".into(),
            endpoint_url: Some("http://user:hunter2@127.0.0.1:4566".into()),
            ..SqsSourceConfig::default()
        };
        let found = cfg.plaintext_endpoints("source");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "source.endpoint_url");
        assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);
        assert_eq!(found[1].0, "source.queue_url");
    }
}
