//! Keeping configured credentials out of every line the adapter writes.
//!
//! librdkafka's log lines and error strings are built from its own state; with `debug`
//! enabled they can echo configuration, SASL exchanges or broker URLs. Everything the
//! adapter logs or returns as an error passes through [`Redactor::redact`] first.

use std::fmt;
use std::sync::Arc;

use qt_core::config::KafkaSourceConfig;
use qt_core::secret::{REDACTED, mask_url_credentials};

/// Masks URL credentials and every configured secret value.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<[String]>,
}

impl Redactor {
    /// Collects the secrets of a source configuration: the SASL password, the TLS key
    /// password and the value of every option whose name looks secret.
    pub fn from_config(cfg: &KafkaSourceConfig) -> Self {
        let mut secrets: Vec<String> = Vec::new();
        if let Some(sasl) = &cfg.sasl {
            secrets.push(sasl.password.expose().to_owned());
        }
        if let Some(pw) = cfg.ssl.as_ref().and_then(|s| s.key_password.as_ref()) {
            secrets.push(pw.expose().to_owned());
        }
        for (k, v) in cfg.options.iter().chain(cfg.producer_options.iter()) {
            if KafkaSourceConfig::is_secret_option(k) {
                secrets.push(v.clone());
            }
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            secrets: secrets.into(),
        }
    }

    /// The text with URL credentials and configured secrets replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = mask_url_credentials(text);
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
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
        let r = Redactor::from_config(&cfg);
        let line = "auth failed for svc with s3cret-pass via https://u:p4ss@idp/x token oauth-abc fetch 1";
        let out = r.redact(line);
        assert!(!out.contains("s3cret-pass"), "{out}");
        assert!(!out.contains("p4ss"), "{out}");
        assert!(!out.contains("oauth-abc"), "{out}");
        assert!(out.contains("svc") && out.contains("fetch 1"), "{out}");
        assert!(!format!("{r:?}").contains("s3cret"));
    }
}
