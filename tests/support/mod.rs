//! What the end-to-end tests share: the `qt` binary and its processes, bounded waits, the
//! files it writes and its admin server.

// Every test binary compiles this module whole and uses only part of it.
#![allow(dead_code)]

pub mod agent;
pub mod collector;
pub mod dlq;
pub mod files;
pub mod http;
pub mod process;
pub mod wait;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The workspace root, where `qt` runs so that paths like `examples/mock.yaml` resolve.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The variables of the repository's `.env.example` (`NAME=value` lines; `#` comments), which
/// the broker examples read.
pub fn env_example() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join(".env.example")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').expect(".env.example lines are NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// A port nothing listens on at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `qt-e2e-<what>-<pid><nanos>`: unique across parallel tests and repeated runs, and a valid
/// topic, group, queue, vhost and key-prefix name.
pub fn unique(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("qt-e2e-{what}-{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Whether something accepts a TCP connection at `host_port` within `within`, so that a
/// missing service fails a test at once with a hint rather than at its first timeout.
pub fn reachable(host_port: &str, within: Duration) -> bool {
    host_port
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, within).is_ok())
}

/// A runtime for the broker clients: the tests themselves are plain threads that watch
/// child processes, so one worker is enough.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}
