//! An unreachable or refusing database: errors name the ledger, never the password, and
//! health says what is wrong.

use std::time::{Duration, Instant};

use qt_core::config::{PostgresLedgerConfig, PostgresTls};
use qt_core::{Health, Ledger, LedgerStatus};
use qt_ledger_postgres::PostgresLedger;

use crate::support::minimal;

const PASSWORD: &str = "pg-s3cret-4711";

fn unreachable_config() -> PostgresLedgerConfig {
    let mut cfg = PostgresLedgerConfig::new(format!("postgres://qt:{PASSWORD}@127.0.0.1:1/qt"));
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.statement_timeout = Duration::from_secs(2);
    cfg
}

#[tokio::test]
async fn connecting_to_an_unreachable_database_fails_naming_it_without_the_password() {
    let started = Instant::now();
    let err = PostgresLedger::connect(&unreachable_config(), false)
        .await
        .expect_err("nothing listens on port 1")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by connect_timeout"
    );
    assert!(err.contains("postgres://qt:***@127.0.0.1:1/qt"), "{err}");
    assert!(
        err.contains("migrate the ledger table") && err.contains("refused"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn writing_to_an_unreachable_database_fails_and_reports_unhealthy() {
    let ledger = PostgresLedger::open(&unreachable_config(), false)
        .await
        .expect("open is lazy");
    let err = ledger
        .record_batch(vec![minimal("m", LedgerStatus::Succeeded, 1)])
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.records.len(), 1, "the batch is handed back");
    let err = err.error;
    assert!(err.ledger.contains("127.0.0.1:1"), "{err}");
    assert!(
        err.reason.contains("write records") && err.reason.contains("refused"),
        "{err}"
    );
    let Health::Unhealthy(why) = ledger.health().await else {
        panic!("expected unhealthy")
    };
    assert!(why.contains("127.0.0.1:1") && why.contains("refused"), "{why}");
    for printed in [err.to_string(), format!("{err:?}"), why, format!("{ledger:?}")] {
        assert!(!printed.contains(PASSWORD), "{printed}");
    }
}

#[tokio::test]
async fn a_database_refusing_the_connection_is_named_without_the_password() {
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:5432/qt_no_such_database_{}",
        std::process::id()
    );
    let err = PostgresLedger::connect(&PostgresLedgerConfig::new(url), false)
        .await
        .expect_err("the database does not exist")
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("postgres://postgres:***@127.0.0.1:5432"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn configuration_problems_are_all_reported_before_connecting() {
    let mut cfg = PostgresLedgerConfig::new(format!("postgres://qt:{PASSWORD}@127.0.0.1:5432/test"));
    cfg.table = "drop table".into();
    cfg.pool_size = 0;
    let err = PostgresLedger::connect(&cfg, true)
        .await
        .expect_err("invalid")
        .to_string();
    for expected in [
        "ledger.table",
        "ledger.pool_size",
        "ledger.url: security.require_tls is set",
    ] {
        assert!(err.contains(expected), "missing {expected} in {err}");
    }
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn verify_full_refuses_a_server_certificate_it_cannot_trust() {
    // The shared server's certificate is the distribution's self-signed "snakeoil" one,
    // issued for the machine's host name, not for 127.0.0.1.
    let schema = crate::support::TestSchema::new();
    let mut cfg = schema.config();
    cfg.tls = PostgresTls::VerifyFull;
    let err = PostgresLedger::connect(&cfg, true)
        .await
        .expect_err("the certificate is not trusted for 127.0.0.1")
        .to_string();
    assert!(err.contains("certificate") || err.contains("TLS"), "{err}");
}
