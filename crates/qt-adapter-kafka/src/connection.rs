//! Mapping the typed source configuration onto librdkafka settings.

use qt_core::config::{ConfigErrors, ConfigProblem, KafkaSourceConfig, Validate};
use qt_core::{AdapterError, AdapterSettings};
use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;

/// Where the Kafka section lives in a qt configuration file, for error paths.
pub const SOURCE_PATH: &str = "source";

/// Checks the configuration the way `qt validate` does, plus `require_tls`, so library users
/// who build a config in code get the same errors as operators.
pub fn check(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> Result<(), AdapterError> {
    into_result(&problems(cfg, settings).problems)
}

/// Every problem of the section, `require_tls` included.
pub fn problems(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> ConfigErrors {
    let mut problems = ConfigErrors::default();
    cfg.validate(SOURCE_PATH, &mut problems);
    if settings.require_tls && !cfg.security_protocol.is_tls() {
        problems.push(
            format!("{SOURCE_PATH}.security_protocol"),
            format!(
                "security.require_tls is set but {} is {}; use ssl or sasl_ssl",
                cfg.brokers.join(","),
                cfg.security_protocol.as_librdkafka()
            ),
        );
    }
    problems
}

/// One error naming the first field, listing all problems.
pub fn into_result(problems: &[ConfigProblem]) -> Result<(), AdapterError> {
    match problems.first() {
        None => Ok(()),
        Some(first) => Err(AdapterError::Config {
            field: first.path.clone(),
            reason: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// Brokers, security and logging: what consumer, producer and admin clients share.
pub fn base(cfg: &KafkaSourceConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","));
    c.set("client.id", client_id);
    c.set("security.protocol", cfg.security_protocol.as_librdkafka());
    if let Some(sasl) = &cfg.sasl {
        c.set("sasl.mechanisms", sasl.mechanism.as_librdkafka());
        c.set("sasl.username", &sasl.username);
        c.set("sasl.password", sasl.password.expose());
    }
    if let Some(ssl) = cfg.ssl.as_ref().filter(|_| cfg.security_protocol.is_tls()) {
        if let Some(p) = &ssl.ca_location {
            c.set("ssl.ca.location", p.display().to_string());
        }
        if let Some(p) = &ssl.certificate_location {
            c.set("ssl.certificate.location", p.display().to_string());
        }
        if let Some(p) = &ssl.key_location {
            c.set("ssl.key.location", p.display().to_string());
        }
        if let Some(pw) = &ssl.key_password {
            c.set("ssl.key.password", pw.expose());
        }
    }
    c.set_log_level(log_level());
    c
}

/// qt's default for librdkafka's `fetch.queue.backoff.ms` (librdkafka's own is 1000).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "100";

/// The consumer: qt owns offset storage and commits; everything else can be tuned.
pub fn consumer(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> ClientConfig {
    let mut c = base(cfg, &format!("qt-{}", settings.trigger_name));
    c.set("group.id", &cfg.consumer_group);
    // qt stores only finished prefixes; librdkafka commits what is stored every
    // commit_interval, on revocation and on close, and reports failures as events.
    c.set("enable.auto.commit", "true");
    c.set("enable.auto.offset.store", "false");
    let interval_ms = cfg.commit_interval.as_millis().clamp(1, i32::MAX as u128);
    c.set("auto.commit.interval.ms", interval_ms.to_string());
    // Defaults qt prefers; an operator's `options` override them. librdkafka's prefetch
    // (`queued.min.messages`, `queued.max.messages.kbytes`) keeps its defaults: qt's own
    // buffer is what max_in_flight bounds. A small `queued.min.messages` starves the
    // consumer, because librdkafka backs off a partition's next fetch for
    // `fetch.queue.backoff.ms` whenever one response filled its queue past it; lower
    // both together when memory matters more than throughput.
    let defaults = [
        // A new group reads a topic from its start: a trigger should not skip events that
        // arrived before its first deployment.
        ("auto.offset.reset", "earliest"),
        // Statistics feed health (broker connection states) and backlog (consumer lag).
        ("statistics.interval.ms", "1000"),
        // librdkafka's 1s default idles a consumer that drains its prefetched queue in
        // less than a second (ARCHITECTURE.md, hot-path rule 4). The backoff only delays
        // the re-check of a full queue (no broker request), so a shorter one costs nothing.
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ];
    for (k, v) in defaults {
        if !cfg.options.contains_key(k) {
            c.set(k, v);
        }
    }
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

/// The producer used for dead letters, requeues and `qt send`.
pub fn producer(cfg: &KafkaSourceConfig, client_id: &str) -> ClientConfig {
    let mut c = base(cfg, client_id);
    let timeout_ms = cfg.delivery_timeout.as_millis().clamp(1, i32::MAX as u128);
    c.set("message.timeout.ms", timeout_ms.to_string());
    // Retries after a lost acknowledgement must neither duplicate nor reorder dead letters.
    if !cfg.producer_options.contains_key("enable.idempotence") {
        c.set("enable.idempotence", "true");
    }
    for (k, v) in &cfg.producer_options {
        c.set(k, v);
    }
    c
}

/// A short-lived helper client (metadata, committed offsets of a group, admin requests).
pub fn helper(cfg: &KafkaSourceConfig, client_id: &str) -> ClientConfig {
    base(cfg, client_id)
}

/// librdkafka only formats lines the subscriber will keep.
fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::config::{KafkaSaslConfig, KafkaSecurityProtocol, KafkaSslConfig, SaslMechanism};
    use qt_core::secret::Secret;

    fn cfg() -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: vec!["k1:9092".into(), "k2:9092".into()],
            topics: vec!["orders".into()],
            consumer_group: "g".into(),
            ..KafkaSourceConfig::default()
        }
    }

    #[test]
    fn require_tls_refuses_plaintext_and_names_the_field() {
        let mut settings = AdapterSettings::new("t", 4, 16);
        settings.require_tls = true;
        for protocol in [KafkaSecurityProtocol::Plaintext, KafkaSecurityProtocol::SaslPlaintext] {
            let mut c = cfg();
            c.security_protocol = protocol;
            if protocol.is_sasl() {
                c.sasl = Some(KafkaSaslConfig {
                    mechanism: SaslMechanism::Plain,
                    username: "u".into(),
                    password: Secret::new("hunter2-pw"),
                });
            }
            let err = check(&c, &settings).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("source.security_protocol"), "{text}");
            assert!(!text.contains("hunter2-pw"), "{text}");
        }
        let mut c = cfg();
        c.security_protocol = KafkaSecurityProtocol::Ssl;
        check(&c, &settings).unwrap();
    }

    #[test]
    fn invalid_config_reports_every_problem() {
        let c = KafkaSourceConfig::default();
        let err = check(&c, &AdapterSettings::new("t", 1, 1)).unwrap_err();
        let text = err.to_string();
        for field in ["source.brokers", "source.topics", "source.consumer_group"] {
            assert!(text.contains(field), "{text}");
        }
    }

    #[test]
    fn security_maps_to_librdkafka_keys() {
        let mut c = cfg();
        c.security_protocol = KafkaSecurityProtocol::SaslSsl;
        c.sasl = Some(KafkaSaslConfig {
            mechanism: SaslMechanism::ScramSha512,
            username: "svc".into(),
            password: Secret::new("pw"),
        });
        c.ssl = Some(KafkaSslConfig {
            ca_location: Some("/etc/ca.pem".into()),
            certificate_location: Some("/etc/c.pem".into()),
            key_location: Some("/etc/k.pem".into()),
            key_password: Some(Secret::new("kp")),
        });
        c.options.insert("session.timeout.ms".into(), "6000".into());
        c.options.insert("auto.offset.reset".into(), "latest".into());
        let k = consumer(&c, &AdapterSettings::new("orders", 4, 16));
        let expect = [
            ("bootstrap.servers", "k1:9092,k2:9092"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "pw"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.certificate.location", "/etc/c.pem"),
            ("ssl.key.location", "/etc/k.pem"),
            ("ssl.key.password", "kp"),
            ("group.id", "g"),
            ("client.id", "qt-orders"),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("session.timeout.ms", "6000"),
            ("auto.offset.reset", "latest"),
            ("fetch.queue.backoff.ms", "100"),
        ];
        for (key, value) in expect {
            assert_eq!(k.get(key), Some(value), "{key}");
        }
        // rdkafka's own Debug leaves credentials out.
        let printed = format!("{k:?}");
        assert!(!printed.contains("\"pw\"") && !printed.contains("\"kp\""), "{printed}");
        let p = producer(&c, "qt-orders-producer");
        assert_eq!(p.get("message.timeout.ms"), Some("30000"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("group.id"), None);
    }
}
