//! Redis idempotency store for qt: claims shared by every qt process that points at one
//! Redis, so a message key runs at most once per idempotency window across all of them
//! (requirement 6).
//!
//! ```no_run
//! # async fn example() -> Result<(), qt_core::StoreError> {
//! use std::time::Duration;
//! use qt_core::config::RedisStoreConfig;
//! use qt_core::{Claim, IdempotencyKey, IdempotencyStore};
//! use qt_idempotency_redis::RedisStore;
//!
//! let store = RedisStore::connect(&RedisStoreConfig::new("redis://127.0.0.1:6379"), "idempotency", false).await?;
//! let key = IdempotencyKey::new(Some("acme"), "order-42");
//! if let Claim::Acquired(token) = store.claim(&key, Duration::from_secs(300)).await? {
//!     // ... run the message ...
//!     store.complete(&token, Duration::from_secs(24 * 3600)).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Protocol
//!
//! A claim key (`<prefix>:<tenant>:<key>`, long keys hashed: [`keys`]) holds
//! `inflight:<token>` with the lease as TTL while a worker runs the message, then
//! `done:<token>` with the idempotency window as TTL. Claim, complete and release are Lua
//! scripts that take a whole batch of keys: each key is handled atomically, and a batch of
//! up to 256 keys is one `EVALSHA` (larger batches are split, and all parts go in one
//! pipeline), so a batch costs one round trip and Redis pays its per-call overhead once per
//! batch rather than once per message. Every token is 128 random bits from the OS-seeded
//! CSPRNG; complete and release act only when the stored token is the caller's, so a worker
//! whose lease expired (and whose key another worker claimed since) gets
//! [`qt_core::ClaimState::Lost`] and changes nothing.
//!
//! This needs one Redis endpoint: a standalone server, or a primary behind one address that
//! fails over. Redis Cluster is not supported: one script call carries keys of many hash
//! slots.
//!
//! The scripts are loaded on every new connection; a `NOSCRIPT` reply (Redis restarted,
//! failed over or flushed its scripts) reloads the script and resends only the calls that
//! did not run.
//!
//! # Failures
//!
//! Every operation is bounded by `connect_timeout` / `command_timeout` and fails with a
//! [`qt_core::StoreError`] naming it; the engine then applies `on_store_error`. A connection
//! that fails is dropped from the pool and the next operation opens a fresh one, so the
//! store recovers by itself when Redis comes back.
//!
//! What Redis did not confirm is not forgotten: a completion or release that failed, and
//! the claims of a batch whose answer was lost (Redis may have taken them), are kept and
//! sent again ahead of the next operation — in the same pipeline, so a claim made after
//! Redis is back already sees them — and by a background task meanwhile. Without this a
//! message that ran during an outage would stay `inflight` until its lease ended, and a
//! duplicate arriving after that would run it a second time. The details are in the
//! `debts` module; [`RedisStore::owed`] says how many are outstanding.
//!
//! [`RedisStore::connect`] fails when Redis cannot be reached at start (fail fast on a wrong
//! URL or password); after that the store rides out outages.
//!
//! # Durability
//!
//! Claims are as durable as Redis keeps them. A Redis restarted without persistence comes
//! back empty: every key completed before the restart can run again, and claims in flight
//! are forgotten. Where a restart must not repeat work, run Redis with the append-only file
//! (`appendonly yes`; `appendfsync always` loses nothing on a crash, `everysec` up to a
//! second), or with replication and failover. Keys expire on their own (lease or window),
//! so Redis needs no clean-up; with `maxmemory`, use a `volatile-*` eviction policy or
//! none, since an evicted done marker lets its key run again.
//!
//! # Security
//!
//! `rediss://` uses rustls with the system roots, or `ca_file`, and an optional client
//! certificate (`client_cert_file` / `client_key_file`). If the program has not chosen a
//! process-wide rustls crypto provider when the first TLS store connects, ring is installed
//! as the default. `security.require_tls` rejects `redis://`. Passwords (in the URL or the
//! `password` override) never appear in errors, logs or `Debug` output.
//!
//! Least privilege: the Redis user needs only these commands on the key prefix
//! (`idempotency` here):
//!
//! ```text
//! ACL SETUSER qt on >PASSWORD resetkeys ~idempotency:* resetchannels -@all +ping +evalsha +script|load +get +set +del
//! ```
//!
//! `AUTH`, `HELLO` and `CLIENT SETINFO` on connect need no grant (the last one's failure is
//! ignored); `SELECT` needs `+select` when the URL names a database other than 0.

mod connection;
mod debts;
mod errors;
pub mod keys;
mod scripts;
mod store;
mod token;

pub use keys::MAX_KEY_BYTES;
pub use store::RedisStore;
