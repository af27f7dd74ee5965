//! Throughput of the `http` target, end to end through the real `qt` binary, next to a plain
//! reqwest loop. Run with `cargo xtask bench http`, which records the figures in
//! docs/benchmarks.md. Prints one JSON line per configuration.
//!
//! The http target lives in the `qt` binary crate, so this drives the binary itself:
//! `qt run --until-idle` over the mock source, whose file holds N messages (200-byte JSON
//! bodies, distinct dedup keys), with in-memory idempotency and ledger and one `http` target
//! pointed at a server started in this process. The server answers every POST at once with an
//! empty 200, counts the requests and notes the times of the first and the last.
//!
//! What is measured: messages per second over the server's window, first request to last
//! request, for both sides; so qt's process start-up, reading the messages file and exit are
//! excluded (the wall time of the whole `qt` process, which includes them, is reported beside
//! it). Everything shares the machine: the `qt` process, the server (two worker threads) and,
//! in its rounds, the reqwest loop (two worker threads).
//!
//! The plain side is a reqwest client (one keep-alive pool) with `concurrency` tasks, each
//! posting the next body as soon as its previous call is answered. It posts exactly the bodies
//! and headers qt sent in an unmeasured warm-up run. Rounds alternate, qt then reqwest, three
//! times; the medians and the ranges are reported, and the ratio is median over median.
//!
//! For contrast, the `command` target on the same workload, running `/bin/true` per message
//! (fewer messages, since each is a fork and exec): its rate is messages over the `qt`
//! process's wall time, start-up included (there is no server to time it by).
//!
//! Environment: `QT_BENCH_HTTP_MESSAGES` (default 100000), `QT_BENCH_HTTP_CONCURRENCY`
//! (comma-separated, default `8,16,64`: 8 is `processing.concurrency`'s default), `QT_BENCH_COMMAND_MESSAGES` (default 2000).

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

const ROUNDS: usize = 3;
const QT: &str = env!("CARGO_BIN_EXE_qt");

/// What the server saw: a request count, the first and last request times (nanoseconds after
/// `base`, 0 = none yet) and, while `capture` is set, every request's body and headers.
struct Seen {
    base: Instant,
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    capture: AtomicBool,
    captured: Mutex<Vec<(HeaderMap, Bytes)>>,
}

impl Seen {
    fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.first_ns.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
    }

    /// Requests seen and the seconds from the first to the last.
    fn window(&self) -> (u64, f64) {
        let first = self.first_ns.load(Ordering::SeqCst);
        let last = self.last_ns.load(Ordering::SeqCst);
        (
            self.count.load(Ordering::SeqCst),
            last.saturating_sub(first) as f64 / 1e9,
        )
    }
}

async fn answer(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = (seen.base.elapsed().as_nanos() as u64).max(1);
    let _ = seen
        .first_ns
        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    seen.last_ns.fetch_max(now, Ordering::SeqCst);
    seen.count.fetch_add(1, Ordering::SeqCst);
    if seen.capture.load(Ordering::Relaxed) {
        seen.captured.lock().unwrap().push((headers, body));
    }
    StatusCode::OK
}

/// Starts the server on its own two-thread runtime; returns its URL.
fn start_server(seen: Arc<Seen>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new().route("/agent", post(answer)).with_state(seen);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/agent")
}

