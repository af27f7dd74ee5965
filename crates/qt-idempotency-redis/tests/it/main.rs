//! Integration tests of the Redis idempotency store.
//!
//! Most run against the shared Redis (`QT_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`;
//! `cargo xtask services up` starts it), each on its own random key prefix. Tests that stop,
//! pause, password-protect or TLS-wrap Redis start a private `redis-server` on a free port
//! and never touch the shared one.

mod concurrency;
mod faults;
mod security;
mod semantics;
mod support;
