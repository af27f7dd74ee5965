//! Values that must never reach a log line, an error message or printed configuration.
//!
//! [`Secret`] holds a credential (password, token, key). [`SecretUrl`] holds an endpoint URL
//! that may embed credentials (`amqp://user:pass@host`); it prints with the password masked
//! so the host stays visible for operators while the credential does not.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every redacted value prints as.
pub const REDACTED: &str = "***";

/// A credential. `Debug`, `Display` and `Serialize` all print [`REDACTED`]; the only way to
/// the value is [`Secret::expose`], which makes every use greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call it only at the point where the value goes to the service that
    /// needs it (a connection string, an auth header), never into a log or error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "title": "secret",
            "description": "A credential: shown as *** wherever it is printed. Give it through an environment \
                            variable (`${NAME}`) rather than writing it in the file.",
        })
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A URL whose userinfo password (and any `password`/`token`/`secret`-like query value) is
/// masked whenever it is printed or serialized.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The full URL, credentials included, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with credentials masked: safe for logs, errors and printed config.
    pub fn masked(&self) -> String {
        mask_url_credentials(&self.0)
    }

    /// The scheme (`amqp`, `rediss`, `https`...), lower-cased, if the value parses as a URL.
    pub fn scheme(&self) -> Option<String> {
        url::Url::parse(&self.0).ok().map(|u| u.scheme().to_ascii_lowercase())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

impl JsonSchema for SecretUrl {
    fn schema_name() -> Cow<'static, str> {
        "SecretUrl".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "title": "URL",
            "description": "A URL that may hold credentials (`scheme://user:password@host`): the password is \
                            shown as *** wherever the URL is printed.",
        })
    }
}

impl From<&str> for SecretUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

const SENSITIVE_QUERY_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "apikey",
    "api_key",
    "access_key",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
];

/// Masks credentials in every URL found in `text`: the password of `scheme://user:pass@host`
/// and the values of sensitive query parameters. Text that is not a URL is returned as is,
/// which makes this safe to apply to whole error messages and log lines.
pub fn mask_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // Walk back to the start of the scheme: just past the last character that cannot
        // be part of one (which may be several bytes long).
        let scheme_start = rest[..pos]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        out.push_str(&rest[..scheme_start]);
        let url_part = &rest[scheme_start..];
        let end = url_part
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '>' || c == '<')
            .unwrap_or(url_part.len());
        out.push_str(&mask_one_url(&url_part[..end]));
        rest = &url_part[end..];
    }
    out.push_str(rest);
    out
}

fn mask_one_url(candidate: &str) -> String {
    let Some(sep) = candidate.find("://") else {
        return candidate.to_owned();
    };
    let (scheme, after) = candidate.split_at(sep + 3);
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let host = &authority[at + 1..];
            match userinfo.find(':') {
                Some(colon) => format!("{}:{REDACTED}@{host}", &userinfo[..colon]),
                // A lone userinfo component is usually a token (`https://TOKEN@host`).
                None if !userinfo.is_empty() => format!("{REDACTED}@{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    format!("{scheme}{authority}{}", mask_query(tail))
}

fn mask_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query_and_fragment) = tail.split_at(q + 1);
    let (query, fragment) = match query_and_fragment.find('#') {
        Some(h) => query_and_fragment.split_at(h),
        None => (query_and_fragment, ""),
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SENSITIVE_QUERY_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                format!("{k}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", masked.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_masked_host_kept() {
        let u = SecretUrl::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert_eq!(u.masked(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(format!("{u:?}"), "\"amqp://guest:***@127.0.0.1:5672/%2f\"");
        assert_eq!(u.scheme().as_deref(), Some("amqp"));
    }

    /// A multi-byte character right before a scheme once made the scheme's start fall
    /// inside it, and masking panicked (found by `redact::known_secrets_never_survive`).
    #[test]
    fn a_scheme_after_a_multibyte_character_is_masked() {
        assert_eq!(mask_url_credentials("aaaa¡://"), "aaaa¡://");
        assert_eq!(
            mask_url_credentials("café→redis://u:s3cr3t@h:6379 ¥"),
            "café→redis://u:***@h:6379 ¥"
        );
    }

    #[test]
    fn urls_inside_text_are_masked() {
        let text = "failed to connect to redis://:s3cr3t@localhost:6379/0 (refused); \
                    retry https://tok3n@example.com/x?token=abc&x=1";
        let masked = mask_url_credentials(text);
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert!(!masked.contains("tok3n"), "{masked}");
        assert!(!masked.contains("abc"), "{masked}");
        assert!(masked.contains("localhost:6379"));
        assert!(masked.contains("x=1"));
    }

    #[test]
    fn text_without_urls_is_unchanged() {
        assert_eq!(mask_url_credentials("plain: a@b c:d"), "plain: a@b c:d");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Redaction: whatever the password, no printed form of the URL or secret contains it.
        #[test]
        fn no_password_survives_printing(
            scheme in "(amqp|amqps|redis|rediss|https|http|postgres)",
            user in "[a-z]{1,8}",
            password in "[A-Za-z0-9_~!$*.-]{6,24}",
            host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
            port in 1u16..65535,
        ) {
            let raw = format!("{scheme}://{user}:{password}@{host}:{port}/vhost");
            let url = SecretUrl::new(raw.clone());
            let secret = Secret::new(password.clone());
            let outputs = [
                format!("{url}"),
                format!("{url:?}"),
                serde_json::to_string(&url).unwrap(),
                format!("{secret}"),
                format!("{secret:?}"),
                serde_json::to_string(&secret).unwrap(),
                mask_url_credentials(&format!("error: cannot reach {raw}: timed out")),
            ];
            for out in outputs {
                prop_assert!(!out.contains(&password), "{out} leaks {password}");
            }
        }
    }
}
