//! The JSONL formats of the file-fed mode: messages in, dead letters out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::dlq::FileLock;
use base64::Engine as _;
use qt_core::{DeadLetter, Headers, RawMessage, SourceInfo};
use serde::{Deserialize, Serialize};

/// One message line: `{"id": "...", "headers": {...}, "json": {...}}`, or `"text"` or
/// `"body_base64"` instead of `"json"`; `"key"` sets the broker key (ordering).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Some(Value::Null)` when the line says `"json": null`, so that can be refused by
    /// name rather than read as a missing body.
    #[serde(default, deserialize_with = "given_json", skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    #[serde(skip)]
    line: usize,
    #[serde(skip)]
    body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("cannot append a dead letter to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl MessageLine {
    /// The line that describes a message with this body, for sending it elsewhere (the
    /// admin server's `POST /send`).
    pub fn for_message(id: Option<String>, headers: &Headers, key: Option<String>, body: &[u8]) -> Self {
        let (json, text, body_base64) = body_fields(body);
        Self {
            id,
            headers: headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            key,
            json,
            text: text.map(str::to_owned),
            body_base64,
            ..Self::default()
        }
    }

    /// The raw message this line describes; without an id the line number names it.
    pub fn into_raw(self, queue: &str) -> RawMessage {
        let mut source = SourceInfo::new("mock", queue);
        source.key = self.key;
        let id = self.id.unwrap_or_else(|| format!("line-{}", self.line));
        let headers: Headers = self.headers.into_iter().collect();
        RawMessage::new(id, self.body, source).with_headers(headers)
    }

    /// Checks a line received from elsewhere (the admin server's `POST /send`) and turns
    /// it into a message; without an id, one is generated.
    pub fn into_checked_raw(mut self, queue: &str) -> Result<RawMessage, String> {
        self.resolve_body()?;
        if self.id.is_none() {
            self.id = Some(format!("sent-{}", uuid::Uuid::now_v7()));
        }
        Ok(self.into_raw(queue))
    }

    fn resolve_body(&mut self) -> Result<(), String> {
        if self.json == Some(serde_json::Value::Null) {
            return Err("\"json\" is null: a message needs a body; give a JSON value other than null, or \"text\": \"null\" to send the text null".to_owned());
        }
        let given = [self.json.is_some(), self.text.is_some(), self.body_base64.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give exactly one of \"json\", \"text\" or \"body_base64\"".to_owned());
        }
        self.body = if let Some(j) = &self.json {
            serde_json::to_vec(j).map_err(|e| e.to_string())?
        } else if let Some(t) = &self.text {
            t.clone().into_bytes()
        } else {
            let b = self.body_base64.as_deref().unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("body_base64 is not valid base64: {e}"))?
        };
        Ok(())
    }
}

/// `"json"` as given, `null` included (a plain `Option` reads `null` as absent).
fn given_json<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Reads a JSONL message file; blank lines and lines starting with `#` are skipped. Every
/// bad line is an error naming its number.
pub fn read_messages(path: &Path) -> Result<Vec<MessageLine>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let parsed = MessageLine::parse(raw, line).map_err(|reason| FileError::Line {
            path: path.to_owned(),
            line,
            reason,
        })?;
        out.extend(parsed);
    }
    Ok(out)
}

impl MessageLine {
    /// Reads line number `line` of a message file: `None` for a blank line or a `#` comment,
    /// else the message with its body resolved, or why the line is bad. The fuzz target
    /// `mock_line` feeds this any text.
    pub fn parse(raw: &str, line: usize) -> Result<Option<Self>, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(None);
        }
        let mut m: MessageLine = serde_json::from_str(trimmed).map_err(|e| e.to_string())?;
        m.line = line;
        m.resolve_body()?;
        Ok(Some(m))
    }
}

