//! `idempotency.store` with `type: redis`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::secret::{Secret, SecretUrl};

/// `idempotency.store` with `type: redis`: claims kept in Redis, shared by every process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://host:6379/0` or `rediss://` for TLS. Credentials may be in the URL; they are
    /// masked whenever it is printed. `redis://` is refused under `security.require_tls`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub url: SecretUrl,
    /// Redis 6+ ACL user, overriding the URL's user name. Needs `password`. Unset: the URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password, overriding the URL's; a secret. Write `${REDIS_PASSWORD}` rather than the
    /// value. Unset: the URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Connections in the pool. Each is multiplexed, so a few carry many concurrent
    /// claims. 1 to 1024.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Bound on opening one connection (TCP, TLS handshake, AUTH, script loading).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub connect_timeout: Duration,
    /// Bound on every command round trip; an operation that takes longer fails with a
    /// timeout naming it (and `on_store_error` applies).
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub command_timeout: Duration,
    /// PEM CA bundle trusted for `rediss://` instead of the system roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for `rediss://` servers that require client certificates
    /// (`tls-auth-clients yes`). Needs `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
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
    /// A store at `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            username: None,
            password: None,
            pool_size: default_pool_size(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    /// Whether the URL asks for TLS (`rediss://`).
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
            None if self.url.expose().trim().is_empty() => problems.push(join(path, "url"), "required"),
            None => problems.push(join(path, "url"), format!("not a URL: {}", self.url)),
        }
        if self.username.is_some() && self.password.is_none() {
            problems.push(
                join(path, "username"),
                "needs `password` too (Redis authenticates a user name only together with its password)",
            );
        }
        if self.password.as_ref().is_some_and(Secret::is_empty) {
            problems.push(join(path, "password"), "is empty; remove it or set a value");
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
        let tls_files = [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ];
        if !self.is_tls() {
            for (field, value) in tls_files {
                if value.is_some() {
                    problems.push(join(path, field), "only used with a rediss:// url");
                }
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => problems.push(join(path, "client_key_file"), "required with client_cert_file"),
            (None, Some(_)) => problems.push(join(path, "client_cert_file"), "required with client_key_file"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    #[test]
    fn defaults_are_valid() {
        assert!(problems_found(&RedisStoreConfig::new("redis://127.0.0.1:6379"), "idempotency.store").is_empty());
        assert!(
            problems_found(
                &RedisStoreConfig::new("rediss://cache.example.com:6380/1"),
                "idempotency.store"
            )
            .is_empty()
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut cfg = RedisStoreConfig::new("redis://127.0.0.1:6379");
        cfg.username = Some("app".into());
        cfg.pool_size = 0;
        cfg.connect_timeout = Duration::ZERO;
        cfg.command_timeout = Duration::ZERO;
        cfg.ca_file = Some("ca.pem".into());
        cfg.client_cert_file = Some("client.pem".into());
        let found = problems_found(&cfg, "idempotency.store");
        for expected in [
            "idempotency.store.username: needs `password` too",
            "idempotency.store.pool_size: must be between 1 and 1024, got 0",
            "idempotency.store.connect_timeout: must be longer than 0s",
            "idempotency.store.command_timeout: must be longer than 0s",
            "idempotency.store.ca_file: only used with a rediss:// url",
            "idempotency.store.client_cert_file: only used with a rediss:// url",
            "idempotency.store.client_key_file: required with client_cert_file",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), 7, "{found:#?}");
    }

    #[test]
    fn url_problems_are_named() {
        assert_eq!(
            problems_found(&RedisStoreConfig::new(""), "idempotency.store"),
            ["idempotency.store.url: required"]
        );
        assert_eq!(
            problems_found(&RedisStoreConfig::new("http://x"), "idempotency.store"),
            ["idempotency.store.url: scheme must be redis:// or rediss://, got http://"]
        );
        let bad = problems_found(&RedisStoreConfig::new("not a url"), "idempotency.store");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("idempotency.store.url: not a URL"), "{bad:?}");
    }

    #[test]
    fn password_never_prints() {
        let mut cfg = RedisStoreConfig::new("redis://app:urlpass99@127.0.0.1:6379/0");
        cfg.password = Some(Secret::new("overridepass77"));
        let printed = [format!("{cfg:?}"), serde_json::to_string(&cfg).expect("serializes")];
        for out in printed {
            assert!(!out.contains("urlpass99") && !out.contains("overridepass77"), "{out}");
            assert!(out.contains("127.0.0.1:6379"), "{out}");
        }
    }

    #[test]
    fn tls_files_are_accepted_with_rediss() {
        let mut cfg = RedisStoreConfig::new("rediss://127.0.0.1:6380");
        cfg.ca_file = Some("ca.pem".into());
        cfg.client_cert_file = Some("client.pem".into());
        cfg.client_key_file = Some("client.key".into());
        assert!(problems_found(&cfg, "idempotency.store").is_empty());
    }
}
