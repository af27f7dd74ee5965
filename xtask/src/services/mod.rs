//! The services integration tests talk to. Redis and RabbitMQ run on every machine already;
//! the Kafka-protocol broker (Nisshi) and the SQS emulator (moto) are installed into the
//! cache directory on first use and started here. Every step is idempotent.

mod local;
pub mod moto;
pub mod nisshi;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Clone, Copy, Subcommand)]
pub enum Action {
    /// Install what is missing and start what is not running.
    Up,
    /// Say which services are reachable.
    Status,
}

/// A service the tests need: where it listens and how to bring it up.
pub struct Service {
    pub name: &'static str,
    pub addr: &'static str,
    /// Environment variable tests read the endpoint from, and its value.
    pub env: (&'static str, &'static str),
    pub ensure: fn() -> Result<()>,
}

pub fn all() -> Vec<Service> {
    local::services()
        .into_iter()
        .chain([moto::service(), nisshi::service()])
        .collect()
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up => ensure_all(),
        Action::Status => {
            for s in all() {
                let state = if reachable(s.addr) { "up" } else { "down" };
                eprintln!("{:<10} {:<20} {state}", s.name, s.addr);
            }
            Ok(())
        }
    }
}

pub fn ensure_all() -> Result<()> {
    for s in all() {
        if reachable(s.addr) {
            continue;
        }
        eprintln!("xtask: starting {} on {}", s.name, s.addr);
        (s.ensure)()?;
        wait_reachable(s.name, s.addr, Duration::from_secs(60))?;
    }
    Ok(())
}

/// Environment handed to test runs so tests find the services.
pub fn test_env() -> Vec<(String, String)> {
    all()
        .into_iter()
        .map(|s| (s.env.0.to_owned(), s.env.1.to_owned()))
        .collect()
}

pub fn reachable(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("service addresses are literal socket addresses");
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

pub fn wait_reachable(name: &str, addr: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if reachable(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{name} did not start listening on {addr} within {limit:?}; see its log in {}",
        crate::cmd::cache_dir().display()
    )
}