/// A body as a line gives it: JSON when it parses, else UTF-8 text, else base64.
fn body_fields(body: &[u8]) -> (Option<serde_json::Value>, Option<&str>, Option<String>) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => (Some(v), None, None),
        Err(_) => match std::str::from_utf8(body) {
            Ok(t) => (None, Some(t), None),
            Err(_) => (None, None, Some(base64::engine::general_purpose::STANDARD.encode(body))),
        },
    }
}

/// The dead-letter line: the message in the input format (so it can be replayed) plus why.
#[derive(Serialize)]
struct DeadLetterLine<'a> {
    id: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_class: Option<&'static str>,
    attempts: u32,
    headers: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

pub(crate) fn append_dead_letter(
    path: &Path,
    message: &RawMessage,
    dead_letter: &DeadLetter,
    headers: &Headers,
) -> Result<(), FileError> {
    let (json, text, body_base64) = body_fields(&message.body);
    let line = DeadLetterLine {
        id: &message.message_id,
        reason: &dead_letter.reason,
        error_class: dead_letter.error_class.map(|c| c.as_str()),
        attempts: dead_letter.attempts,
        headers: headers.iter().collect(),
        key: message.source.key.as_deref(),
        json,
        text,
        body_base64,
    };
    let mut buf = serde_json::to_vec(&line).expect("dead-letter lines serialize");
    buf.push(b'\n');
    let write = || -> std::io::Result<()> {
        // A `qt dlq` session may be rewriting the file.
        let _lock = FileLock::take_io(path)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&buf)
    };
    write().map_err(|source| FileError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_body_kind_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(
            &p,
            "# comment\n{\"id\":\"a\",\"headers\":{\"x-tenant-id\":\"t\"},\"json\":{\"n\":1}}\n\n{\"text\":\"hi\"}\n{\"body_base64\":\"AAE=\"}\n",
        )
        .unwrap();
        let m = read_messages(&p).unwrap();
        assert_eq!(m.len(), 3);
        let raws: Vec<RawMessage> = m.into_iter().map(|l| l.into_raw("q")).collect();
        assert_eq!(raws[0].message_id, "a");
        assert_eq!(&raws[0].body[..], b"{\"n\":1}");
        assert_eq!(raws[0].headers.get("x-tenant-id"), Some("t"));
        assert_eq!(raws[1].message_id, "line-4");
        assert_eq!(&raws[2].body[..], &[0u8, 1]);

        std::fs::write(&p, "{\"id\":\"a\",\"json\":{},\"text\":\"x\"}\n").unwrap();
        let err = read_messages(&p).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:1:") && err.contains("exactly one"), "{err}");
        std::fs::write(&p, "{\"id\":\"a\",\"jsn\":{}}\n").unwrap();
        assert!(read_messages(&p).unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn a_blank_line_or_comment_is_no_message_and_a_bad_line_says_why() {
        for skipped in ["", "   ", "# {\"text\": \"x\"}", "\t# comment"] {
            assert_eq!(MessageLine::parse(skipped, 1), Ok(None), "{skipped:?}");
        }
        let m = MessageLine::parse(" {\"text\": \"hi\"} ", 7).unwrap().unwrap();
        assert_eq!(m.into_raw("q").message_id, "line-7");
        let err = MessageLine::parse("{\"body_base64\": \"not base64!\"}", 1).unwrap_err();
        assert!(err.contains("not valid base64"), "{err}");
        assert!(MessageLine::parse("[1, 2]", 1).is_err());
    }

    #[test]
    fn a_null_json_body_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, "{\"id\": \"x\", \"json\": null}\n").unwrap();
        let err = read_messages(&p).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:1:") && err.contains("\"json\" is null"), "{err}");
        assert!(!err.contains("exactly one"), "{err}");

        let sent: MessageLine = serde_json::from_str("{\"json\": null}").unwrap();
        let err = sent.into_checked_raw("q").unwrap_err();
        assert!(err.contains("\"json\" is null"), "{err}");
    }
}
