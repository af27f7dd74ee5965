//! Message headers and the header names qt itself reads and writes.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Default header carrying the event name.
pub const EVENT_NAME: &str = "x-event-name";
/// Default header carrying the tenant id.
pub const TENANT_ID: &str = "x-tenant-id";
/// Default header carrying the dedup key.
pub const DEDUP_KEY: &str = "x-dedup-key";
/// W3C trace context header; when present its trace id is continued.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state, passed on to agents with the trace it belongs to.
pub const TRACESTATE: &str = "tracestate";
/// The delivery attempt qt gives a message it hands back to the broker for another try:
/// `2` after the first requeue, and so on (a message without it is on its first attempt,
/// unless the broker counts more deliveries). `processing.max_requeues` counts by it.
pub const ATTEMPT: &str = "x-qt-attempt";
/// How many times `qt dlq replay` has put this message back on its queue.
pub const REPLAYS: &str = "x-qt-replays";

/// Headers qt adds to a dead-lettered message, beside the original headers.
pub mod dead_letter {
    pub const REASON: &str = "x-qt-dlq-reason";
    pub const ERROR_CLASS: &str = "x-qt-error-class";
    pub const ATTEMPTS: &str = "x-qt-attempts";
    pub const ORIGINAL_QUEUE: &str = "x-qt-original-queue";
    pub const ORIGINAL_PARTITION: &str = "x-qt-original-partition";
    pub const ORIGINAL_OFFSET: &str = "x-qt-original-offset";
    pub const ORIGINAL_MESSAGE_ID: &str = "x-qt-original-message-id";
    pub const FIRST_FAILURE_AT: &str = "x-qt-first-failure-at";
    pub const LAST_FAILURE_AT: &str = "x-qt-last-failure-at";

    /// Every dead-letter header: a message dead-lettered again (after a replay) has these
    /// replaced, so it carries one set of reasons.
    pub const ALL: [&str; 9] = [
        REASON,
        ERROR_CLASS,
        ATTEMPTS,
        ORIGINAL_QUEUE,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_MESSAGE_ID,
        FIRST_FAILURE_AT,
        LAST_FAILURE_AT,
    ];
}

/// Names qt reads on every message it handles. A header under one of these names or a
/// dead-letter header name (in this exact casing) shares the static name instead of
/// allocating its own.
const READ_ON_EVERY_MESSAGE: [&str; 5] = [EVENT_NAME, TENANT_ID, DEDUP_KEY, TRACEPARENT, ATTEMPT];

/// A header's name. Made from a `&str`, one of qt's well-known names is not copied: an
/// adapter turns every received header into a [`Headers`] entry, and the same few names
/// arrive on every message.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderName(Cow<'static, str>);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> Self {
        match READ_ON_EVERY_MESSAGE
            .iter()
            .chain(&dead_letter::ALL)
            .find(|known| **known == name)
        {
            Some(known) => Self(Cow::Borrowed(known)),
            None => Self(Cow::Owned(name.to_owned())),
        }
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}

impl From<HeaderName> for String {
    fn from(name: HeaderName) -> Self {
        name.0.into_owned()
    }
}

impl Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Ordered message headers. Lookups ignore ASCII case, as HTTP-style header names are
/// written in every casing by producers; the original casing is kept for re-publishing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "std::collections::BTreeMap<String, String>",
    into = "std::collections::BTreeMap<String, String>"
)]
pub struct Headers(Vec<(HeaderName, String)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// The first value under `name`, compared without ASCII case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header, keeping any existing value under the same name.
    pub fn append(&mut self, name: impl Into<HeaderName>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every value under `name` with one value.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
        self.0.push((name, value.into()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<HeaderName>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl From<std::collections::BTreeMap<String, String>> for Headers {
    fn from(map: std::collections::BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl From<Headers> for std::collections::BTreeMap<String, String> {
    fn from(headers: Headers) -> Self {
        headers.into_iter().collect()
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter =
        std::iter::Map<std::vec::IntoIter<(HeaderName, String)>, fn((HeaderName, String)) -> (String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().map(|(k, v)| (k.into(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_insert_replaces() {
        let mut h: Headers = [("X-Tenant-Id", "a")].into_iter().collect();
        assert_eq!(h.get("x-tenant-id"), Some("a"));
        h.insert("x-tenant-id", "b");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("X-TENANT-ID"), Some("b"));
        h.remove("x-TENANT-id");
        assert!(h.is_empty());
    }

    #[test]
    fn well_known_names_are_shared_and_others_kept_as_written() {
        let known = HeaderName::from(TENANT_ID);
        assert!(matches!(known.0, Cow::Borrowed(_)));
        let other_casing = HeaderName::from("X-Tenant-Id");
        assert!(matches!(other_casing.0, Cow::Owned(_)));
        assert_eq!(&*other_casing, "X-Tenant-Id");
        let mut h = Headers::new();
        h.append(TENANT_ID, "a");
        h.append("X-Custom", "b");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(TENANT_ID, "a"), ("X-Custom", "b")]);
        assert_eq!(
            h.into_iter().collect::<Vec<_>>(),
            vec![
                (TENANT_ID.to_owned(), "a".to_owned()),
                ("X-Custom".to_owned(), "b".to_owned())
            ]
        );
    }
}
