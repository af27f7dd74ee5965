//! Services the machine runs before a session starts (Redis, RabbitMQ, PostgreSQL). If one has stopped,
//! it is started again with the same command the machine uses.

use anyhow::Result;

use super::Service;
use crate::cmd::run;

pub fn services() -> Vec<Service> {
    vec![
        Service {
            name: "redis",
            addr: "127.0.0.1:6379",
            env: ("QT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            ensure: start_redis,
        },
        Service {
            name: "rabbitmq",
            addr: "127.0.0.1:5672",
            env: ("QT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ensure: start_rabbitmq,
        },
        Service {
            name: "postgres",
            addr: "127.0.0.1:5432",
            env: ("QT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
            ensure: start_postgres,
        },
    ]
}

fn start_redis() -> Result<()> {
    run(
        "redis-server",
        &[
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
}

fn start_rabbitmq() -> Result<()> {
    run("rabbitmq-server", &["-detached"])
}

/// The distribution's PostgreSQL 15 cluster (trust authentication on 127.0.0.1, database
/// `test`), as the machine starts it.
fn start_postgres() -> Result<()> {
    run("pg_ctlcluster", &["15", "main", "start"])
}
