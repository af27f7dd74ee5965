//! How `qt dlq` shows letters: a table, one letter in full, or JSON lines.

use std::io::Write;

use base64::Engine as _;
use comfy_table::{Table, presets};
use serde_json::json;

use super::letter::Letter;

/// Most body characters in a table cell.
const CELL_BODY_CHARS: usize = 60;
/// Most body bytes `show` and `--json` print without `--full`.
const BODY_BYTES: usize = 2048;

/// Letters as a table, in the order read.
pub fn table(letters: &[Letter]) -> String {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED).set_header([
        "id",
        "last failure (UTC)",
        "reason",
        "class",
        "attempts",
        "replays",
        "from",
        "tenant",
        "event",
        "body",
    ]);
    for l in letters {
        let d = &l.details;
        table.add_row([
            l.message.id.clone(),
            l.failed_at()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            d.reason.as_deref().map(|r| shorten(r, 80)).unwrap_or_default(),
            d.error_class.clone().unwrap_or_default(),
            d.attempts.map(|a| a.to_string()).unwrap_or_default(),
            d.replays.to_string(),
            origin(l),
            l.tenant.clone().unwrap_or_default(),
            l.event.clone().unwrap_or_default(),
            shorten(&body_text(&l.message.body, usize::MAX).0, CELL_BODY_CHARS),
        ]);
    }
    table.to_string()
}

/// One letter with every header, for `show`.
pub fn full(out: &mut impl Write, l: &Letter, whole_body: bool) -> std::io::Result<()> {
    let d = &l.details;
    let field = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    writeln!(out, "id:                 {}", l.message.id)?;
    writeln!(out, "reason:             {}", field(d.reason.clone()))?;
    writeln!(out, "error class:        {}", field(d.error_class.clone()))?;
    writeln!(out, "attempts:           {}", field(d.attempts.map(|a| a.to_string())))?;
    writeln!(out, "replays:            {}", d.replays)?;
    writeln!(out, "original queue:     {}", origin(l))?;
    writeln!(out, "original message:   {}", field(d.original_message_id.clone()))?;
    writeln!(
        out,
        "first failure:      {}",
        field(d.first_failure_at.map(|t| t.to_rfc3339()))
    )?;
    writeln!(
        out,
        "last failure:       {}",
        field(d.last_failure_at.map(|t| t.to_rfc3339()))
    )?;
    writeln!(out, "tenant:             {}", field(l.tenant.clone()))?;
    writeln!(out, "event:              {}", field(l.event.clone()))?;
    writeln!(out, "key:                {}", field(l.message.key.clone()))?;
    if let Some(t) = l.message.timestamp {
        writeln!(out, "dead-lettered at:   {}", t.to_rfc3339())?;
    }
    writeln!(out, "headers:")?;
    for (name, value) in l.message.headers.iter() {
        writeln!(out, "  {name}: {value}")?;
    }
    let limit = if whole_body { usize::MAX } else { BODY_BYTES };
    let (body, encoding, truncated) = body_text(&l.message.body, limit);
    writeln!(
        out,
        "body ({} bytes{}):",
        l.message.body.len(),
        if encoding == "base64" { ", base64" } else { "" }
    )?;
    writeln!(out, "{body}")?;
    if truncated {
        writeln!(out, "... (cut at {BODY_BYTES} bytes; --full prints all of it)")?;
    }
    Ok(())
}

/// One letter as one JSON object on one line.
pub fn json_line(out: &mut impl Write, l: &Letter, whole_body: bool) -> std::io::Result<()> {
    let limit = if whole_body { usize::MAX } else { BODY_BYTES };
    let (body, encoding, truncated) = body_text(&l.message.body, limit);
    let headers: serde_json::Map<String, serde_json::Value> = l
        .message
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    let line = json!({
        "id": l.message.id,
        "details": l.details,
        "tenant": l.tenant,
        "event": l.event,
        "key": l.message.key,
        "timestamp": l.message.timestamp,
        "headers": headers,
        "body": body,
        "body_encoding": encoding,
        "body_bytes": l.message.body.len(),
        "body_truncated": truncated,
    });
    serde_json::to_writer(&mut *out, &line)?;
    writeln!(out)
}

/// `queue`, with `/partition@offset` where the letter came from a Kafka partition.
fn origin(l: &Letter) -> String {
    let d = &l.details;
    let mut s = d.original_queue.clone().unwrap_or_else(|| "-".to_owned());
    if let Some(p) = d.original_partition {
        s.push_str(&format!("/{p}"));
    }
    if let Some(o) = d.original_offset {
        s.push_str(&format!("@{o}"));
    }
    s
}

/// The body as text (UTF-8, or base64 when it is not), at most `limit` bytes of it: the
/// text, its encoding and whether it was cut.
fn body_text(body: &[u8], limit: usize) -> (String, &'static str, bool) {
    let truncated = body.len() > limit;
    let shown = &body[..body.len().min(limit)];
    match std::str::from_utf8(shown) {
        Ok(text) => (text.to_owned(), "utf8", truncated),
        // A cut in the middle of a character is still text.
        Err(e) if truncated && e.error_len().is_none() => (
            String::from_utf8_lossy(&shown[..e.valid_up_to()]).into_owned(),
            "utf8",
            true,
        ),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
            truncated,
        ),
    }
}

/// `text` on one line, at most `chars` characters, with `…` where it was cut.
fn shorten(text: &str, chars: usize) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_text_when_they_can_be_and_cut_where_asked() {
        assert_eq!(body_text(b"hello", 100), ("hello".to_owned(), "utf8", false));
        assert_eq!(body_text(b"hello", 2), ("he".to_owned(), "utf8", true));
        assert_eq!(body_text("é".as_bytes(), 1), (String::new(), "utf8", true));
        assert_eq!(body_text(&[0xff, 0x00], 100), ("/wA=".to_owned(), "base64", false));
    }

    #[test]
    fn table_cells_stay_on_one_line_and_short() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 3), "abc…");
    }
}
