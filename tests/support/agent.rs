//! Agents that count their own runs, so that a test checks what ran from the agent's side
//! and not from qt's own bookkeeping.

use std::path::{Path, PathBuf};

/// An agent run through `/bin/sh` (so no freshly written file is executed, which can fail
/// with ETXTBSY while another test forks): when it starts it appends `<message id> <note>`
/// to `runs` in one write, the note being what the shell pipeline `note` prints reading the
/// event, then it sleeps `$AGENT_SLEEP` seconds (default `sleep`).
pub fn counting_agent(dir: &Path, runs: &Path, note: &str, sleep: &str) -> PathBuf {
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "note=$({note})\n\
             echo \"$QT_MESSAGE_ID $note\" >> {runs}\n\
             sleep \"${{AGENT_SLEEP:-{sleep}}}\"\n",
            runs = runs.display()
        ),
    )
    .unwrap();
    script
}

/// `(message id, note)` of every agent run, in the order the runs started. A last line without
/// its newline is still being written and is left out; any other line without a space
/// fails the test.
pub fn agent_runs(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| {
            let (id, note) = l.split_once(' ').unwrap_or_else(|| panic!("malformed run line {l:?}"));
            (id.to_owned(), note.to_owned())
        })
        .collect()
}
