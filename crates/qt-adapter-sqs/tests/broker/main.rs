//! The adapter against SQS: how each settlement lands, FIFO order, the visibility
//! heartbeat, pause, resume and backlog, and `qt dlq`'s sessions on a DLQ.
//!
//! Run against an SQS emulator (moto) at `QT_TEST_SQS_ENDPOINT` (default
//! `http://127.0.0.1:4566`; `cargo xtask services up` starts it). Every test works on its
//! own randomly named queues and deletes them at the end. moto is slow, so the tests
//! keep message counts small and every wait bounded.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod dlq;
mod fifo;
mod heartbeat;
mod lifecycle;
mod settle;
