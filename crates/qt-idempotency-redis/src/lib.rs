//! Redis idempotency store for qt: claims shared by every qt process that points at one
//! Redis, so a message key runs at most once per idempotency window across all of them
//! (DESIGN §6, requirement 6).
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
//! scripts, so each is atomic and answers in one round trip; the batched forms send one
//! pipeline of `EVALSHA` per batch. Every token is 128 random bits from the OS-seeded CSPRNG; complete and
//! release act only when the stored token is the caller's, so a worker whose lease expired
//! (and whose key another worker claimed since) gets [`qt_core::ClaimState::Lost`] and
//! changes nothing.
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
//! store recovers by itself when Redis comes back. When a batch fails as a whole after
//! Redis may have run part of it (a timeout, a connection lost mid-reply), the claims it may
//! have taken stay until their lease ends: the affected keys answer `InFlight` meanwhile,
//! which delays them but never runs them twice. A batch in which only some keys failed
//! (an error reply) releases the claims it did take before returning the error.
//!
//! [`RedisStore::connect`] fails when Redis cannot be reached at start (fail fast on a wrong
//! URL or password); after that the store rides out outages.
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
mod errors;
pub mod keys;
mod scripts;
mod store;
mod token;

pub use keys::MAX_KEY_BYTES;
pub use store::RedisStore;
