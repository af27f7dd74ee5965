//! Scrubbing credentials out of text bound for a log line or an error.
//!
//! Masking URLs by shape ([`mask_url_credentials`]) is not enough on its own: client
//! libraries echo configuration, SASL exchanges or a percent-decoded password in their own
//! messages, outside any URL. A [`Redactor`] also knows the secret values it was given and
//! removes them wherever they appear.

use std::fmt;

use crate::secret::{REDACTED, mask_url_credentials};

/// Masks URL credentials, then replaces every known secret value with `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for these secret values; empty ones are ignored.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut r = Self::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    /// Adds one more value to remove.
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.is_empty() || self.secrets.contains(&secret) {
            return;
        }
        self.secrets.push(secret);
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with URL credentials masked and every known secret replaced.
    pub fn redact(&self, text: impl fmt::Display) -> String {
        let mut out = mask_url_credentials(&text.to_string());
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Shows how many secrets it holds, never what they are.
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
    use proptest::prelude::*;

    #[test]
    fn a_secret_containing_another_is_replaced_whole() {
        let r = Redactor::new(["pass".to_owned(), "password-1".to_owned(), String::new()]);
        assert_eq!(r.redact("x password-1 y pass z"), "x *** y *** z");
        assert_eq!(format!("{r:?}"), "Redactor { secrets: 2 }");
    }

    #[test]
    fn url_credentials_are_masked_without_being_known() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("cannot reach amqp://u:hunter2@h:5672/v"),
            "cannot reach amqp://u:***@h:5672/v"
        );
    }

    proptest! {
        /// Redaction: a known secret never survives, whatever text surrounds it.
        #[test]
        fn known_secrets_never_survive(secret in "[A-Za-z0-9!$%^&*]{4,24}", before in ".{0,40}", after in ".{0,40}") {
            let r = Redactor::new([secret.clone()]);
            let out = r.redact(format!("{before}{secret}{after}"));
            prop_assert!(!out.contains(&secret), "{}", out);
        }
    }
}
