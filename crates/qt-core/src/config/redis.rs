//! `idempotency.store` with `type: redis`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::secret::{Secret, SecretUrl};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://host:6379/0` or `rediss://` for TLS. Credentials may be in the URL; they are
    /// masked whenever it is printed. Required.
    #[serde(default)]
    pub url: SecretUrl,
    /// Overrides the URL's user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Overrides the URL's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Connections in the pool. Default 16.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Default 5s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default 2s.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
}

fn default_pool_size() -> usize {
    16
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(2)
}

impl RedisStoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            username: None,
            password: None,
            pool_size: default_pool_size(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.url.scheme().as_deref() == Some("rediss")
    }
}

impl Validate for RedisStoreConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        match self.url.scheme().as_deref() {
            Some("redis" | "rediss") => {}
            Some(other) => problems.push(
                join(path, "url"),
                format!("scheme must be redis:// or rediss://, got {other}://"),
            ),
            None => problems.push(join(path, "url"), format!("not a URL: {}", self.url)),
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            problems.push(
                join(path, "pool_size"),
                format!("must be between 1 and 1024, got {}", self.pool_size),
            );
        }
        if self.connect_timeout.is_zero() {
            problems.push(join(path, "connect_timeout"), "must be longer than 0s");
        }
        if self.command_timeout.is_zero() {
            problems.push(join(path, "command_timeout"), "must be longer than 0s");
        }
    }
}
