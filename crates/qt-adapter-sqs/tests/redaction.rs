//! `require_tls` and keeping credentials out of everything printed.

#[allow(dead_code)]
mod common;

use qt_adapter_sqs::{SqsAdapter, SqsPublisher};
use qt_core::{AdapterError, QueueAdapter};

use common::*;

#[tokio::test]
async fn require_tls_rejects_http_endpoints_naming_the_field() {
    let cfg = source("http://127.0.0.1:4566/000000000000/orders");
    let mut settings = settings(4);
    settings.require_tls = true;

    let err = SqsAdapter::with_credentials(&cfg, settings.clone(), credentials())
        .await
        .expect_err("plaintext endpoint under require_tls");
    assert!(matches!(err, AdapterError::Config { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("source.endpoint_url"), "{text}");
    assert!(text.contains("source.queue_url"), "{text}");
    assert!(text.contains("require_tls"), "{text}");

    let err = SqsPublisher::with_credentials(&cfg, &settings, credentials())
        .await
        .expect_err("the publisher checks too");
    assert!(err.to_string().contains("source.endpoint_url"), "{err}");

    let mut tls = cfg.clone();
    tls.endpoint_url = Some("https://sqs.us-east-1.amazonaws.com".to_owned());
    tls.queue_url = "https://sqs.us-east-1.amazonaws.com/000000000000/orders".to_owned();
    SqsAdapter::with_credentials(&tls, settings, credentials())
        .await
        .expect("https endpoints pass");
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET_ACCESS_KEY, ACCESS_KEY_ID, "url-password-42"] {
        assert!(!text.contains(secret), "{what} leaks {secret}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_appears_in_debug_output_or_errors() {
    let endpoint = require_emulator();
    // An endpoint with userinfo, as someone might paste it.
    let with_password = endpoint.replacen("://", "://qt:url-password-42@", 1);

    let mut cfg = source("qt-no-such-queue");
    cfg.endpoint_url = Some(with_password);
    let adapter = SqsAdapter::with_credentials(&cfg, settings(4), credentials())
        .await
        .unwrap();
    assert_no_secret("adapter Debug", &format!("{adapter:?}"));
    let err = adapter.connect().await.expect_err("the queue does not exist");
    assert_no_secret("connect error", &err.to_string());
    assert_no_secret("connect error Debug", &format!("{err:?}"));

    let publisher = SqsPublisher::with_credentials(&cfg, &settings(1), credentials())
        .await
        .unwrap();
    assert_no_secret("publisher Debug", &format!("{publisher:?}"));

    // An unreachable endpoint: the error chain of a failed dispatch.
    let mut down = source("http://127.0.0.1:9/000000000000/q");
    down.endpoint_url = Some("http://qt:url-password-42@127.0.0.1:9".to_owned());
    let adapter = SqsAdapter::with_credentials(&down, settings(4), credentials())
        .await
        .unwrap();
    let err = adapter.connect().await.expect_err("nothing listens on port 9");
    assert!(matches!(err, AdapterError::Connect { .. }), "{err:?}");
    assert_no_secret("unreachable error", &err.to_string());
    assert_no_secret("unreachable error Debug", &format!("{err:?}"));
    assert_no_secret("health", &format!("{:?}", adapter.health().await));
}
