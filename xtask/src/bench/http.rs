//! `cargo xtask bench http`: the measuring code is `crates/qt-cli/benches/http_throughput.rs`.

use anyhow::Result;

use super::{machine_description, record_section, run_bench};

const GOAL_MESSAGES_PER_SECOND: f64 = 30_000.0;
const GOAL_RATIO: f64 = 0.8;

pub fn run() -> Result<()> {
    let rows = run_bench("http", "qt-cli", "http_throughput", &[])?.rows;
    let mut body = String::from(
        "## HTTP target\n\n\
         The real `qt` binary, `qt run --until-idle` over the mock source (200-byte JSON \
         messages, distinct dedup keys, in-memory idempotency store and ledger), one `http` \
         target pointed at a server in the benchmark process that answers every POST at once \
         with an empty 200 (HTTP/1.1, keep-alive). Beside it, a plain reqwest loop (one client, \
         `concurrency` tasks) posting exactly the bodies and headers qt sent in an unmeasured \
         warm-up run, to the same server. Rounds alternate, qt then reqwest, three times; the \
         table shows medians and the range of the three. Rates are over the server's window, \
         first request to last, so qt's process start-up, reading of the messages file and \
         exit are excluded; `qt process` is messages over the whole process's wall time, \
         start-up included. qt, the server (two worker threads) and the reqwest loop (two \
         worker threads) share the machine.\n\n\
         | concurrency | messages | qt messages/s (median) | qt range | qt process messages/s | reqwest messages/s (median) | reqwest range | ratio qt / reqwest |\n\
         |---:|---:|---:|---|---:|---:|---|---:|\n",
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let http: Vec<_> = rows.iter().filter(|r| r["target"] == "http").collect();
    for r in &http {
        body.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} to {:.0} | {:.0} | {:.0} | {:.0} to {:.0} | {:.2} |\n",
            r["concurrency"],
            r["messages"],
            f(r, "qt_messages_per_second"),
            f(r, "qt_min"),
            f(r, "qt_max"),
            f(r, "qt_process_messages_per_second"),
            f(r, "reqwest_messages_per_second"),
            f(r, "reqwest_min"),
            f(r, "reqwest_max"),
            f(r, "ratio"),
        ));
    }
    for r in rows.iter().filter(|r| r["target"] == "command") {
        body.push_str(&format!(
            "\nFor contrast, the `command` target on the same workload running `/bin/true` per \
             message, concurrency {}, {} messages: {:.0} messages/s (median of three; range {:.0} \
             to {:.0}), over the `qt` process's wall time, start-up included.\n",
            r["concurrency"],
            r["messages"],
            f(r, "qt_process_messages_per_second"),
            f(r, "qt_min"),
            f(r, "qt_max"),
        ));
    }
    // Each concurrency is held to the goals on its own: the best of several is not a verdict.
    let verdict = |ok: bool| if ok { "meets" } else { "falls short of" };
    body.push('\n');
    for r in &http {
        let (rate, ratio) = (f(r, "qt_messages_per_second"), f(r, "ratio"));
        body.push_str(&format!(
            "At concurrency {}, qt's median of {rate:.0} messages/s {} the goal of \
             {GOAL_MESSAGES_PER_SECOND:.0}, and its ratio of {ratio:.2} {} the goal of {GOAL_RATIO}.\n",
            r["concurrency"],
            verdict(rate >= GOAL_MESSAGES_PER_SECOND),
            verdict(ratio >= GOAL_RATIO),
        ));
    }
    body.push_str(&format!(
        "\nCommand: `cargo xtask bench http` (release profile; `QT_BENCH_HTTP_MESSAGES`, \
         `QT_BENCH_HTTP_CONCURRENCY`, `QT_BENCH_COMMAND_MESSAGES` change the workload). \
         Machine: {}.\nGoal: a ratio qt / reqwest of at least 0.8, and at least 30,000 \
         messages/s with the server on the same machine.\n",
        machine_description()
    ));
    record_section("http", &body)
}
