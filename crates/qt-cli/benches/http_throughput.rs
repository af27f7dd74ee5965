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
//! CPU per message (user and system time) is reported beside the rates, to tell a side short
//! of CPU from one that waits: for qt, the `qt` process's over the server's window (start-up
//! and exit left out); for the plain side, the reqwest loop's two threads over its whole run.
//! Both are read from /proc in clock ticks (USER_HZ, 100 per second on Linux), so they are
//! coarse but plenty for runs of a second or more. The server's CPU per message on each side
//! is printed with each round.
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
/// The reqwest loop's threads, named so that their CPU time can be read.
const CLIENT_THREADS: &str = "bench-client";
/// The server's threads, likewise.
const SERVER_THREADS: &str = "bench-server";

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

/// Clock ticks per second of the times in /proc (USER_HZ, fixed at 100 in Linux's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The `stat` fields of a /proc file after the command name (which may hold spaces), so
/// `fields[0]` is the state, field 3 of proc(5).
fn stat_fields(path: &Path) -> Vec<u64> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

/// CPU seconds (user and system) of this process's threads named `name`.
fn threads_cpu(name: &str) -> f64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let f = stat_fields(&task.path().join("stat"));
            // utime and stime: fields 14 and 15 of proc(5).
            ticks += f[11] + f[12];
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// Starts the server on its own two-thread runtime; returns its URL.
fn start_server(seen: Arc<Seen>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREADS)
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

/// What one `qt` run took: its wall time, and its CPU time per message over the server's
/// window (see [`run_qt`]).
struct QtRun {
    wall: f64,
    cpu_us_per_message: f64,
}

/// Runs `qt run --until-idle` and checks that every message succeeded.
///
/// While it runs, the `qt` process's CPU time is read every few milliseconds beside the
/// server's request count, so that its CPU per message is taken over the same window as the
/// rate: from the first reading after requests began to the last one before they ended,
/// leaving out start-up (reading and parsing the messages file) and exit.
fn run_qt(config: &Path, n: usize, seen: &Seen) -> QtRun {
    let start = Instant::now();
    let mut child = Command::new(QT)
        .args(["run", "-c"])
        .arg(config)
        .arg("--until-idle")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qt");
    // Read while it runs, so that a chatty `qt` never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let stat = std::path::PathBuf::from(format!("/proc/{}/stat", child.id()));
    // (requests seen, CPU ticks) at the first reading with requests, and at the latest one
    // before the last request.
    let mut first: Option<(u64, u64)> = None;
    let mut last = None;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for qt") {
            break status;
        }
        let f = stat_fields(&stat);
        let count = seen.count.load(Ordering::SeqCst);
        if f.len() > 12 && count > 0 && count < n as u64 {
            // utime and stime: fields 14 and 15 of proc(5).
            let reading = (count, f[11] + f[12]);
            first.get_or_insert(reading);
            last = Some(reading);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let wall = start.elapsed().as_secs_f64();
    let stdout = stdout.join().expect("reading qt's stdout panicked");
    let stderr = stderr.join().expect("reading qt's stderr panicked");
    assert!(status.success(), "qt failed ({status}):\n{stdout}\n{stderr}");
    let succeeded: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("succeeded"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no succeeded row in qt's summary:\n{stdout}"));
    assert_eq!(succeeded, n as u64, "qt's summary:\n{stdout}");
    let cpu_us_per_message = match (first, last) {
        (Some((c0, t0)), Some((c1, t1))) if c1 > c0 => (t1 - t0) as f64 / TICKS_PER_SECOND * 1e6 / (c1 - c0) as f64,
        _ => f64::NAN,
    };
    QtRun {
        wall,
        cpu_us_per_message,
    }
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
        .thread_name(CLIENT_THREADS)
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
        run_qt(&config, n, &seen);
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
        let (mut qt_cpus, mut plain_cpus) = (Vec::new(), Vec::new());
        let per_message_us = |cpu: f64| cpu * 1e6 / n as f64;
        for round in 1..=ROUNDS {
            seen.reset();
            let server_before = threads_cpu(SERVER_THREADS);
            let QtRun {
                wall,
                cpu_us_per_message,
            } = run_qt(&config, n, &seen);
            qt_cpus.push(cpu_us_per_message);
            let qt_server = per_message_us(threads_cpu(SERVER_THREADS) - server_before);
            let (count, secs) = seen.window();
            assert_eq!(count, n as u64);
            qt_rates.push(count as f64 / secs);
            qt_walls.push(wall);

            seen.reset();
            let (cpu_before, server_before) = (threads_cpu(CLIENT_THREADS), threads_cpu(SERVER_THREADS));
            run_reqwest(&client_rt, &url, &requests, concurrency);
            plain_cpus.push(per_message_us(threads_cpu(CLIENT_THREADS) - cpu_before));
            let plain_server = per_message_us(threads_cpu(SERVER_THREADS) - server_before);
            let (count, plain_secs) = seen.window();
            assert_eq!(count, n as u64);
            plain_rates.push(count as f64 / plain_secs);
            eprintln!(
                "http, concurrency {concurrency}, round {round}: qt {:.0}/s ({secs:.2} s, process {wall:.2} s, {:.1} µs CPU/message, server {qt_server:.1}), reqwest {:.0}/s ({:.1} µs CPU/message, server {plain_server:.1})",
                qt_rates[round - 1],
                qt_cpus[round - 1],
                plain_rates[round - 1],
                plain_cpus[round - 1]
            );
        }
        let (qt_cpu, _, _) = median_and_range(qt_cpus);
        let (plain_cpu, _, _) = median_and_range(plain_cpus);
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
                "qt_cpu_us_per_message": qt_cpu,
                "reqwest_cpu_us_per_message": plain_cpu,
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
        let wall = run_qt(&config, n_command, &seen).wall;
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
