//! The broker password never appears in errors, health reasons, `Debug` output or log lines
//! (captured at TRACE for every target, lapin included).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use lapin::types::FieldTable;
use qt_adapter_rabbitmq::{RabbitMqAdapter, RabbitMqPublisher};
use qt_core::{AdapterError, AdapterSettings, Health, OutgoingMessage, Publisher, QueueAdapter};

const PASSWORD: &str = "Sup3r-S3cret-Pw-7781";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, from every thread.
fn logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
    .clone()
}

fn assert_clean(what: &str, text: &str, password: &str) {
    assert!(!text.contains(password), "{what} leaks the password: {text}");
}

fn assert_logs_clean(password: &str) {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    assert!(!text.is_empty(), "the log capture saw nothing");
    for line in text.lines() {
        assert_clean("log line", line, password);
    }
}

async fn connect_error(url: &str) -> (AdapterError, String, Health) {
    let adapter = RabbitMqAdapter::new(&config(url, "qt-test-redaction"), settings(8)).unwrap();
    let debug = format!("{adapter:?}");
    let err = adapter.connect().await.expect_err("connect should fail");
    (err, debug, adapter.health().await)
}

#[tokio::test]
async fn connection_errors_and_debug_output_never_show_the_password() {
    let _logs = logs();
    let _broker = Broker::connect().await;
    let user = url::Url::parse(&broker_url()).unwrap().username().to_owned();
    let wrong_password = url_with("%2f", Some((&user, PASSWORD))).replace("/%252f", "/%2f");
    let refused = format!("amqp://{user}:{PASSWORD}@127.0.0.1:1/%2f");
    let tls_to_plain_port = wrong_password.replacen("amqp://", "amqps://", 1);

    for (case, url) in [
        ("wrong password", &wrong_password),
        ("refused port", &refused),
        ("amqps to a plaintext port", &tls_to_plain_port),
    ] {
        let (err, debug, health) = connect_error(url).await;
        assert_clean(case, &err.to_string(), PASSWORD);
        assert_clean(case, &format!("{err:?}"), PASSWORD);
        assert_clean(case, &debug, PASSWORD);
        assert_clean(case, &format!("{health:?}"), PASSWORD);
        assert!(matches!(err, AdapterError::Connect { .. }), "{case}: {err:?}");
        assert!(
            err.to_string().contains("127.0.0.1"),
            "{case}: the host stays visible: {err}"
        );

        let publisher = RabbitMqPublisher::new(&config(url, "qt-test-redaction"), &settings(8)).unwrap();
        assert_clean(case, &format!("{publisher:?}"), PASSWORD);
        let err = publisher
            .publish(OutgoingMessage {
                body: "x".into(),
                ..OutgoingMessage::default()
            })
            .await
            .expect_err("publish should fail");
        assert_clean(case, &err.to_string(), PASSWORD);
    }

    let invalid = format!("amqp://{user}:{PASSWORD}@[::1:5672/%2f");
    let err = RabbitMqAdapter::new(&config(&invalid, "q"), settings(8)).unwrap_err();
    assert!(
        matches!(&err, AdapterError::Config { field, .. } if field == "source.url"),
        "{err:?}"
    );
    assert_clean("invalid URL", &err.to_string(), PASSWORD);
    assert_logs_clean(PASSWORD);
}

#[tokio::test]
async fn require_tls_refuses_plaintext_and_names_the_field() {
    let mut settings = AdapterSettings::new("it", 1, 8);
    settings.require_tls = true;
    let plain = format!("amqp://app:{PASSWORD}@mq.example.com:5672/prod");
    let err = RabbitMqAdapter::new(&config(&plain, "q"), settings.clone()).unwrap_err();
    match &err {
        AdapterError::Config { field, reason } => {
            assert_eq!(field, "source.url");
            assert!(
                reason.contains("require_tls") && reason.contains("amqps://"),
                "{reason}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_clean("require_tls error", &err.to_string(), PASSWORD);
    assert!(RabbitMqPublisher::new(&config(&plain, "q"), &settings).is_err());

    let tls = format!("amqps://app:{PASSWORD}@mq.example.com:5671/prod");
    let adapter = RabbitMqAdapter::new(&config(&tls, "q"), settings).expect("amqps passes require_tls");
    assert_clean("Debug", &format!("{adapter:?}"), PASSWORD);
}

/// While reconnects fail (the password was rotated at the broker), the health reason and
/// the warnings say why without ever showing the configured password; once the password is
/// right again the adapter recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reconnects_never_show_the_password() {
    let _logs = logs();
    let user = unique("user");
    let password = format!("{PASSWORD}-{}", &user[user.len() - 6..]);
    let vhost = TestVhost::create(Some((&user, &password)));
    let url = url_with(&vhost.name, Some((&user, &password)));
    let broker = Broker::connect_to(&url).await;
    let q = unique("redact");
    broker.declare(&q, FieldTable::default()).await;

    let adapter = RabbitMqAdapter::new(&config(&url, &q), settings(8)).unwrap();
    adapter.connect().await.unwrap();
    assert_eq!(adapter.health().await, Health::Healthy);

    rabbitmqctl(&["change_password", &user, "rotated-elsewhere"]);
    vhost.close_all_connections();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        if let Health::Unhealthy(reason) = adapter.health().await
            && reason.contains("attempt")
        {
            break reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed reconnect was reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_clean("health reason", &reason, &password);
    assert!(
        reason.contains("ACCESS_REFUSED") || reason.contains("credentials"),
        "{reason}"
    );

    rabbitmqctl(&["change_password", &user, &password]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while adapter.health().await != Health::Healthy {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {:?}",
            adapter.health().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    adapter.close().await.unwrap();
    assert_logs_clean(&password);
    assert_logs_clean(PASSWORD);
}
