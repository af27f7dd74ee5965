//! A dead letter as `qt dlq` sees it: the broker's message, what qt's headers say of it, and
//! the tenant and event the configuration's extraction finds in it; and which letters a
//! command's filter selects.

use chrono::{DateTime, Utc};
use qt_core::config::Config;
use qt_core::extract::ExtractionRules;
use qt_core::parse::{Parser, parser_for};
use qt_core::{DeadLetterDetails, DlqMessage, SourceInfo};

use crate::cli::LetterFilter;

pub struct Letter {
    pub message: DlqMessage,
    pub details: DeadLetterDetails,
    pub tenant: Option<String>,
    pub event: Option<String>,
}

impl Letter {
    /// When it last failed, as far as anything on it says.
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        self.details
            .last_failure_at
            .or(self.details.first_failure_at)
            .or(self.message.timestamp)
    }
}

/// Reads letters the way the trigger of the same configuration reads messages.
pub struct Reader {
    adapter: &'static str,
    rules: ExtractionRules,
    parser: Box<dyn Parser>,
}

impl Reader {
    pub fn new(config: &Config) -> Self {
        Self {
            adapter: config.source.kind(),
            rules: config.processing.extraction.clone(),
            parser: parser_for(
                config.processing.parser,
                config.processing.max_message_bytes,
                config.processing.extraction.reads_payload(),
            ),
        }
    }

    /// A letter whose body does not parse, or whose extraction fails, has no tenant or event.
    pub fn read(&self, message: DlqMessage) -> Letter {
        let details = message.details();
        let mut source = SourceInfo::new(self.adapter, details.original_queue.clone().unwrap_or_default());
        source.key.clone_from(&message.key);
        let extracted = self
            .parser
            .parse(&message.body)
            .ok()
            .and_then(|payload| self.rules.extract(&message.headers, &payload, &source).ok());
        let (tenant, event) = extracted.map_or((None, None), |e| (e.tenant_id, e.event_name));
        Letter {
            message,
            details,
            tenant,
            event,
        }
    }
}

impl LetterFilter {
    pub fn matches(&self, letter: &Letter) -> bool {
        let reason = |wanted: &String| {
            letter
                .details
                .reason
                .as_deref()
                .is_some_and(|r| r.to_ascii_lowercase().contains(&wanted.to_ascii_lowercase()))
        };
        self.reason.as_ref().is_none_or(reason)
            && self.tenant.as_ref().is_none_or(|t| letter.tenant.as_ref() == Some(t))
            && self.event.as_ref().is_none_or(|e| letter.event.as_ref() == Some(e))
            && self
                .since
                .is_none_or(|since| letter.failed_at().is_some_and(|at| at >= since))
    }

    /// The filter in words, for a confirmation question.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.reason {
            parts.push(format!("reason containing {r:?}"));
        }
        if let Some(t) = &self.tenant {
            parts.push(format!("tenant {t:?}"));
        }
        if let Some(e) = &self.event {
            parts.push(format!("event {e:?}"));
        }
        if let Some(s) = &self.since {
            parts.push(format!("last failure at or after {}", s.to_rfc3339()));
        }
        if parts.is_empty() {
            "every dead letter".to_owned()
        } else {
            format!("every dead letter with {}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use qt_core::headers::dead_letter;

    use super::*;

    fn config() -> Config {
        let yaml = "name: t\nsource: {type: mock}\nagent: {targets: {a: {type: log}}, default_target: a}\n\
                    processing:\n  extraction:\n    tenant_id: [{header: x-tenant-id}]\n    \
                    event_name: [{pointer: /type}]\n";
        qt_core::config::load_str(yaml, |_| None).unwrap()
    }

    fn letter(tenant: &str, body: &str, reason: &str, last_failure: &str) -> Letter {
        let message = DlqMessage {
            seq: 0,
            id: "m".to_owned(),
            body: body.to_owned().into(),
            headers: [
                ("x-tenant-id", tenant),
                (dead_letter::REASON, reason),
                (dead_letter::LAST_FAILURE_AT, last_failure),
            ]
            .into_iter()
            .collect(),
            key: None,
            timestamp: None,
        };
        Reader::new(&config()).read(message)
    }

    #[test]
    fn the_tenant_and_event_come_from_the_configured_extraction() {
        let l = letter("acme", r#"{"type":"order.created"}"#, "boom", "2026-12-06T01:00:00Z");
        assert_eq!(l.tenant.as_deref(), Some("acme"));
        assert_eq!(l.event.as_deref(), Some("order.created"));
        let unparsable = letter("acme", "not json", "boom", "2026-12-06T01:00:00Z");
        assert_eq!(unparsable.event, None);
    }

    #[test]
    fn every_given_option_must_hold() {
        let l = letter(
            "acme",
            r#"{"type":"order.created"}"#,
            "Agent failed: Timeout",
            "2026-12-06T01:00:00Z",
        );
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let all = LetterFilter {
            reason: Some("timeout".to_owned()),
            tenant: Some("acme".to_owned()),
            event: Some("order.created".to_owned()),
            since: Some(at("2026-12-06T00:00:00Z")),
        };
        assert!(all.matches(&l));
        assert!(LetterFilter::default().matches(&l));
        for differs in [
            LetterFilter {
                reason: Some("refused".to_owned()),
                ..all.clone()
            },
            LetterFilter {
                tenant: Some("globex".to_owned()),
                ..all.clone()
            },
            LetterFilter {
                event: Some("order.paid".to_owned()),
                ..all.clone()
            },
            LetterFilter {
                since: Some(at("2026-12-06T02:00:00Z")),
                ..all
            },
        ] {
            assert!(!differs.matches(&l), "{differs:?}");
        }
    }
}
