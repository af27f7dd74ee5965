//! The chaos suite: `qt run` processes sharing a Redis idempotency store and a PostgreSQL
//! ledger consume a broker (RabbitMQ, Kafka or SQS) while their processes and services are killed, hung and restarted;
//! a verifier then checks from the agent's log, the ledger and the dead-letter queue that
//! nothing was lost, nothing ran twice after its claim was completed, and every outcome has
//! its record. Every service runs in a container (see `services.rs`).
//!
//! Run by `cargo xtask chaos [SCENARIO]`, which sets up the container engine and the images
//! first; the tests are ignored otherwise. Each scenario prints its report row as a JSON line
//! and appends it to the file `QT_CHAOS_REPORT` names; `QT_CHAOS_SHORT=1` runs a shorter
//! version (fewer messages) for CI.

// The scenario's progress is printed for `cargo test` to show.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod brokers;
mod run;
mod services;
mod verify;

use std::time::Duration;

use brokers::Broker;
use run::{Fault, Scenario};

fn rabbitmq(name: &'static str, fault: Fault) -> Scenario {
    Scenario::new(name, Broker::Rabbitmq, fault)
}

fn kafka(name: &'static str, fault: Fault) -> Scenario {
    Scenario::new(name, Broker::Kafka, fault)
}

fn sqs(name: &'static str, fault: Fault) -> Scenario {
    Scenario::new(name, Broker::Sqs, fault)
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_qt_sigkill_loses_nothing_and_runs_nothing_twice() {
    rabbitmq(
        "rabbitmq/qt-sigkill",
        Fault::KillQt {
            every: Duration::from_secs(3),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_qt_sigterm_drains_under_load_lose_nothing() {
    rabbitmq(
        "rabbitmq/qt-sigterm",
        Fault::DrainQt {
            every: Duration::from_secs(4),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_broker_paused_10s_loses_nothing() {
    rabbitmq("rabbitmq/broker-pause", Fault::PauseBroker(Duration::from_secs(10))).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_broker_restarted_loses_nothing() {
    rabbitmq("rabbitmq/broker-restart", Fault::RestartBroker).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_broker_killed_loses_nothing() {
    rabbitmq("rabbitmq/broker-kill", Fault::KillBroker).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_redis_paused_fail_closed_runs_nothing_twice() {
    rabbitmq(
        "rabbitmq/redis-pause-fail-closed",
        Fault::PauseRedis(Duration::from_secs(10)),
    )
    .on_store_error("fail_closed")
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_redis_killed_fail_open_loses_nothing() {
    rabbitmq("rabbitmq/redis-kill-fail-open", Fault::KillRedis)
        .on_store_error("fail_open")
        .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_ledger_paused_acks_nothing_before_its_record() {
    rabbitmq("rabbitmq/ledger-pause", Fault::PauseLedger(Duration::from_secs(10))).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn rabbitmq_poison_flood_keeps_good_traffic_flowing() {
    rabbitmq("rabbitmq/poison-flood", Fault::None).poison_percent(10).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_qt_sigkill_loses_nothing_and_runs_nothing_twice() {
    // Longer apart than the group's session timeout (6 s): members killed more often keep
    // the whole group rebalancing (see docs/reliability.md).
    kafka(
        "kafka/qt-sigkill",
        Fault::KillQt {
            every: Duration::from_secs(8),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_qt_sigterm_drains_under_load_lose_nothing() {
    kafka(
        "kafka/qt-sigterm",
        Fault::DrainQt {
            every: Duration::from_secs(4),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_broker_paused_10s_loses_nothing() {
    kafka("kafka/broker-pause", Fault::PauseBroker(Duration::from_secs(10))).run();
}

// Nisshi keeps its data in an S3 bucket on moto for these two, so that the topics and the
// group's offsets outlive the broker's process (see services.rs).

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_broker_restarted_loses_nothing() {
    kafka("kafka/broker-restart", Fault::RestartBroker).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_broker_killed_loses_nothing() {
    kafka("kafka/broker-kill", Fault::KillBroker).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_redis_paused_fail_closed_runs_nothing_twice() {
    kafka(
        "kafka/redis-pause-fail-closed",
        Fault::PauseRedis(Duration::from_secs(10)),
    )
    .on_store_error("fail_closed")
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_redis_killed_fail_open_loses_nothing() {
    kafka("kafka/redis-kill-fail-open", Fault::KillRedis)
        .on_store_error("fail_open")
        .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_ledger_paused_acks_nothing_before_its_record() {
    kafka("kafka/ledger-pause", Fault::PauseLedger(Duration::from_secs(10))).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn kafka_poison_flood_keeps_good_traffic_flowing() {
    kafka("kafka/poison-flood", Fault::None).poison_percent(10).run();
}

// SQS (moto): no broker restart or kill, since moto keeps its queues in memory and a restart
// loses them (see docs/reliability.md).

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_qt_sigkill_loses_nothing_and_runs_nothing_twice() {
    sqs(
        "sqs/qt-sigkill",
        Fault::KillQt {
            every: Duration::from_secs(3),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_qt_sigterm_drains_under_load_lose_nothing() {
    sqs(
        "sqs/qt-sigterm",
        Fault::DrainQt {
            every: Duration::from_secs(4),
        },
    )
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_broker_paused_10s_loses_nothing() {
    sqs("sqs/broker-pause", Fault::PauseBroker(Duration::from_secs(10))).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_redis_paused_fail_closed_runs_nothing_twice() {
    sqs(
        "sqs/redis-pause-fail-closed",
        Fault::PauseRedis(Duration::from_secs(10)),
    )
    .on_store_error("fail_closed")
    .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_redis_killed_fail_open_loses_nothing() {
    sqs("sqs/redis-kill-fail-open", Fault::KillRedis)
        .on_store_error("fail_open")
        .run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_ledger_paused_acks_nothing_before_its_record() {
    sqs("sqs/ledger-pause", Fault::PauseLedger(Duration::from_secs(10))).run();
}

#[test]
#[ignore = "run by `cargo xtask chaos`: needs a container engine"]
fn sqs_poison_flood_keeps_good_traffic_flowing() {
    sqs("sqs/poison-flood", Fault::None).poison_percent(10).run();
}
