//! A configured SASL password never reaches a log line or an error, even with librdkafka's
//! security debugging on and authentication failing. Own test binary: it installs the
//! global tracing subscriber that captures librdkafka's lines from its threads.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use qt_adapter_kafka::{KafkaAdapter, KafkaPublisher};
use qt_core::config::{KafkaSaslConfig, KafkaSecurityProtocol, SaslMechanism};
use qt_core::{OutgoingMessage, Publisher, QueueAdapter, Secret};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_password_never_appears_in_logs_or_errors() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .init();

    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let brokers = brokers();
    let mut cfg = source(&brokers, &[&unique("redact")], &unique("g"));
    cfg.security_protocol = KafkaSecurityProtocol::SaslPlaintext;
    cfg.sasl = Some(KafkaSaslConfig {
        mechanism: SaslMechanism::Plain,
        username: "qt-redaction-user".into(),
        password: Secret::new(password.clone()),
    });
    cfg.connect_timeout = Duration::from_secs(3);
    cfg.delivery_timeout = Duration::from_secs(3);
    // As much of librdkafka's own output as it will give.
    cfg.options
        .insert("debug".into(), "security,broker,protocol,conf,generic,metadata".into());
    cfg.producer_options
        .insert("debug".into(), "security,broker,conf,msg".into());

    let mut outputs = vec![format!("{cfg:?}"), printed_config(&cfg)];

    // The broker does not do SASL here, so authentication fails and connect gives up.
    let adapter = KafkaAdapter::new(&cfg, settings(8)).expect("adapter");
    outputs.push(format!("{adapter:?}"));
    let err = adapter.connect().await.expect_err("authentication cannot succeed");
    let lowered = err.to_string().to_ascii_lowercase();
    assert!(
        lowered.contains("sasl") || lowered.contains("authentication"),
        "the error says why: {err}"
    );
    outputs.push(err.to_string());
    outputs.push(format!("{err:?}"));
    outputs.push(format!("{:?}", adapter.health().await));

    let publisher = KafkaPublisher::new(&cfg, &settings(8)).expect("publisher");
    outputs.push(format!("{publisher:?}"));
    let sent = publisher
        .publish(OutgoingMessage {
            body: "x".into(),
            destination: Some(cfg.topics[0].clone()),
            ..OutgoingMessage::default()
        })
        .await;
    let publish_err = sent.expect_err("cannot deliver without authenticating");
    outputs.push(publish_err.to_string());
    outputs.push(format!("{publish_err:?}"));
    adapter.close().await.ok();
    drop(publisher);
    // librdkafka logs from its own threads; give the last lines a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = String::from_utf8_lossy(&capture.0.lock()).into_owned();
    assert!(logs.contains("librdkafka"), "librdkafka's lines were captured");
    assert!(
        logs.to_ascii_lowercase().contains("sasl"),
        "the SASL exchange was logged (so the test looked where a leak would be)"
    );
    assert!(
        logs.contains("qt-redaction-user") || logs.contains("PLAIN"),
        "security debug lines present"
    );
    assert!(!logs.contains(&password), "the password leaked into the logs");
    for out in outputs {
        assert!(!out.contains(&password), "the password leaked into: {out}");
    }
}

/// The masked form the configuration prints as in `qt validate`.
fn printed_config(cfg: &qt_core::config::KafkaSourceConfig) -> String {
    serde_json::to_string(cfg).expect("serializable")
}
