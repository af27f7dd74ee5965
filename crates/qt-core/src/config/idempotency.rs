//! `idempotency`: at most one run per key within a window (requirement 6).

use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use super::redis::RedisStoreConfig;

/// What to do when the idempotency store cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Run the message without dedup, log a warning and count
    /// `qt_idempotency_errors_total`: availability over exactly-once.
    FailOpen,
    /// Requeue the message after `store_error_delay` and run nothing: no double runs, at
    /// the price of stalling while the store is down.
    #[default]
    FailClosed,
}

/// Where claims are kept; `type` picks the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoreConfig {
    /// In this process only: right for a single instance and for tests. Forgets every key on
    /// restart. Each key of the window is kept as a 128-bit keyed fingerprint of (tenant, key)
    /// in a 32-byte slot, at most three quarters full: 43 to 85 bytes of memory per key as the
    /// table fills and grows (a million keys: under 80 MB).
    Memory(MemoryStoreConfig),
    /// In Redis, shared by every process of the trigger.
    Redis(RedisStoreConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Memory(MemoryStoreConfig::default())
    }
}

/// `idempotency.store` with `type: memory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryStoreConfig {
    /// Keys the store makes room for when it starts; set it to the keys one window holds
    /// on a busy instance. `0`: the table grows as keys arrive.
    ///
    /// A store that runs out of room doubles its table, copying every key into fresh memory
    /// while claims wait, several times on the way to a busy window's size; sizing it for
    /// the window avoids that. The room costs 43 to 85 bytes a key (32-byte slots, at most
    /// three quarters full, in tables of powers of two), written once as the store is made
    /// (a million keys: about 64 MB, in a fraction of a second), so claims never wait for
    /// the kernel to fault its pages in.
    #[serde(default)]
    pub capacity: usize,
}

/// Most keys `capacity` may ask room for (hundreds of gigabytes): a typo should fail
/// validation, not the start.
const MAX_MEMORY_CAPACITY: usize = 1 << 32;

/// `idempotency`: at most one run per key within a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Claim each message's key before running it, so a redelivered or duplicate message
    /// is recorded as `duplicate` instead of run again. `false` runs every delivery.
    #[serde(default = "default_true", alias = "enable_dedup")]
    #[schemars(extend("x-aliases" = ["enable_dedup"]))]
    pub enabled: bool,
    /// How long a processed key is remembered: a duplicate arriving later runs again.
    #[serde(default = "default_window", with = "humantime_serde", alias = "idempotency_window")]
    #[schemars(with = "HumanDuration")]
    #[schemars(extend("x-aliases" = ["idempotency_window"]))]
    pub window: Duration,
    /// How long a claim protects a key while its message runs; a worker that dies lets the
    /// key go after this. Keep it above the longest expected run.
    #[serde(default = "default_lease", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub lease: Duration,
    /// Prefix of every key: keys are `<prefix>:<tenant>:<key>`. Give triggers that share a
    /// Redis store and must not see each other's keys different prefixes.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Where claims are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// What to do when the store cannot be reached.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// How long a message requeued under `on_store_error: fail_closed` waits before it
    /// comes back.
    #[serde(default = "default_store_error_delay", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub store_error_delay: Duration,
}

fn default_true() -> bool {
    true
}
fn default_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_lease() -> Duration {
    Duration::from_secs(300)
}
fn default_prefix() -> String {
    "idempotency".to_owned()
}
fn default_store_error_delay() -> Duration {
    Duration::from_secs(5)
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            enabled: default_true(),
            window: default_window(),
            lease: default_lease(),
            key_prefix: default_prefix(),
            store: StoreConfig::default(),
            on_store_error: OnStoreError::default(),
            store_error_delay: default_store_error_delay(),
        }
    }
}

impl Validate for IdempotencyConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.window.is_zero() {
            problems.push(join(path, "window"), "must be longer than 0s");
        }
        if self.lease.is_zero() {
            problems.push(join(path, "lease"), "must be longer than 0s");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            problems.push(
                join(path, "key_prefix"),
                format!("must be non-empty without spaces, got {:?}", self.key_prefix),
            );
        }
        match &self.store {
            StoreConfig::Redis(r) => r.validate(&join(path, "store"), problems),
            StoreConfig::Memory(m) => {
                if m.capacity > MAX_MEMORY_CAPACITY {
                    problems.push(
                        join(&join(path, "store"), "capacity"),
                        format!("must be at most {MAX_MEMORY_CAPACITY} keys, got {}", m.capacity),
                    );
                }
            }
        }
    }
}
