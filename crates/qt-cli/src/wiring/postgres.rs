//! `ledger: {type: postgres}`: records in a PostgreSQL table shared by every `qt` process
//! pointed at it.

use std::sync::Arc;

use qt_core::Ledger;
use qt_core::config::{Config, PostgresLedgerConfig};
use qt_ledger_postgres::PostgresLedger;

/// Connects and migrates the table at start, so a wrong URL, password, privilege or TLS
/// setting stops `qt run` at once instead of failing every batch; once running, the ledger
/// rides out PostgreSQL outages (batches are not acked meanwhile, and `/readyz` reports the
/// ledger unhealthy).
pub async fn ledger(cfg: &PostgresLedgerConfig, config: &Config) -> anyhow::Result<Arc<dyn Ledger>> {
    // The error names the ledger (password masked) and what failed; the caller adds that
    // this was setting up the ledger.
    let ledger = PostgresLedger::connect(cfg, config.security.require_tls).await?;
    tracing::info!(
        ledger = %ledger.name(),
        pool_size = cfg.pool_size,
        retention = ?cfg.retention,
        "using the PostgreSQL ledger"
    );
    Ok(Arc::new(ledger))
}

#[cfg(test)]
mod tests {
    use qt_core::config::{LedgerConfig, MockSourceConfig, SourceConfig};
    use qt_core::{LedgerFilter, LedgerStatus};

    use super::*;

    fn shared_url() -> String {
        std::env::var("QT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    fn config_with(ledger: PostgresLedgerConfig, require_tls: bool) -> Config {
        let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig::default()));
        config.ledger = LedgerConfig::Postgres(ledger);
        config.security.require_tls = require_tls;
        config
    }

    #[tokio::test]
    async fn the_ledger_is_connected_and_its_table_created_at_start() {
        let schema = format!("qt_cli_test_{}", std::process::id());
        let mut cfg = PostgresLedgerConfig::new(shared_url());
        cfg.schema = schema.clone();
        let config = config_with(cfg.clone(), false);
        let built = crate::wiring::ledger(&config).await;
        // Read back through a second handle before dropping the schema, whatever happened.
        let reader = PostgresLedger::open(&cfg, false).await.expect("open");
        let found = reader
            .query(&LedgerFilter {
                status: Some(LedgerStatus::Failed),
                ..Default::default()
            })
            .await;
        let (client, conn) = tokio_postgres::connect(&shared_url(), tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL is reachable");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await
            .expect("drop the test schema");
        assert!(
            built.expect("built").is_some(),
            "a postgres ledger is built, not left to the engine"
        );
        assert_eq!(found.expect("the table exists"), Vec::new());
    }

    #[tokio::test]
    async fn require_tls_refuses_a_plaintext_ledger_without_leaking_the_password() {
        let config = config_with(PostgresLedgerConfig::new("postgres://qt:pg-pw-31@127.0.0.1:1/qt"), true);
        let e = format!(
            "{:#}",
            crate::wiring::ledger(&config)
                .await
                .expect_err("refused before connecting")
        );
        assert!(e.contains("ledger.url") && e.contains("require_tls"), "{e}");
        assert!(!e.contains("pg-pw-31"), "{e}");
    }

    #[tokio::test]
    async fn memory_and_jsonl_ledgers_are_left_to_the_engine() {
        let mut config = config_with(PostgresLedgerConfig::new(shared_url()), false);
        config.ledger = LedgerConfig::Memory;
        assert!(
            crate::wiring::ledger(&config)
                .await
                .expect("nothing to build")
                .is_none()
        );
        config.ledger = LedgerConfig::default();
        assert!(
            crate::wiring::ledger(&config)
                .await
                .expect("nothing to build")
                .is_none()
        );
    }
}
