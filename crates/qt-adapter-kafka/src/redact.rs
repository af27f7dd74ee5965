//! Keeping configured credentials out of every line the adapter writes.
//!
//! librdkafka's log lines and error strings are built from its own state; with `debug`
//! enabled they can echo configuration, SASL exchanges or broker URLs. Everything the
//! adapter logs or returns as an error passes through [`Redactor::redact`](qt_core::redact::Redactor::redact) first.

use qt_core::config::KafkaSourceConfig;
use qt_core::redact::Redactor;

/// A redactor for the secrets of a source configuration: the SASL password, the TLS key
/// password and the value of every option whose name looks secret.
pub fn for_config(cfg: &KafkaSourceConfig) -> Redactor {
    let mut r = Redactor::default();
    if let Some(sasl) = &cfg.sasl {
        r.add(sasl.password.expose());
    }
    if let Some(pw) = cfg.ssl.as_ref().and_then(|s| s.key_password.as_ref()) {
        r.add(pw.expose());
    }
    for (k, v) in cfg.options.iter().chain(cfg.producer_options.iter()) {
        if KafkaSourceConfig::is_secret_option(k) {
            r.add(v.as_str());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use qt_core::config::{KafkaSaslConfig, SaslMechanism};
    use qt_core::secret::Secret;

    #[test]
    fn masks_configured_secrets_and_url_credentials() {
        let mut cfg = KafkaSourceConfig {
            sasl: Some(KafkaSaslConfig {
                mechanism: SaslMechanism::ScramSha256,
                username: "svc".into(),
                password: Secret::new("s3cret-pass"),
            }),
            ..KafkaSourceConfig::default()
        };
        cfg.options
            .insert("sasl.oauthbearer.client.secret".into(), "oauth-abc".into());
        cfg.options.insert("fetch.min.bytes".into(), "1".into());
        let r = for_config(&cfg);
        let line = "auth failed for svc with s3cret-pass via https://u:p4ss@idp/x token oauth-abc fetch 1";
        let out = r.redact(line);
        assert!(!out.contains("s3cret-pass"), "{out}");
        assert!(!out.contains("p4ss"), "{out}");
        assert!(!out.contains("oauth-abc"), "{out}");
        assert!(out.contains("svc") && out.contains("fetch 1"), "{out}");
        assert!(!format!("{r:?}").contains("s3cret"));
    }
}
