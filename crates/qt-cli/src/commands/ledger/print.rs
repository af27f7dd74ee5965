//! How `qt ledger` shows records: a table, one line each while following, or JSON lines.

use std::io::Write;

use comfy_table::{Table, presets};
use qt_core::LedgerRecord;

/// Longest error or decision text in a table cell or a line; the JSON form has it whole.
const NOTE_CHARS: usize = 100;

/// Records as a table, oldest first.
pub fn table(records: &[LedgerRecord]) -> String {
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED).set_header([
        "finished (UTC)",
        "status",
        "tenant",
        "event",
        "message id",
        "attempts",
        "ms",
        "trace id",
        "note",
    ]);
    for r in records {
        table.add_row([
            r.finished_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            r.status.as_str().to_owned(),
            r.tenant_id.clone().unwrap_or_default(),
            r.event_name.clone().unwrap_or_default(),
            r.message_id.clone(),
            r.attempts.to_string(),
            format!("{:.1}", r.duration_ms),
            r.trace_id.to_string(),
            note(r),
        ]);
    }
    table.to_string()
}

/// One record on one line, for following.
pub fn line(r: &LedgerRecord) -> String {
    let mut out = format!(
        "{} {:<12} tenant={} event={} message_id={} attempts={} {:.1}ms trace_id={}",
        r.finished_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        r.status.as_str(),
        r.tenant_id.as_deref().unwrap_or("-"),
        r.event_name.as_deref().unwrap_or("-"),
        r.message_id,
        r.attempts,
        r.duration_ms,
        r.trace_id,
    );
    let note = note(r);
    if !note.is_empty() {
        out.push_str(" | ");
        out.push_str(&note);
    }
    out
}

pub fn json_lines(out: &mut impl Write, records: &[LedgerRecord]) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Why it ended as it did: the error, else the governance decision's reason.
fn note(r: &LedgerRecord) -> String {
    let text = r.error.as_deref().or(r.decision_reason.as_deref()).unwrap_or_default();
    // One line: an error may carry a body snippet with line breaks.
    let mut note: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(NOTE_CHARS)
        .collect();
    if text.chars().count() > NOTE_CHARS {
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use qt_core::LedgerStatus;

    use super::*;
    use crate::commands::ledger::test_record;

    #[test]
    fn the_table_shows_each_records_status_tenant_ids_and_why_it_failed() {
        let mut r = test_record("m-1", LedgerStatus::Failed);
        r.error = Some("agent answered 500:\nbody".into());
        let table = table(&[r.clone()]);
        for expected in [
            "failed",
            "tenant-a",
            "order.created",
            "m-1",
            &r.trace_id.to_string(),
            "agent answered 500: body",
        ] {
            assert!(table.contains(expected), "{expected} missing from\n{table}");
        }
    }

    #[test]
    fn a_long_note_is_cut_and_marked() {
        let mut r = test_record("m-1", LedgerStatus::Rejected);
        r.decision_reason = Some("x".repeat(500));
        let line = line(&r);
        assert!(line.ends_with(&format!("{}…", "x".repeat(NOTE_CHARS))), "{line}");
    }

    #[test]
    fn json_lines_read_back_as_the_same_records() {
        let records = [
            test_record("m-1", LedgerStatus::Succeeded),
            test_record("m-2", LedgerStatus::Duplicate),
        ];
        let mut out = Vec::new();
        json_lines(&mut out, &records).unwrap();
        let back: Vec<LedgerRecord> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, records);
    }
}
