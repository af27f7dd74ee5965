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

/// `examples/http_agent.py` running on a free port, killed when dropped (on every path,
/// panics included). Its stderr (one line per request) goes to a file.
#[derive(Debug)]
pub struct ExampleHttpAgent {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT/events`
    pub url: String,
    log: PathBuf,
}

impl ExampleHttpAgent {
    /// Starts `python3 examples/http_agent.py --port 0` and reads the port it chose from
    /// its first stdout line, waiting at most `within`.
    pub fn start(dir: &Path, within: std::time::Duration) -> Self {
        Self::start_on(dir, 0, within)
    }

    /// Starts the example agent on `port` (0: a free one) and waits at most `within` until
    /// it listens.
    pub fn start_on(dir: &Path, port: u16, within: std::time::Duration) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let log = dir.join("http_agent.stderr");
        let mut child = Command::new("python3")
            .args(["examples/http_agent.py", "--port", &port.to_string()])
            .current_dir(super::repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 runs examples/http_agent.py (Python 3.11 or later on PATH)");
        let stdout = child.stdout.take().unwrap();
        let mut agent = Self {
            child,
            url: String::new(),
            log,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep the pipe open (and drained) for the life of the server.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(within).unwrap_or_default();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("http_agent.py did not say where it listens: {line:?}\n{}", agent.logs()));
        agent.url = format!("{base}/events");
        agent
    }

    /// What the server logged to stderr so far: one line per request.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExampleHttpAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
