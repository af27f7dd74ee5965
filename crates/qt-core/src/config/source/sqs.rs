//! `source` with `type: sqs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::problems::{ConfigErrors, Validate, join};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsSourceConfig {
    /// Queue URL. Required. (`queue_name` is accepted as an alias.)
    #[serde(default, alias = "queue_name")]
    pub queue_url: String,
    /// AWS region. Required.
    #[serde(default)]
    pub region: String,
    /// Endpoint override for local emulators (e.g. `http://127.0.0.1:4566`). Default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Named profile from the shared AWS config. Default: the standard provider chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Dead letters are sent here. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_queue_url: Option<String>,
    /// Concurrent long-poll loops. Default 2.
    #[serde(default = "default_pollers")]
    pub pollers: usize,
    /// Long-poll wait per receive (0s..=20s). Default 20s.
    #[serde(default = "default_wait_time", with = "humantime_serde")]
    pub wait_time: Duration,
    /// Messages per receive (1..=10). Default 10.
    #[serde(default = "default_max_messages")]
    pub max_messages: i32,
    /// Visibility timeout asked for on receive. Default: the queue's own.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub visibility_timeout: Option<Duration>,
    /// Longest total time a message's visibility is extended while its handler runs.
    /// Default 12h (the SQS maximum).
    #[serde(default = "default_max_extension", with = "humantime_serde")]
    pub max_visibility_extension: Duration,
    /// How soon a nacked message becomes visible again. Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub nack_delay: Duration,
}

fn default_pollers() -> usize {
    2
}
fn default_wait_time() -> Duration {
    Duration::from_secs(20)
}
fn default_max_messages() -> i32 {
    10
}
fn default_max_extension() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl SqsSourceConfig {
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (field, value) in [
            ("endpoint_url", self.endpoint_url.as_deref()),
            ("queue_url", Some(self.queue_url.as_str())),
            ("dlq_queue_url", self.dlq_queue_url.as_deref()),
        ] {
            if let Some(v) = value {
                if v.to_ascii_lowercase().starts_with("http://") {
                    out.push((join(path, field), crate::secret::mask_url_credentials(v)));
                }
            }
        }
        out
    }
}

impl Validate for SqsSourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.queue_url.trim().is_empty() {
            problems.push(join(path, "queue_url"), "required");
        }
        if self.region.trim().is_empty() {
            problems.push(join(path, "region"), "required");
        }
        if self.pollers == 0 || self.pollers > 64 {
            problems.push(
                join(path, "pollers"),
                format!("must be between 1 and 64, got {}", self.pollers),
            );
        }
        if self.wait_time > Duration::from_secs(20) {
            problems.push(join(path, "wait_time"), "SQS allows at most 20s");
        }
        if !(1..=10).contains(&self.max_messages) {
            problems.push(
                join(path, "max_messages"),
                format!("SQS allows 1 to 10, got {}", self.max_messages),
            );
        }
        if let Some(v) = self.visibility_timeout {
            if v > Duration::from_secs(12 * 3600) {
                problems.push(join(path, "visibility_timeout"), "SQS allows at most 12h");
            }
        }
        if self.nack_delay > Duration::from_secs(12 * 3600) {
            problems.push(join(path, "nack_delay"), "SQS allows at most 12h");
        }
    }
}
