//! The scenarios' agent: an HTTP server in the test process that notes every run it is asked
//! for (which qt process asked, the idempotency key, the message id, when it started and
//! ended), so that double runs are counted from the agent's side, not from qt's bookkeeping.
//!
//! Each qt process calls it at `/run/<process>`. A body carrying `"poison": true` fails for
//! good (422); every other run takes [`RUN_TIME`] and succeeds.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Long enough that runs are in flight when a process is killed.
pub const RUN_TIME: Duration = Duration::from_millis(30);

#[derive(Clone, Debug)]
pub struct Run {
    /// The qt process that asked, as its URL path names it.
    pub process: String,
    /// The message's dedup key: its idempotency key without the tenant.
    pub key: String,
    pub started: SystemTime,
}

#[derive(Debug)]
pub struct RecordingAgent {
    pub port: u16,
    runs: Arc<Mutex<Vec<Run>>>,
}

impl RecordingAgent {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let noted = Arc::clone(&runs);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let noted = Arc::clone(&noted);
                std::thread::spawn(move || serve(conn, &noted));
            }
        });
        Self { port, runs }
    }

    /// The URL a process named `process` calls.
    pub fn url(&self, process: &str) -> String {
        format!("http://127.0.0.1:{}/run/{process}", self.port)
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Serves one keep-alive connection until qt closes it (or dies).
fn serve(conn: TcpStream, runs: &Mutex<Vec<Run>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some((path, headers, body)) = read_request(&mut reader) {
        let started = SystemTime::now();
        let poison = String::from_utf8_lossy(&body).contains("\"poison\":true");
        std::thread::sleep(RUN_TIME);
        runs.lock().unwrap_or_else(PoisonError::into_inner).push(Run {
            process: path.strip_prefix("/run/").unwrap_or(&path).to_owned(),
            key: dedup_key(headers.get("idempotency-key").map_or("", String::as_str)).to_owned(),
            started,
        });
        let (status, answer) = if poison {
            ("422 Unprocessable Entity", "poison message")
        } else {
            ("200 OK", "{}")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `<tenant>:<dedup key>` without the tenant (which never holds a `:`, it is escaped).
fn dedup_key(idempotency_key: &str) -> &str {
    idempotency_key.split_once(':').map_or(idempotency_key, |(_, key)| key)
}

/// The path, lower-cased headers and body of the next request; `None` once the peer closed.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}
