//! Writing: what goes in comes back out, a batch is all or nothing, and health follows
//! the writes.

use qt_core::{Health, Ledger, LedgerFilter, LedgerStatus};

use crate::support::{TestSchema, count, full, minimal, raw};

#[tokio::test]
async fn every_status_round_trips_with_all_optional_fields_set_and_unset() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let mut written = Vec::new();
    for (i, status) in LedgerStatus::ALL.into_iter().enumerate() {
        let i = i64::try_from(i).unwrap() * 10;
        written.push(minimal(&format!("min-{}", status.as_str()), status, i));
        written.push(full(&format!("full-{}", status.as_str()), status, i + 1));
    }
    ledger.record_batch(written.clone()).await.expect("batch written");

    let mut read = ledger.query(&LedgerFilter::default()).await.expect("query");
    // Newest first; the records were written oldest first.
    read.reverse();
    assert_eq!(read, written);
}

#[tokio::test]
async fn a_batch_is_stored_entirely_or_not_at_all() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let client = raw().await;
    // A constraint the last record of the batch breaks, so the COPY fails after the first
    // rows went in.
    client
        .batch_execute(&format!(
            "ALTER TABLE \"{}\".qt_ledger ADD CONSTRAINT no_poison CHECK (message_id <> 'poison')",
            schema.name
        ))
        .await
        .expect("add constraint");
    let batch = vec![
        minimal("a", LedgerStatus::Succeeded, 1),
        minimal("b", LedgerStatus::Failed, 2),
        minimal("poison", LedgerStatus::Succeeded, 3),
    ];
    let err = ledger.record_batch(batch).await.expect_err("the batch is refused");
    assert!(err.to_string().contains("no_poison"), "{err}");
    assert_eq!(
        count(&client, &schema.name).await,
        0,
        "no record of the failed batch is stored"
    );

    ledger
        .record_batch(vec![
            minimal("a", LedgerStatus::Succeeded, 1),
            minimal("b", LedgerStatus::Failed, 2),
        ])
        .await
        .expect("a clean batch is written");
    // Committed by the time record_batch returned: visible to another connection.
    assert_eq!(count(&client, &schema.name).await, 2);
}

#[tokio::test]
async fn health_is_unhealthy_while_writes_fail_and_healthy_after_the_next_success() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let client = raw().await;
    assert_eq!(ledger.health().await, Health::Healthy);
    ledger
        .record_batch(vec![minimal("before", LedgerStatus::Succeeded, 1)])
        .await
        .expect("write");

    let table = format!("\"{}\".qt_ledger", schema.name);
    client
        .batch_execute(&format!("ALTER TABLE {table} RENAME TO away"))
        .await
        .expect("rename");
    let err = ledger
        .record_batch(vec![minimal("during", LedgerStatus::Succeeded, 2)])
        .await
        .expect_err("the table is gone")
        .error;
    assert!(
        err.ledger.contains(&schema.name) && err.ledger.contains("127.0.0.1:5432"),
        "{err}"
    );
    assert!(
        err.reason.contains("qt_ledger") && err.reason.contains("does not exist"),
        "{err}"
    );
    match ledger.health().await {
        Health::Unhealthy(why) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("expected unhealthy, got {other:?}"),
    }

    client
        .batch_execute(&format!("ALTER TABLE \"{}\".away RENAME TO qt_ledger", schema.name))
        .await
        .expect("rename back");
    ledger
        .record_batch(vec![minimal("after", LedgerStatus::Succeeded, 3)])
        .await
        .expect("written again");
    assert_eq!(ledger.health().await, Health::Healthy);
    assert_eq!(count(&client, &schema.name).await, 2);
}

#[tokio::test]
async fn an_empty_batch_writes_nothing_and_succeeds() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    ledger.record_batch(Vec::new()).await.expect("nothing to write");
    assert_eq!(count(&raw().await, &schema.name).await, 0);
}

#[tokio::test]
async fn retention_deletes_only_records_finished_before_the_cutoff_in_bounded_chunks() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let batch: Vec<_> = (0..10)
        .map(|i| minimal(&format!("m{i}"), LedgerStatus::Succeeded, i))
        .collect();
    ledger.record_batch(batch).await.expect("write");
    let cutoff = crate::support::at(6);

    // Two statements of two rows: four of the six expired records.
    assert_eq!(ledger.delete_finished_before(cutoff, 2, 2).await.expect("delete"), 4);
    // The rest, and then nothing more.
    assert_eq!(ledger.delete_finished_before(cutoff, 2, 100).await.expect("delete"), 2);
    assert_eq!(ledger.delete_finished_before(cutoff, 2, 100).await.expect("delete"), 0);

    let left: Vec<String> = ledger
        .query(&LedgerFilter::default())
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(left, ["m9", "m8", "m7", "m6"]);
}

#[tokio::test]
async fn tls_require_writes_over_an_encrypted_connection() {
    let schema = TestSchema::new();
    let mut cfg = schema.config();
    let app = format!("qt_test_tls_{}", schema.name);
    cfg.url = qt_core::SecretUrl::new(format!("{}?application_name={app}", schema.url));
    cfg.tls = qt_core::config::PostgresTls::Require;
    let ledger = qt_ledger_postgres::PostgresLedger::connect(&cfg, true)
        .await
        .expect("the shared server offers TLS");
    ledger
        .record_batch(vec![minimal("over-tls", LedgerStatus::Succeeded, 1)])
        .await
        .expect("written");
    let encrypted: Vec<bool> = raw()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .expect("look at the ledger's connections")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!encrypted.is_empty() && encrypted.iter().all(|e| *e), "{encrypted:?}");
    assert_eq!(count(&raw().await, &schema.name).await, 1);
}

#[tokio::test]
async fn a_ledger_with_retention_deletes_expired_records_in_the_background_from_the_start() {
    let schema = TestSchema::new();
    let writer = schema.ledger().await;
    let mut recent = minimal("recent", LedgerStatus::Succeeded, 0);
    recent.finished_at = chrono::Utc::now();
    // `minimal` records finished in 2025: long expired under a one-hour retention.
    writer
        .record_batch(vec![
            minimal("old-1", LedgerStatus::Succeeded, 1),
            minimal("old-2", LedgerStatus::Failed, 2),
            recent,
        ])
        .await
        .expect("write");

    let mut cfg = schema.config();
    cfg.retention = Some(std::time::Duration::from_secs(3600));
    let _with_retention = qt_ledger_postgres::PostgresLedger::connect(&cfg, false)
        .await
        .expect("connect");
    let client = raw().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(&client, &schema.name).await > 1 {
        assert!(std::time::Instant::now() < deadline, "the retention task did not run");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let left: Vec<String> = writer
        .query(&LedgerFilter::default())
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(left, ["recent"]);
}
