//! The adapter when things fail: a consumer that dies holding messages, and an endpoint
//! that stops answering.
//!
//! Run against an SQS emulator (moto) at `QT_TEST_SQS_ENDPOINT` (default
//! `http://127.0.0.1:4566`; `cargo xtask services up` starts it). Every test works on its
//! own randomly named queues and deletes them at the end. moto is slow, so the tests
//! keep message counts small and every wait bounded.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod crash;
mod health;
