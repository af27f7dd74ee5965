//! TLS with a private CA: `verify-full` trusts `ca_file` and presents the client
//! certificate; a server that wants a client certificate refuses a ledger without one.

use std::time::Duration;

use qt_core::config::{PostgresLedgerConfig, PostgresTls};
use qt_core::{Ledger, LedgerFilter, LedgerStatus};
use qt_ledger_postgres::PostgresLedger;

use crate::private_pg::{PrivatePostgres, TestCerts};
use crate::support::minimal;

fn tls_config(pg: &PrivatePostgres, certs: &TestCerts) -> PostgresLedgerConfig {
    // `localhost`: the name the test server certificate is issued for.
    let mut cfg = PostgresLedgerConfig::new(format!("postgres://postgres@localhost:{}/postgres", pg.port));
    cfg.tls = PostgresTls::VerifyFull;
    cfg.ca_file = Some(certs.ca.clone());
    cfg.client_cert_file = Some(certs.client_cert.clone());
    cfg.client_key_file = Some(certs.client_key.clone());
    cfg.connect_timeout = Duration::from_secs(3);
    cfg
}

#[tokio::test]
async fn verify_full_with_a_private_ca_and_a_client_certificate_writes_and_reads() {
    let certs = TestCerts::generate();
    let mut pg = PrivatePostgres::init(Some(&certs));
    pg.start().await;
    let ledger = PostgresLedger::connect(&tls_config(&pg, &certs), true)
        .await
        .expect("connects over verified TLS");
    let record = minimal("over-verified-tls", LedgerStatus::Succeeded, 1);
    ledger.record_batch(vec![record.clone()]).await.expect("written");
    assert_eq!(ledger.query(&LedgerFilter::default()).await.expect("query"), [record]);
}

#[tokio::test]
async fn a_server_that_wants_a_client_certificate_refuses_a_ledger_without_one() {
    let certs = TestCerts::generate();
    let mut pg = PrivatePostgres::init(Some(&certs));
    pg.start().await;
    let mut cfg = tls_config(&pg, &certs);
    cfg.client_cert_file = None;
    cfg.client_key_file = None;
    let err = PostgresLedger::connect(&cfg, true)
        .await
        .expect_err("no client certificate")
        .to_string();
    assert!(err.contains(&format!("localhost:{}", pg.port)), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn verify_full_refuses_a_server_whose_ca_is_not_trusted() {
    let certs = TestCerts::generate();
    let other = TestCerts::generate();
    let mut pg = PrivatePostgres::init(Some(&certs));
    pg.start().await;
    let mut cfg = tls_config(&pg, &certs);
    cfg.ca_file = Some(other.ca.clone());
    let err = PostgresLedger::connect(&cfg, true)
        .await
        .expect_err("the server's CA is not the trusted one")
        .to_string();
    // Both test CAs have the same name, so rustls finds the wrong key rather than no issuer.
    assert!(
        err.contains("TLS handshake") && err.contains("invalid peer certificate"),
        "{err}"
    );
}
