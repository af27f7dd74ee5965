//! `qt validate -c FILE`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use qt_core::{Capabilities, OrderingUnit};

use super::{load_or_report, preflight_or_report};

/// Notes are wrapped to this many characters, so the block reads in a terminal.
const NOTE_WIDTH: usize = 92;

/// Prints the source adapter's capabilities and the effective configuration, both as YAML
/// (the capabilities as comments), so the output can still be read as a configuration.
pub async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // Everything `qt run` checks before it connects: a command that does not exist, a
    // dead-letter policy the source cannot carry out, ... fails here, not at run time.
    let ready = match preflight_or_report(path, &config).await {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    // Valid, but most likely not meant: said on stderr, so stdout stays a configuration.
    for warning in config.warnings() {
        let _ = writeln!(std::io::stderr(), "qt: warning: {}: {warning}", path.display());
    }
    let adapter = &ready.source.adapter;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# {}: valid.", path.display())?;
    out.write_all(capabilities_block(adapter.kind(), adapter.queue(), &adapter.capabilities()).as_bytes())?;
    writeln!(out, "# Effective configuration (secrets masked):")?;
    out.write_all(config.to_masked_yaml().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// What the source adapter can and cannot do, one line per capability and the adapter's
/// notes, each line a YAML comment.
fn capabilities_block(kind: &str, queue: &str, caps: &Capabilities) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let ordering = match caps.ordering {
        OrderingUnit::None => "none",
        OrderingUnit::Partition => "partition",
        OrderingUnit::MessageGroup => "message group",
        OrderingUnit::Queue => "queue",
    };
    let rows = [
        ("dead-letters itself (on_*: dlq)", yes_no(caps.dead_letter)),
        (
            "nack rejects to the broker's dead-lettering",
            yes_no(caps.native_reject),
        ),
        ("requeue with a delay", yes_no(caps.delayed_requeue)),
        ("extends the lease of a running message", yes_no(caps.lease_extension)),
        ("pauses intake at the broker", yes_no(caps.pause)),
        ("ordering unit", ordering),
    ];
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let mut s = format!("# Source {kind} ({queue}) capabilities:\n");
    for (label, value) in rows {
        let _ = writeln!(s, "#   {label:<width$}  {value}");
    }
    if !caps.notes.is_empty() {
        s.push_str("# Notes:\n");
        for note in &caps.notes {
            for (i, line) in wrap(note, NOTE_WIDTH).into_iter().enumerate() {
                let bullet = if i == 0 { "-" } else { " " };
                let _ = writeln!(s, "#   {bullet} {line}");
            }
        }
    }
    s
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word gets a
/// line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capabilities_block_has_a_line_per_capability_and_wraps_long_notes() {
        let caps = Capabilities {
            native_reject: true,
            delayed_requeue: true,
            dead_letter: false,
            lease_extension: false,
            pause: true,
            ordering: OrderingUnit::MessageGroup,
            notes: vec![
                "short",
                "a long note that goes on and on, well past the width of one line of the block, so that it is \
                 wrapped onto a second line indented under the first",
            ],
        };
        let block = capabilities_block("sqs", "orders", &caps);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines[0], "# Source sqs (orders) capabilities:");
        assert!(lines.iter().all(|l| l.starts_with('#')), "{block}");
        assert!(
            lines[1].starts_with("#   dead-letters itself") && lines[1].ends_with(" no"),
            "{block}"
        );
        assert!(lines[2].ends_with(" yes"), "{block}");
        assert!(lines[6].ends_with(" message group"), "{block}");
        assert_eq!(lines[7], "# Notes:");
        assert_eq!(lines[8], "#   - short");
        let long: Vec<&str> = lines[9..].to_vec();
        assert!(long.len() > 1, "{block}");
        assert!(
            long[0].starts_with("#   - a long note") && long[1].starts_with("#     "),
            "{block}"
        );
    }

    #[test]
    fn wrapping_keeps_every_word_and_the_width() {
        let text = "one two three four five six seven eight nine ten";
        let lines = wrap(text, 10);
        assert_eq!(lines.join(" "), text);
        assert!(lines.iter().all(|l| l.len() <= 10), "{lines:?}");
        assert_eq!(
            wrap("unbreakable-word-longer-than-width", 5),
            ["unbreakable-word-longer-than-width"]
        );
    }
}