/// N message lines with 200-byte JSON bodies, distinct dedup keys, eight tenants.
fn write_messages(path: &Path, n: usize) {
    let mut out = String::with_capacity(n * 260);
    for i in 0..n {
        let body = serde_json::json!({
            "type": "order.created",
            "tenant": format!("tenant-{}", i % 8),
            "order_id": format!("order-{i:09}"),
            "amount": 1234 + i % 1000,
            "note": "x".repeat(96),
        });
        let line = serde_json::json!({"id": format!("m-{i}"), "json": body});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn write_config(path: &Path, messages: &Path, concurrency: usize, target: &str) {
    let yaml = format!(
        "name: bench-http\n\
         source: {{type: mock, queue: bench, file: {messages}}}\n\
         processing:\n  concurrency: {concurrency}\n  parser: json\n  extraction:\n    \
         event_name: [{{pointer: /type}}]\n    tenant_id: [{{pointer: /tenant}}]\n    \
         dedup_key: [{{pointer: /order_id}}]\n\
         idempotency: {{enabled: true, store: {{type: memory}}}}\n\
         agent:\n  targets:\n    bench: {target}\n\
         ledger: {{type: memory}}\n\
         observability:\n  admin: {{enabled: false}}\n  log: {{level: warn}}\n",
        messages = messages.display(),
    );
    std::fs::write(path, yaml).unwrap();
}

/// Runs `qt run --until-idle`; returns its wall time after checking every message succeeded.
fn run_qt(config: &Path, n: usize) -> f64 {
    let start = Instant::now();
    let out = Command::new(QT)
        .args(["run", "-c"])
        .arg(config)
        .arg("--until-idle")
        .stdin(Stdio::null())
        .output()
        .expect("cannot start qt");
    let wall = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qt failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let succeeded: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("succeeded"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no succeeded row in qt's summary:\n{stdout}"));
    assert_eq!(succeeded, n as u64, "qt's summary:\n{stdout}");
    wall
}

/// Posts every captured request with `concurrency` tasks on one client.
fn run_reqwest(
    rt: &tokio::runtime::Runtime,
    url: &str,
    requests: &Arc<Vec<(HeaderMap, Bytes)>>,
    concurrency: usize,
) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, next, requests, url) = (client.clone(), next.clone(), requests.clone(), url.to_owned());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((headers, body)) = requests.get(i) else {
                        break;
                    };
                    let response = client
                        .post(&url)
                        .headers(headers.clone())
                        .body(body.clone())
                        .send()
                        .await
                        .expect("post failed");
                    assert!(response.status().is_success());
                    response.bytes().await.expect("read failed");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    start.elapsed().as_secs_f64()
}

fn median_and_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let n = env_usize("QT_BENCH_HTTP_MESSAGES", 100_000);
    let n_command = env_usize("QT_BENCH_COMMAND_MESSAGES", 2_000);
    let concurrencies: Vec<usize> = std::env::var("QT_BENCH_HTTP_CONCURRENCY")
        .unwrap_or_else(|_| "8,16,64".into())
        .split(',')
        .map(|c| c.trim().parse().expect("QT_BENCH_HTTP_CONCURRENCY: numbers"))
        .collect();

    let seen = Arc::new(Seen {
        base: Instant::now(),
        count: AtomicU64::new(0),
        first_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        capture: AtomicBool::new(false),
        captured: Mutex::new(Vec::new()),
    });
    let url = start_server(seen.clone());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("messages.jsonl");
    write_messages(&messages, n);
    let http_target = format!("{{type: http, url: \"{url}\", timeout: 30s}}");

    for &concurrency in &concurrencies {
        let config = dir.path().join(format!("http-{concurrency}.yaml"));
        write_config(&config, &messages, concurrency, &http_target);

        // Warm-up: unmeasured; captures what qt sends, for the reqwest loop to replay.
        eprintln!("http, concurrency {concurrency}: warm-up");
        seen.captured.lock().unwrap().clear();
        seen.capture.store(true, Ordering::SeqCst);
        run_qt(&config, n);
        seen.capture.store(false, Ordering::SeqCst);
        let mut requests = std::mem::take(&mut *seen.captured.lock().unwrap());
        // The client sets these itself.
        for (headers, _) in &mut requests {
            for name in ["host", "content-length", "connection", "transfer-encoding"] {
                headers.remove(name);
            }
        }
        let requests = Arc::new(requests);
        assert_eq!(requests.len(), n);

        let (mut qt_rates, mut qt_walls, mut plain_rates) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            seen.reset();
            let wall = run_qt(&config, n);
            let (count, secs) = seen.window();
            assert_eq!(count, n as u64);
            qt_rates.push(count as f64 / secs);
            qt_walls.push(wall);

            seen.reset();
            run_reqwest(&client_rt, &url, &requests, concurrency);
            let (count, plain_secs) = seen.window();
            assert_eq!(count, n as u64);
            plain_rates.push(count as f64 / plain_secs);
            eprintln!(
                "http, concurrency {concurrency}, round {round}: qt {:.0}/s ({secs:.2} s, process {wall:.2} s), reqwest {:.0}/s",
                qt_rates[round - 1],
                plain_rates[round - 1]
            );
        }
        let (qt, qt_min, qt_max) = median_and_range(qt_rates);
        let (plain, plain_min, plain_max) = median_and_range(plain_rates);
        let (wall, _, _) = median_and_range(qt_walls);
        println!(
            "{}",
            serde_json::json!({
                "target": "http",
                "concurrency": concurrency,
                "messages": n,
                "qt_messages_per_second": qt,
                "qt_min": qt_min,
                "qt_max": qt_max,
                "qt_process_seconds": wall,
                "qt_process_messages_per_second": n as f64 / wall,
                "reqwest_messages_per_second": plain,
                "reqwest_min": plain_min,
                "reqwest_max": plain_max,
                "ratio": qt / plain,
            })
        );
    }

    // Contrast: the command target, one /bin/true per message.
    let command_messages = dir.path().join("command-messages.jsonl");
    write_messages(&command_messages, n_command);
    let concurrency = concurrencies[0];
    let config = dir.path().join("command.yaml");
    write_config(
        &config,
        &command_messages,
        concurrency,
        "{type: command, program: /bin/true, timeout: 30s}",
    );
    let mut rates = Vec::new();
    for round in 1..=ROUNDS {
        let wall = run_qt(&config, n_command);
        rates.push(n_command as f64 / wall);
        eprintln!(
            "command, concurrency {concurrency}, round {round}: {:.0}/s ({wall:.2} s)",
            rates[round - 1]
        );
    }
    let (rate, min, max) = median_and_range(rates);
    println!(
        "{}",
        serde_json::json!({
            "target": "command",
            "concurrency": concurrency,
            "messages": n_command,
            "qt_process_messages_per_second": rate,
            "qt_min": min,
            "qt_max": max,
        })
    );
}
