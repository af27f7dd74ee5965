//! The schema: created at start, left alone when up to date, safe to race.

use qt_ledger_postgres::PostgresLedger;
use qt_ledger_postgres::migrations::MIGRATIONS;

use crate::support::{TestSchema, raw};

async fn tables_in(schema: &str) -> Vec<String> {
    raw()
        .await
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
            &[&schema],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn applied_in(schema: &str) -> Vec<i32> {
    raw()
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".qt_ledger_migrations ORDER BY version"),
            &[],
        )
        .await
        .expect("read migrations")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn connecting_creates_the_schema_the_table_and_its_indexes() {
    let schema = TestSchema::new();
    let _ledger = schema.ledger().await;
    assert_eq!(tables_in(&schema.name).await, ["qt_ledger", "qt_ledger_migrations"]);
    let indexes: Vec<String> = raw()
        .await
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND indexname LIKE 'qt_ledger_%_idx' \
             ORDER BY indexname",
            &[&schema.name],
        )
        .await
        .expect("list indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "qt_ledger_dedup_key_idx",
            "qt_ledger_finished_idx",
            "qt_ledger_message_id_idx",
            "qt_ledger_status_finished_idx",
            "qt_ledger_tenant_finished_idx",
            "qt_ledger_trace_id_idx",
        ]
    );
}

#[tokio::test]
async fn migrating_an_up_to_date_table_is_a_no_op() {
    let schema = TestSchema::new();
    let ledger = PostgresLedger::open(&schema.config(), false).await.expect("open");
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(ledger.migrate().await.expect("first run"), all);
    assert_eq!(ledger.migrate().await.expect("second run"), Vec::<i32>::new());
    assert_eq!(applied_in(&schema.name).await, all);
}

#[tokio::test]
async fn ledgers_migrating_at_once_apply_each_migration_exactly_once() {
    let schema = TestSchema::new();
    let cfg = schema.config();
    let mut ledgers = Vec::new();
    for _ in 0..8 {
        ledgers.push(PostgresLedger::open(&cfg, false).await.expect("open"));
    }
    let results = futures::future::join_all(ledgers.iter().map(PostgresLedger::migrate)).await;
    let mut applied = Vec::new();
    for r in results {
        applied.extend(r.expect("every concurrent migration succeeds"));
    }
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all, "each version applied by exactly one of them");
    assert_eq!(applied_in(&schema.name).await, all);
    assert_eq!(tables_in(&schema.name).await, ["qt_ledger", "qt_ledger_migrations"]);
}

#[tokio::test]
async fn a_table_migrated_by_a_newer_version_is_refused() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    raw()
        .await
        .batch_execute(&format!(
            "INSERT INTO \"{}\".qt_ledger_migrations (version, name) VALUES (9999, 'future')",
            schema.name
        ))
        .await
        .expect("insert");
    let err = ledger.migrate().await.expect_err("refused").to_string();
    assert!(err.contains("9999") && err.contains("newer qt"), "{err}");
}

#[tokio::test]
async fn a_custom_table_name_is_used_for_the_table_its_indexes_and_its_migrations() {
    let schema = TestSchema::new();
    let mut cfg = schema.config();
    cfg.table = "Audit_2026".into();
    PostgresLedger::connect(&cfg, false).await.expect("connect");
    assert_eq!(tables_in(&schema.name).await, ["Audit_2026", "Audit_2026_migrations"]);
}
