//! End-to-end tests that run the built `qt` binary on the mock source.

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::Duration;

mod support;

use support::agent::ExampleHttpAgent;
use support::dlq::{DlqStory, breakable_agent, story_prefix};
use support::files::{by_message, jsonl, status_of};
use support::free_port;
use support::http::http_get;
use support::process::{QtRun, qt, run_bounded, summary};
use support::wait::wait_until;

/// Long enough for any of these commands on a loaded machine; they take about a second.
const BOUND: Duration = Duration::from_secs(60);

/// Acceptance 1: the example reaches every outcome row; the ledger and the DLQ file say
/// what happened to each message.
#[test]
fn the_example_reaches_every_outcome() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        qt().args(["run", "-c", "examples/mock.yaml", "--until-idle"])
            .env("QT_OUT_DIR", out_dir.path())
            .env("QT_ADMIN_LISTEN", "127.0.0.1:0"),
        out_dir.path(),
        BOUND,
    );
    assert!(out.status.success());
    let s = summary(&out.stdout);
    for row in [
        "received",
        "succeeded",
        "duplicates",
        "rejected",
        "deferred",
        "retried",
        "dead-lettered",
        "parse failures",
    ] {
        assert!(
            s.get(row).copied().unwrap_or(0) >= 1,
            "summary row {row} is zero: {s:?}"
        );
    }
    assert_eq!(s["succeeded"], 8, "{s:?}");
    assert_eq!(s["duplicates"], 1);
    assert_eq!(s["rejected"], 1);
    assert_eq!(s["parse failures"], 1);
    assert_eq!(
        s["dead-lettered"], 4,
        "parse failure, retries exhausted, permanent, unrouted"
    );

    let ledger = jsonl(&out_dir.path().join("ledger.jsonl"));
    let mut final_status = BTreeMap::new();
    for r in &ledger {
        for field in [
            "status",
            "attempts",
            "duration_ms",
            "trace_id",
            "message_id",
            "queue",
            "settlement",
        ] {
            assert!(r.get(field).is_some(), "record without {field}: {r}");
        }
        assert_eq!(r["trace_id"].as_str().unwrap().len(), 32);
        final_status.insert(r["message_id"].as_str().unwrap().to_owned(), r.clone());
    }
    let status = |id: &str| final_status[id]["status"].as_str().unwrap().to_owned();
    assert_eq!(status("ok-1"), "succeeded");
    assert_eq!(final_status["ok-1"]["tenant_id"], "acme");
    assert_eq!(final_status["ok-1"]["llm_calls"], 1);
    assert_eq!(status("dup-1"), "duplicate");
    assert_eq!(status("other-tenant-1"), "succeeded");
    assert_eq!(status("bad-json"), "parse_failed");
    assert_eq!(status("denied-1"), "rejected");
    assert_eq!(final_status["denied-1"]["decision_policies"][0], "suspended-tenants");
    for busy in ["busy-1", "busy-2", "busy-3"] {
        assert_eq!(status(busy), "succeeded");
    }
    assert!(
        ledger
            .iter()
            .any(|r| r["status"] == "deferred" && r["message_id"].as_str().unwrap().starts_with("busy"))
    );
    assert_eq!(status("flaky-1"), "succeeded");
    assert_eq!(final_status["flaky-1"]["attempts"], 3);
    assert_eq!(status("broken-1"), "failed");
    assert_eq!(final_status["broken-1"]["attempts"], 3);
    assert_eq!(final_status["broken-1"]["retries"].as_array().unwrap().len(), 3);
    assert_eq!(status("invalid-1"), "failed");
    assert_eq!(final_status["invalid-1"]["attempts"], 1);
    assert_eq!(status("unrouted-1"), "unrouted");

    let dlq = jsonl(&out_dir.path().join("dlq.jsonl"));
    let reasons: BTreeMap<String, String> = dlq
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons["bad-json"].contains("invalid JSON at line 1"), "{reasons:?}");
    assert!(reasons["broken-1"].starts_with("retries_exhausted"), "{reasons:?}");
    assert!(reasons["invalid-1"].starts_with("permanent_failure"), "{reasons:?}");
    assert!(reasons["unrouted-1"].contains("no route"), "{reasons:?}");
    let broken = dlq.iter().find(|d| d["id"] == "broken-1").unwrap();
    assert_eq!(broken["headers"]["x-qt-attempts"], "3");
    assert_eq!(broken["headers"]["x-qt-error-class"], "retryable");
    assert_eq!(broken["headers"]["x-tenant-id"], "acme", "original headers are kept");
}

/// Acceptance 2: five different mistakes are all reported with their paths.
#[test]
fn validate_reports_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
source:
  type: kafka
  brokers: [localhost:9092]
  topics: [orders]
  consumer_group: ""
processing:
  concurrency: 0
  on_failure: explode
retry:
  backoff: {initial: soon}
agent:
  targets: {main: {type: log}}
  routes: [{event: "order.*", target: missing}]
observability:
  admn: {}
"#,
    )
    .unwrap();
    let out = run_bounded(qt().args(["validate", "-c"]).arg(&path), dir.path(), BOUND);
    assert_eq!(out.status.code(), Some(2));
    let err = &out.stderr;
    for path in [
        "source.consumer_group:",
        "processing.concurrency:",
        "processing.on_failure:",
        "retry.backoff.initial:",
        "agent.routes[0].target:",
        "observability.admn:",
    ] {
        assert!(err.contains(path), "{path} not reported in:\n{err}");
    }
}

/// Every configuration in examples/ is accepted by `qt validate` with `.env.example` loaded
/// (what CI checks, since this test runs there), and the output starts with the source's
/// capabilities; without the variables, the broker examples are refused naming the variable.
#[test]
fn every_example_validates_with_the_env_example_and_shows_its_source_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let env = support::env_example();
    let mut examples: Vec<_> = std::fs::read_dir(support::repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    examples.sort();
    let names: Vec<String> = examples
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for broker in ["kafka.yaml", "rabbitmq.yaml", "sqs.yaml", "mock.yaml"] {
        assert!(
            names.iter().any(|n| n == broker),
            "examples/{broker} missing from {names:?}"
        );
    }
    for (example, name) in examples.iter().zip(&names) {
        let mut cmd = qt();
        cmd.args(["validate", "-c"]).arg(example);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let kind = name.strip_suffix(".yaml").unwrap();
        let kind = if ["kafka", "rabbitmq", "sqs"].contains(&kind) {
            kind
        } else {
            "mock"
        };
        let out = run_bounded(&mut cmd, dir.path(), BOUND);
        out.assert_shows(&[
            ": valid.",
            &format!("# Source {kind} ("),
            "# Notes:",
            "# Effective configuration (secrets masked):",
            &format!("type: {kind}"),
        ]);
        assert_eq!(
            capability(&out.stdout, "dead-letters itself (on_*: dlq)"),
            "yes",
            "{name}"
        );
        let ordering = capability(&out.stdout, "ordering unit");
        assert!(
            ["none", "partition", "message group", "queue"].contains(&ordering),
            "{name}: {ordering}"
        );
    }
    let validate_without = |example: &str, unset: &str| {
        let mut cmd = qt();
        cmd.args(["validate", "-c", example]);
        for (k, v) in env.iter().filter(|(k, _)| k != unset) {
            cmd.env(k, v);
        }
        cmd.env_remove(unset);
        run_bounded(&mut cmd, dir.path(), BOUND)
    };
    validate_without("examples/kafka.yaml", "KAFKA_BROKERS")
        .assert_refused(&["source.brokers[0]: environment variable KAFKA_BROKERS is not set"]);
    let rabbitmq = validate_without("examples/rabbitmq.yaml", "RABBITMQ_PASSWORD");
    rabbitmq.assert_refused(&["source.url: environment variable RABBITMQ_PASSWORD is not set"]);
    let sqs = validate_without("examples/sqs.yaml", "SQS_ENDPOINT_URL");
    sqs.assert_refused(&["source.endpoint_url: environment variable SQS_ENDPOINT_URL is not set"]);
}

/// `qt validate` shows the capabilities of the source as configured: a Kafka source without
/// a dead-letter topic says it cannot dead-letter and why.
#[test]
fn validate_shows_what_a_source_without_a_dead_letter_destination_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kafka.yaml");
    std::fs::write(
        &cfg,
        "source: {type: kafka, brokers: [\"127.0.0.1:9092\"], topics: [orders], consumer_group: g}\n\
         processing: {on_failure: nack, on_parse_failure: nack, on_unrouted: ack}\n\
         agent: {targets: {main: {type: log}}}\n",
    )
    .unwrap();
    let out = run_bounded(qt().args(["validate", "-c"]).arg(&cfg), dir.path(), BOUND);
    out.assert_shows(&["# Source kafka (orders) capabilities:"]);
    assert_eq!(capability(&out.stdout, "dead-letters itself (on_*: dlq)"), "no");
    assert_eq!(capability(&out.stdout, "ordering unit"), "partition");
    assert_eq!(capability(&out.stdout, "pauses intake at the broker"), "yes");
}

/// `on_failure: requeue` without a limit is valid, and `qt validate` warns about it on
/// stderr; `qt run` logs the same warning when it starts.
#[test]
fn an_unlimited_requeue_is_valid_but_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("requeue.yaml");
    std::fs::write(
        &cfg,
        "source: {type: mock, queue: orders}\n\
         processing: {on_failure: requeue, max_requeues: unlimited}\n\
         agent: {targets: {main: {type: log}}}\n\
         observability: {admin: {enabled: false}}\n",
    )
    .unwrap();
    let warning = "processing.max_requeues: on_failure: requeue without a limit";
    let out = run_bounded(qt().args(["validate", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("qt: warning: {}: {warning}", cfg.display())),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("max_requeues: unlimited"), "{}", out.stdout);
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains(warning), "{}", out.stderr);
}

/// The value `qt validate` printed for one capability (`#   LABEL   VALUE`).
fn capability<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("#   ")?.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no capability line {label:?} in:\n{stdout}"))
}

/// Acceptance 2: no configured secret appears in any output of any subcommand.
#[test]
fn secrets_never_appear_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("secret.yaml");
    let messages = dir.path().join("m.jsonl");
    std::fs::write(
        &messages,
        "{\"id\":\"a\",\"json\":{}}\n{\"id\":\"b\",\"text\":\"not json\"}\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, file: {}}}
processing: {{on_parse_failure: nack}}
agent:
  targets:
    main:
      type: command
      program: /bin/cat
      env: {{API_TOKEN: "${{QT_TEST_TOKEN}}"}}
ledger: {{type: jsonl, path: {}}}
observability: {{admin: {{listen: "127.0.0.1:0"}}, log: {{level: debug}}}}
"#,
            messages.display(),
            dir.path().join("ledger.jsonl").display()
        ),
    )
    .unwrap();
    let secret = "tok-9f8e7d6c5b4a";
    let validate = run_bounded(
        qt().args(["validate", "-c"]).arg(&cfg).env("QT_TEST_TOKEN", secret),
        dir.path(),
        BOUND,
    );
    assert!(validate.status.success());
    let run_out = run_bounded(
        qt().args(["run", "--until-idle", "-c"])
            .arg(&cfg)
            .env("QT_TEST_TOKEN", secret),
        dir.path(),
        BOUND,
    );
    assert!(run_out.status.success());
    for out in [&validate, &run_out] {
        assert!(!out.stdout.contains(secret));
        assert!(!out.stderr.contains(secret));
    }
    assert!(validate.stdout.contains("API_TOKEN: '***'"), "masked, not dropped");
}

/// An `http` target's header values, token and password never appear in `qt validate` or
/// `qt run` output, even when the agent echoes them back in a failure's body; the failure is
/// permanent (401) and its status reaches the ledger.
#[test]
fn http_target_secrets_never_appear_in_output_even_when_the_agent_echoes_them() {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            // Read the head and the body: the body's length is in content-length.
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            let echo = String::from_utf8_lossy(&request).into_owned();
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{echo}",
                echo.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("http.yaml");
    let messages = dir.path().join("m.jsonl");
    let ledger = dir.path().join("ledger.jsonl");
    std::fs::write(&messages, "{\"id\":\"a\",\"json\":{}}\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, file: {}}}
processing: {{on_failure: ack}}
agent:
  targets:
    main:
      type: http
      url: "http://bot:${{QT_TEST_URL_PW}}@{addr}/run"
      headers: {{x-api-key: "${{QT_TEST_KEY}}"}}
      auth: {{bearer: "${{QT_TEST_TOKEN}}"}}
ledger: {{type: jsonl, path: {}}}
observability: {{admin: {{listen: "127.0.0.1:0"}}, log: {{level: debug}}}}
"#,
            messages.display(),
            ledger.display()
        ),
    )
    .unwrap();
    let secrets = [
        ("QT_TEST_URL_PW", "urlpw-1a2b3c"),
        ("QT_TEST_KEY", "key-4d5e6f"),
        ("QT_TEST_TOKEN", "tok-7a8b9c"),
    ];
    let with_secrets = |cmd: &mut std::process::Command| {
        for (k, v) in secrets {
            cmd.env(k, v);
        }
    };
    let mut validate_cmd = qt();
    validate_cmd.args(["validate", "-c"]).arg(&cfg);
    with_secrets(&mut validate_cmd);
    let validate = run_bounded(&mut validate_cmd, dir.path(), BOUND);
    assert!(validate.status.success(), "{}", validate.stderr);
    let mut run_cmd = qt();
    run_cmd.args(["run", "--until-idle", "-c"]).arg(&cfg);
    with_secrets(&mut run_cmd);
    let run_out = run_bounded(&mut run_cmd, dir.path(), BOUND);
    assert!(run_out.status.success(), "{}", run_out.stderr);
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(ledger_text.contains("401"), "{ledger_text}");
    let url_basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bot:urlpw-1a2b3c");
    for secret in secrets.iter().map(|(_, v)| *v).chain([url_basic.as_str()]) {
        for (what, text) in [
            ("validate stdout", &validate.stdout),
            ("validate stderr", &validate.stderr),
            ("run stdout", &run_out.stdout),
            ("run stderr", &run_out.stderr),
            ("ledger", &ledger_text),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
    assert!(
        validate.stdout.contains("x-api-key: '***'"),
        "masked, not dropped: {}",
        validate.stdout
    );
}

/// `qt send` publishes into a running `qt run` of the same configuration; SIGTERM drains
/// and exits cleanly.
#[test]
fn send_feeds_a_running_trigger_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("send.yaml");
    let ledger = dir.path().join("ledger.jsonl");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock}}\nagent: {{targets: {{main: {{type: log}}}}}}\nledger: {{type: jsonl, path: {}}}\nobservability: {{admin: {{listen: \"127.0.0.1:{port}\"}}}}\n",
            ledger.display()
        ),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(20));
    let sent = run_bounded(
        qt().args(["send", "-c"]).arg(&cfg).args([
            "--id",
            "sent-1",
            "--body",
            "{\"hello\":\"world\"}",
            "-H",
            "x-tenant-id=acme",
            "-H",
            "x-event-name=greeting",
        ]),
        dir.path(),
        BOUND,
    );
    assert!(sent.status.success());
    assert!(sent.stdout.contains("sent-1"));
    let records = || std::fs::read_to_string(&ledger).unwrap_or_default();
    wait_until(
        "the sent message in the ledger",
        Duration::from_secs(20),
        || records().contains("\"sent-1\""),
        || run.logs(),
    );
    let records = records();
    assert!(records.contains("\"succeeded\""), "{records}");
    assert!(records.contains("\"greeting\""), "{records}");
    // qt send started a trace, and the message continued it.
    assert_eq!(sent.sent_id(), "sent-1");
    let trace = sent.sent_trace();
    assert!(
        records.contains(&format!("\"trace_id\":\"{trace}\"")),
        "trace {trace} in {records}"
    );
    let get = |path: &str| {
        let (code, body) = http_get(port, path).expect("the admin server answers");
        assert_eq!(code, 200, "{path}: {body}");
        body
    };
    let metrics = get("/metrics");
    assert!(
        metrics.contains("qt_messages_processed_total{outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    get("/readyz");
    let status = get("/status");
    assert!(status.contains("\"state\":\"running\""), "{status}");
    let status = run.terminate(Duration::from_secs(20));
    let logs = run.logs();
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
}

/// A mock-source configuration whose admin server on `port` needs the token in
/// `QT_TEST_ADMIN_TOKEN`, and whose agent notes each message it starts in `started` and then
/// takes `sleep` to finish; records go to `ledger`.
fn admin_config(
    dir: &std::path::Path,
    port: u16,
    sleep: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let cfg = dir.join("admin.yaml");
    let ledger = dir.join("ledger.jsonl");
    let started = dir.join("started");
    std::fs::write(
        &cfg,
        format!(
            r#"
name: paused-e2e
source: {{type: mock}}
agent:
  targets:
    main:
      type: command
      program: /bin/sh
      args: ["-c", "cat > /dev/null; echo \"$QT_MESSAGE_ID\" >> {started}; sleep {sleep}"]
ledger: {{type: jsonl, path: {ledger}}}
observability:
  admin: {{listen: "127.0.0.1:{port}", token: "${{QT_TEST_ADMIN_TOKEN}}"}}
  log: {{level: debug}}
"#,
            started = started.display(),
            ledger = ledger.display(),
        ),
    )
    .unwrap();
    (cfg, ledger, started)
}

/// `qt pause` stops intake of the running `qt run` of the same configuration: `/readyz`
/// answers 503 saying paused, the run that was going finishes and is recorded while paused, a
/// message sent meanwhile waits, and `qt resume` runs it. The token is sent by every command
/// and printed by none.
#[test]
fn pause_holds_new_messages_until_resume_while_the_run_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (cfg, ledger, started) = admin_config(dir.path(), port, "2");
    let token = "adm-tok-5e6f7a8b";
    let env = [("QT_TEST_ADMIN_TOKEN", token)];
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &env);
    run.wait_ready(Duration::from_secs(20));
    let send = |id: &str| {
        let sent = run_bounded(
            qt().args(["send", "-c"])
                .arg(&cfg)
                .args(["--id", id, "--body", "{}"])
                .envs(env),
            dir.path(),
            BOUND,
        );
        assert_eq!(sent.sent_id(), id);
        sent
    };
    let started_ids = || std::fs::read_to_string(&started).unwrap_or_default();
    let recorded = || std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut outputs = vec![send("in-flight")];
    wait_until(
        "the first run to start",
        Duration::from_secs(20),
        || started_ids().contains("in-flight"),
        || run.logs(),
    );

    let paused = run_bounded(qt().args(["pause", "-c"]).arg(&cfg).envs(env), dir.path(), BOUND);
    paused.assert_shows(&["paused-e2e paused (was running)"]);
    assert!(
        !recorded().contains("\"in-flight\""),
        "the pause answered before the run ended (it takes 2 s)"
    );
    let (code, body) = http_get(port, "/readyz").expect("the admin server answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"state\":\"paused\""), "{body}");
    outputs.push(send("while-paused"));
    wait_until(
        "the run in flight to finish while paused",
        Duration::from_secs(20),
        || recorded().contains("\"in-flight\""),
        || run.logs(),
    );
    assert!(recorded().contains("\"succeeded\""), "{}", recorded());
    // Long enough for intake to have taken the message, had it not been paused.
    std::thread::sleep(Duration::from_millis(700));
    assert!(!started_ids().contains("while-paused"), "a message ran while paused");
    let (code, status) = support::http::http_get_as(port, "/status", Some(token)).expect("the admin server answers");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"]["state"], "paused", "{status}");

    let resumed = run_bounded(qt().args(["resume", "-c"]).arg(&cfg).envs(env), dir.path(), BOUND);
    resumed.assert_shows(&["paused-e2e running (was paused)"]);
    wait_until(
        "the message sent while paused to run after the resume",
        Duration::from_secs(20),
        || recorded().contains("\"while-paused\""),
        || run.logs(),
    );
    run.wait_ready(Duration::from_secs(5));
    let exit = run.terminate(Duration::from_secs(20));
    let logs = run.logs();
    assert!(exit.success(), "{logs}");
    assert!(
        logs.contains("trigger paused") && logs.contains("trigger resumed"),
        "{logs}"
    );
    let validate = run_bounded(qt().args(["validate", "-c"]).arg(&cfg).envs(env), dir.path(), BOUND);
    validate.assert_shows(&["token: '***'"]);
    outputs.extend([paused, resumed, validate]);
    for out in &outputs {
        for text in [&out.stdout, &out.stderr] {
            assert!(!text.contains(token), "the token in {}: {text}", out.command);
        }
    }
    assert!(!logs.contains(token), "the token in qt run's debug log");
}

/// `qt pause` fails with a message that says why: a token that does not match the running
/// `qt run`'s, nothing listening, or an admin server the configuration disables.
#[test]
fn qt_pause_fails_clearly_on_a_wrong_token_nothing_listening_or_no_admin_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (cfg, _, _) = admin_config(dir.path(), port, "0");
    let token = "adm-tok-right-1";
    let mut run = QtRun::start(
        &cfg,
        &dir.path().join("qt.log"),
        port,
        &[("QT_TEST_ADMIN_TOKEN", token)],
    );
    run.wait_ready(Duration::from_secs(20));
    let wrong = run_bounded(
        qt().args(["pause", "-c"])
            .arg(&cfg)
            .env("QT_TEST_ADMIN_TOKEN", "adm-tok-wrong-2"),
        dir.path(),
        BOUND,
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", wrong.stderr);
    assert!(
        wrong
            .stderr
            .contains("the bearer token does not match observability.admin.token"),
        "{}",
        wrong.stderr
    );
    for secret in [token, "adm-tok-wrong-2"] {
        assert!(
            !wrong.stderr.contains(secret) && !wrong.stdout.contains(secret),
            "{}",
            wrong.stderr
        );
    }
    let (code, body) = http_get(port, "/readyz").expect("the admin server answers");
    assert_eq!(code, 200, "still running after the refused pause: {body}");
    let exit = run.terminate(Duration::from_secs(20));
    assert!(exit.success(), "{}", run.logs());

    let nothing = run_bounded(
        qt().args(["pause", "-c"]).arg(&cfg).env("QT_TEST_ADMIN_TOKEN", token),
        dir.path(),
        BOUND,
    );
    assert_eq!(nothing.status.code(), Some(1), "{}", nothing.stderr);
    assert!(
        nothing
            .stderr
            .contains(&format!("nothing answers at http://127.0.0.1:{port}/pause")),
        "{}",
        nothing.stderr
    );

    let disabled = dir.path().join("disabled.yaml");
    std::fs::write(
        &disabled,
        "source: {type: mock}\nagent: {targets: {main: {type: log}}}\nobservability: {admin: {enabled: false}}\n",
    )
    .unwrap();
    let off = run_bounded(qt().args(["resume", "-c"]).arg(&disabled), dir.path(), BOUND);
    assert_eq!(off.status.code(), Some(1), "{}", off.stderr);
    assert!(
        off.stderr.contains("observability.admin.enabled: false"),
        "{}",
        off.stderr
    );
}

/// `qt run` refuses an admin server on an outside address with no token, naming the field.
#[test]
fn qt_run_refuses_an_outside_admin_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("open.yaml");
    std::fs::write(
        &cfg,
        "source: {type: mock}\nagent: {targets: {main: {type: log}}}\nobservability: {admin: {listen: \"0.0.0.0:0\"}}\n",
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    out.assert_refused(&["observability.admin.listen", "observability.admin.token"]);
}

/// A body nested past what a value tree holds, or with a lone surrogate escape, used to
/// panic at the first extraction rule and be put back at the front of the queue forever.
/// Each is now a parse failure, dead-lettered with its reason, and the queue goes on.
#[test]
fn hostile_json_bodies_are_dead_lettered_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let lines = [
        serde_json::json!({"id": "deep", "text": deep}),
        serde_json::json!({"id": "surrogate", "text": r#"{"type": "order.created", "note": "\ud800"}"#}),
        serde_json::json!({"id": "fine", "json": {"type": "order.created"}}),
    ];
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(&messages, lines.map(|l| l.to_string()).join("\n")).unwrap();
    let (ledger, dlq) = (dir.path().join("ledger.jsonl"), dir.path().join("dlq.jsonl"));
    let cfg = dir.path().join("hostile.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock, file: {}, dlq_file: {}}}\n\
             processing: {{extraction: {{event_name: [{{pointer: /type}}]}}, on_parse_failure: dlq}}\n\
             agent: {{targets: {{main: {{type: log}}}}}}\n\
             ledger: {{type: jsonl, path: {}}}\n\
             observability: {{admin: {{listen: \"127.0.0.1:0\"}}}}\n",
            messages.display(),
            dlq.display(),
            ledger.display()
        ),
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    let records = by_message(&jsonl(&ledger));
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(status_of(&records["fine"][0]), "succeeded");
    for id in ["deep", "surrogate"] {
        assert_eq!(records[id].len(), 1, "{id} has one outcome: {records:?}");
        assert_eq!(status_of(&records[id][0]), "parse_failed", "{id}");
    }
    let dead: BTreeMap<String, String> = jsonl(&dlq)
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(dead["deep"].contains("recursion limit exceeded"), "{dead:?}");
    assert!(dead["surrogate"].contains("line 1, column"), "{dead:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// `--until-idle` is refused for broker sources with a reason, and bad input exits
/// non-zero naming the problem.
#[test]
fn until_idle_needs_the_mock_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kafka.yaml");
    std::fs::write(
        &cfg,
        "source: {type: kafka, brokers: [\"127.0.0.1:1\"], topics: [t], consumer_group: g, dlq_topic: t.dlq}\nagent: {targets: {main: {type: log}}}\n",
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("--until-idle needs `source.type: mock`"));
    let missing = run_bounded(qt().args(["run", "-c", "/nonexistent/qt.yaml"]), dir.path(), BOUND);
    assert_eq!(missing.status.code(), Some(2));
    assert!(missing.stderr.contains("cannot read /nonexistent/qt.yaml"));
}

/// The ids of a dead-letter file, each with its record; an id dead-lettered twice fails.
fn dead_letters(path: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for d in jsonl(path) {
        let id = d["id"].as_str().unwrap().to_owned();
        assert!(out.insert(id.clone(), d).is_none(), "{id} dead-lettered twice");
    }
    out
}

/// The README's two commands: `examples/http_agent.py` answers by the protocol and
/// `examples/http-agent.yaml` takes each message to its outcome: a success, a 503 with
/// `Retry-After` that succeeds on the retry, and a 422 that is dead-lettered at once.
#[test]
fn the_http_example_succeeds_retries_after_a_503_and_dead_letters_a_422() {
    let out_dir = tempfile::tempdir().unwrap();
    let agent = ExampleHttpAgent::start(out_dir.path(), BOUND);
    let out = run_bounded(
        qt().args(["run", "-c", "examples/http-agent.yaml", "--until-idle"])
            .env("QT_AGENT_URL", &agent.url)
            .env("QT_OUT_DIR", out_dir.path())
            .env("QT_ADMIN_LISTEN", "127.0.0.1:0"),
        out_dir.path(),
        BOUND,
    );
    eprintln!("http_agent.py log:\n{}", agent.logs());
    assert!(out.status.success(), "{}", out.stderr);
    let s = summary(&out.stdout);
    assert_eq!(s["received"], 4, "{s:?}");
    assert_eq!(s["succeeded"], 3, "{s:?}");
    assert_eq!(s["retried"], 1, "{s:?}");
    assert_eq!(s["dead-lettered"], 1, "{s:?}");

    let records = by_message(&jsonl(&out_dir.path().join("ledger.jsonl")));
    assert_eq!(records.len(), 4, "{records:#?}");
    for (id, rs) in &records {
        assert_eq!(rs.len(), 1, "{id} has one outcome: {rs:#?}");
    }
    let record = |id: &str| &records[id][0];
    for id in ["ok-1", "ok-2"] {
        let r = record(id);
        assert_eq!(status_of(r), "succeeded", "{r}");
        assert_eq!(r["settlement"], "ack", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert_eq!(
            r["agent_run_id"],
            format!("run-{id}-1"),
            "the agent's report is recorded: {r}"
        );
        assert_eq!(r["llm_calls"], 0, "{r}");
        assert_eq!(r["agent_output"]["handled"], r["event_name"], "{r}");
    }
    let retried = record("retry-1");
    assert_eq!(status_of(retried), "succeeded", "{retried}");
    assert_eq!(retried["settlement"], "ack", "{retried}");
    assert_eq!(retried["attempts"], 2, "{retried}");
    assert_eq!(retried["agent_run_id"], "run-retry-1-2", "{retried}");
    let first_try = &retried["retries"][0];
    assert_eq!(first_try["class"], "retryable", "{retried}");
    assert!(first_try["reason"].as_str().unwrap().contains("503"), "{retried}");
    assert_eq!(first_try["backoff_ms"], 1000, "Retry-After: 1 is the delay: {retried}");
    let rejected = record("reject-1");
    assert_eq!(status_of(rejected), "failed", "{rejected}");
    assert_eq!(rejected["settlement"], "dead_letter", "{rejected}");
    assert_eq!(
        rejected["attempts"], 1,
        "a permanent failure is not retried: {rejected}"
    );
    assert_eq!(rejected["error_class"], "permanent", "{rejected}");
    assert!(rejected["error"].as_str().unwrap().contains("422"), "{rejected}");

    let dlq = dead_letters(&out_dir.path().join("dlq.jsonl"));
    assert_eq!(dlq.keys().collect::<Vec<_>>(), ["reject-1"], "{dlq:#?}");
    assert!(
        dlq["reject-1"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("permanent_failure")
    );
    assert_eq!(dlq["reject-1"]["json"]["fail"], "always", "the original body is kept");

    // The server's side: one log line per request, the retry carrying the same key.
    let log = agent.logs();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("POST /events ")).count(),
        5,
        "{log}"
    );
    assert!(log.contains("message=retry-1 key=acme:A-2 attempt=1 -> 503"), "{log}");
    assert!(log.contains("message=retry-1 key=acme:A-2 attempt=2 -> 200"), "{log}");
    assert!(log.contains("message=reject-1 key=acme:A-3 attempt=1 -> 422"), "{log}");
}

/// An agent that is not up yet when qt starts: its calls are refused and retried, and once
/// the agent listens the retries succeed. Nothing is dead-lettered.
#[test]
fn a_refused_http_agent_is_retried_until_it_starts_and_then_the_messages_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, dlq) = (dir.path().join("ledger.jsonl"), dir.path().join("dlq.jsonl"));
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(
        &messages,
        "{\"id\": \"late-1\", \"json\": {\"type\": \"order.created\", \"order_id\": \"L-1\"}}\n\
         {\"id\": \"late-2\", \"json\": {\"type\": \"order.created\", \"order_id\": \"L-2\"}}\n",
    )
    .unwrap();
    let cfg = dir.path().join("late.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, file: {messages}, dlq_file: {dlq}}}
processing:
  extraction: {{event_name: [{{pointer: /type}}], dedup_key: [{{pointer: /order_id}}]}}
  on_failure: dlq
retry: {{max_retries: 100, backoff: {{initial: 50ms, multiplier: 2.0, max: 200ms}}}}
agent:
  targets:
    service: {{type: http, url: "${{QT_AGENT_URL}}", timeout: 2s}}
ledger: {{type: jsonl, path: {ledger}}}
observability: {{admin: {{listen: "127.0.0.1:0"}}, log: {{format: text, level: warn}}}}
"#,
            messages = messages.display(),
            dlq = dlq.display(),
            ledger = ledger.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/events");
    let mut run = QtRun::spawn(
        qt().args(["run", "--until-idle", "-c"])
            .arg(&cfg)
            .env("QT_AGENT_URL", &url),
        &dir.path().join("qt.log"),
        0,
    );
    wait_until(
        "both messages refused at least once",
        BOUND,
        || {
            let log = run.logs();
            ["late-1", "late-2"].iter().all(|id| {
                log.lines()
                    .any(|l| l.contains("agent attempt failed") && l.contains(id))
            })
        },
        || run.logs(),
    );
    let agent = ExampleHttpAgent::start_on(dir.path(), port, BOUND);
    let status = run.wait_exit(BOUND);
    eprintln!("http_agent.py log:\n{}", agent.logs());
    assert!(status.success(), "{}", run.logs());
    let s = summary(&run.stdout());
    assert_eq!(s["succeeded"], 2, "{s:?}");
    assert_eq!(s["dead-lettered"], 0, "{s:?}");

    let records = by_message(&jsonl(&ledger));
    for id in ["late-1", "late-2"] {
        let rs = &records[id];
        assert_eq!(rs.len(), 1, "{id} has one outcome: {rs:#?}");
        let r = &rs[0];
        assert_eq!(status_of(r), "succeeded", "{r}");
        assert_eq!(r["settlement"], "ack", "{r}");
        let tries = r["retries"].as_array().unwrap();
        assert!(!tries.is_empty(), "the refused attempts are recorded: {r}");
        for t in tries {
            assert_eq!(t["class"], "retryable", "{r}");
            assert!(t["reason"].as_str().unwrap().to_lowercase().contains("connect"), "{r}");
        }
        assert_eq!(r["attempts"], tries.len() + 1, "{r}");
    }
    assert!(
        !dlq.exists() || dead_letters(&dlq).is_empty(),
        "nothing is dead-lettered"
    );
}

/// With nothing listening at the agent's URL, no message is acked or lost: each is tried
/// until its retries run out, then recorded `failed` (retryable, connection refused) and
/// dead-lettered with its body.
#[test]
fn when_the_http_agent_is_down_every_message_is_retried_then_dead_lettered_and_none_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, dlq) = (dir.path().join("ledger.jsonl"), dir.path().join("dlq.jsonl"));
    let cfg = dir.path().join("down.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, file: examples/http-messages.jsonl, dlq_file: {dlq}}}
processing:
  extraction: {{event_name: [{{pointer: /type}}], tenant_id: [{{header: x-tenant-id}}], dedup_key: [{{pointer: /order_id}}]}}
  on_failure: dlq
retry: {{max_retries: 2, backoff: {{initial: 10ms, multiplier: 2.0, max: 50ms}}}}
agent:
  targets:
    service: {{type: http, url: "${{QT_AGENT_URL}}", timeout: 2s}}
ledger: {{type: jsonl, path: {ledger}}}
observability: {{admin: {{listen: "127.0.0.1:0"}}}}
"#,
            dlq = dlq.display(),
            ledger = ledger.display()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}/events", free_port());
    let out = run_bounded(
        qt().args(["run", "--until-idle", "-c"])
            .arg(&cfg)
            .env("QT_AGENT_URL", &url),
        dir.path(),
        BOUND,
    );
    assert!(out.status.success(), "{}", out.stderr);
    let s = summary(&out.stdout);
    assert_eq!(s["received"], 4, "{s:?}");
    assert_eq!(s["succeeded"], 0, "{s:?}");
    assert_eq!(s["dead-lettered"], 4, "{s:?}");

    let ids = ["ok-1", "ok-2", "retry-1", "reject-1"];
    let records = by_message(&jsonl(&ledger));
    assert_eq!(records.len(), ids.len(), "{records:#?}");
    for id in ids {
        let rs = &records[id];
        assert_eq!(rs.len(), 1, "{id} has one outcome: {rs:#?}");
        let r = &rs[0];
        assert_eq!(status_of(r), "failed", "{r}");
        assert_eq!(r["settlement"], "dead_letter", "not acked: {r}");
        assert_eq!(r["error_class"], "retryable", "{r}");
        assert_eq!(r["attempts"], 3, "the first try and two retries: {r}");
        let tries = r["retries"].as_array().unwrap();
        assert_eq!(tries.len(), 3, "{r}");
        for t in tries {
            assert_eq!(t["class"], "retryable", "{r}");
            let reason = t["reason"].as_str().unwrap();
            assert!(reason.contains(&url) && reason.contains("failed"), "{r}");
        }
        let error = r["error"].as_str().unwrap();
        assert!(error.starts_with("retries_exhausted"), "{r}");
        assert!(
            error.to_ascii_lowercase().contains("connect"),
            "a connection error: {r}"
        );
    }
    assert!(
        jsonl(&ledger).iter().all(|r| r["settlement"] != "ack"),
        "nothing is acked while the agent is down"
    );

    let dead = dead_letters(&dlq);
    assert_eq!(dead.len(), ids.len(), "{dead:#?}");
    for id in ids {
        let d = &dead[id];
        assert!(d["reason"].as_str().unwrap().starts_with("retries_exhausted"), "{d}");
        assert_eq!(d["headers"]["x-qt-error-class"], "retryable", "{d}");
        assert_eq!(d["headers"]["x-qt-attempts"], "3", "{d}");
        assert!(d["json"]["order_id"].is_string(), "the original body is kept: {d}");
    }
}

/// The message ids of `qt ledger --json` output, sorted.
fn message_ids(json_lines: &str) -> Vec<String> {
    let mut ids: Vec<String> = json_lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

/// `qt ledger` answers questions about the example's run from its configuration alone:
/// query by status and message, stats, and tail following what is appended; bad options are
/// refused naming the option.
#[test]
fn the_ledger_commands_read_the_example_run_by_its_configuration() {
    let out_dir = tempfile::tempdir().unwrap();
    let dir = out_dir.path().to_str().unwrap();
    let example = |args: &[&str]| {
        run_bounded(
            qt().args(args)
                .args(["-c", "examples/mock.yaml"])
                .env("QT_OUT_DIR", dir)
                .env("QT_ADMIN_LISTEN", "127.0.0.1:0"),
            out_dir.path(),
            BOUND,
        )
    };
    assert!(example(&["run", "--until-idle"]).status.success());
    let ledger_file = out_dir.path().join("ledger.jsonl");
    let written = jsonl(&ledger_file);

    let failed = example(&["ledger", "query", "--status", "failed", "--json"]);
    failed.assert_shows(&[]);
    assert_eq!(message_ids(&failed.stdout), ["broken-1", "invalid-1"]);

    example(&["ledger", "query", "--message-id", "ok-1", "--since", "1h"]).assert_shows(&["ok-1", "succeeded", "acme"]);

    let stats = example(&["ledger", "stats", "--json"]);
    stats.assert_shows(&[]);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["records"], written.len(), "{stats}");
    let succeeded = written.iter().filter(|r| r["status"] == "succeeded").count();
    assert!(
        stats["by_status"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["succeeded", succeeded])),
        "{stats}"
    );
    assert!(stats["duration_ms"]["p99"].as_f64().is_some(), "{stats}");
    example(&["ledger", "stats"]).assert_shows(&["by status", "by tenant", "top failure reasons", "p99"]);

    example(&["ledger", "query", "--status", "lost"]).assert_refused(&[
        "--status",
        "unknown status \"lost\"",
        "succeeded",
    ]);
    example(&["ledger", "query", "--since", "yesterday"]).assert_refused(&["--since", "RFC 3339"]);
    example(&["ledger", "query", "--trace-id", "xyz"]).assert_refused(&["--trace-id", "32 hex digits"]);

    let tail = QtRun::spawn(
        qt().args([
            "ledger",
            "tail",
            "-n",
            "1",
            "--json",
            "--tenant",
            "acme",
            "-c",
            "examples/mock.yaml",
        ])
        .env("QT_OUT_DIR", dir),
        &out_dir.path().join("tail.log"),
        0,
    );
    wait_until(
        "tail prints the newest acme record",
        BOUND,
        || tail.stdout().lines().count() == 1,
        || tail.logs(),
    );
    let mut appended = written.iter().find(|r| r["tenant_id"] == "acme").unwrap().clone();
    appended["message_id"] = "appended-later".into();
    let mut other_tenant = appended.clone();
    other_tenant["tenant_id"] = "globex".into();
    let mut file = std::fs::OpenOptions::new().append(true).open(&ledger_file).unwrap();
    use std::io::Write as _;
    writeln!(file, "{other_tenant}\n{appended}").unwrap();
    wait_until(
        "tail prints the appended acme record",
        BOUND,
        || tail.stdout().contains("appended-later"),
        || tail.logs(),
    );
    assert_eq!(
        tail.stdout().lines().count(),
        2,
        "only the acme record: {}",
        tail.stdout()
    );
    assert!(tail.logs().is_empty(), "{}", tail.logs());
}

/// Two `qt run` processes write one PostgreSQL table at once, every message once; `qt ledger`
/// migrates, queries, counts and follows it by the same configuration.
#[test]
fn two_qt_runs_share_one_postgres_ledger_and_qt_ledger_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        std::env::var("QT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("qt_cli_e2e_{}", std::process::id());
    /// Drops the test's schema however the test ends.
    struct DropSchema(String, String);
    impl Drop for DropSchema {
        fn drop(&mut self) {
            let _ = std::process::Command::new("psql")
                .args([
                    self.0.as_str(),
                    "-qc",
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.1),
                ])
                .output();
        }
    }
    let _drop_schema = DropSchema(url.clone(), schema.clone());
    let config = |name: &str, messages: &std::path::Path| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "source: {{type: mock, file: {}}}\n\
                 processing: {{extraction: {{event_name: [{{pointer: /type}}], tenant_id: [{{pointer: /tenant}}], dedup_key: [{{pointer: /order}}]}}}}\n\
                 agent: {{targets: {{main: {{type: log}}}}}}\n\
                 ledger: {{type: postgres, url: \"{url}\", schema: {schema}}}\n\
                 observability: {{admin: {{enabled: false}}}}\n",
                messages.display()
            ),
        )
        .unwrap();
        path
    };
    let messages = |name: &str, n: usize| {
        let path = dir.path().join(format!("{name}.jsonl"));
        let lines: Vec<String> = (0..n)
            .map(|i| {
                serde_json::json!({"id": format!("{name}-{i}"), "json": {"type": "order.created", "tenant": name, "order": format!("{name}-{i}")}})
                    .to_string()
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    let (a, b) = (config("a", &messages("a", 300)), config("b", &messages("b", 300)));
    let ledger = |args: &[&str]| run_bounded(qt().args(["ledger"]).args(args).arg("-c").arg(&a), dir.path(), BOUND);

    // Two processes migrating a new table at once: the advisory lock lets one apply the
    // migration and the other find it done.
    let migrating: Vec<_> = [&a, &b]
        .iter()
        .map(|cfg| {
            qt().args(["ledger", "migrate", "-c"])
                .arg(cfg)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = migrating
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert_eq!(
        outputs.iter().filter(|o| o.contains("applied migration(s) 1")).count(),
        1,
        "{outputs:?}"
    );
    assert_eq!(
        outputs.iter().filter(|o| o.contains("up to date")).count(),
        1,
        "{outputs:?}"
    );
    ledger(&["migrate"]).assert_shows(&["up to date", &schema]);

    // An unreachable database is an error naming it, and a non-zero exit.
    let unreachable = dir.path().join("unreachable.yaml");
    std::fs::write(
        &unreachable,
        "source: {type: mock}\n\
         agent: {targets: {main: {type: log}}}\n\
         ledger: {type: postgres, url: \"postgres://qt:hunter2@127.0.0.1:1/qt\", connect_timeout: 1s}\n",
    )
    .unwrap();
    let refused = run_bounded(
        qt().args(["ledger", "query", "-c"]).arg(&unreachable),
        dir.path(),
        BOUND,
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("127.0.0.1:1"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("hunter2"), "{}", refused.stderr);

    let mut runs: Vec<_> = [&a, &b]
        .iter()
        .map(|cfg| {
            qt().args(["run", "--until-idle", "-c"])
                .arg(cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in &mut runs {
        assert!(run.wait().unwrap().success());
    }

    let stats = ledger(&["stats", "--json"]);
    stats.assert_shows(&[]);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["records"], 600, "{stats}");
    assert_eq!(stats["by_status"], serde_json::json!([["succeeded", 600]]));
    assert_eq!(stats["by_tenant"], serde_json::json!([["a", 300], ["b", 300]]));

    let query = ledger(&["query", "--tenant", "b", "--limit", "1000", "--json"]);
    query.assert_shows(&[]);
    let ids = message_ids(&query.stdout);
    assert_eq!(ids.len(), 300);
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        300,
        "each of b's messages once"
    );
    ledger(&["query", "--message-id", "a-7"]).assert_shows(&["a-7", "succeeded", "order.created"]);

    let tail = QtRun::spawn(
        qt().args(["ledger", "tail", "-n", "2", "--json", "--tenant", "c", "-c"])
            .arg(&a),
        &dir.path().join("tail.log"),
        0,
    );
    // The tail is following (its backlog, empty for tenant c, is printed) once it has read
    // the newest id; a run for tenant c after that shows.
    std::thread::sleep(Duration::from_secs(1));
    let c = config("c", &messages("c", 5));
    assert!(
        run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&c), dir.path(), BOUND)
            .status
            .success()
    );
    wait_until(
        "tail prints c's five records",
        BOUND,
        || tail.stdout().lines().count() == 5,
        || tail.logs(),
    );
    drop(tail);
}

/// Issue 19: the dead-letter story of every source, on the mock source's `dlq_file`, with
/// replays going into the running trigger through its admin server.
#[test]
fn dead_letters_are_listed_shown_replayed_guarded_and_purged_with_qt_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broken = dir.path().join("broken");
    let ledger = dir.path().join("ledger.jsonl");
    let cfg = dir.path().join("dlq.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock, dlq_file: {dlq}}}\n\
             agent: {{targets: {{main: {{type: command, program: /bin/sh, args: [\"{agent}\"]}}}}}}\n\
             processing: {{on_failure: dlq}}\n\
             ledger: {{type: jsonl, path: {ledger}}}\n\
             observability: {{admin: {{listen: \"127.0.0.1:{port}\"}}}}\n",
            dlq = dir.path().join("dlq.jsonl").display(),
            agent = breakable_agent(dir.path(), &broken).display(),
            ledger = ledger.display(),
        ),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(20));
    DlqStory {
        dir: dir.path(),
        config: cfg,
        ledger,
        broken,
        run: &run,
        qt: &qt,
        prefix: story_prefix(),
        hold: None,
    }
    .tell();
    assert!(run.terminate(Duration::from_secs(20)).success(), "{}", run.logs());
}

/// `--hold` is how long an SQS session hides what it read; elsewhere it would mean nothing,
/// so it is refused rather than ignored, and an SQS hold out of range is refused too.
#[test]
fn qt_dlq_hold_is_refused_outside_sqs_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dlq.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock, dlq_file: {dlq}}}\nagent: {{targets: {{main: {{type: log}}}}}}\n",
            dlq = dir.path().join("dlq.jsonl").display()
        ),
    )
    .unwrap();
    let on_mock = run_bounded(
        qt().args(["dlq", "list", "--hold", "30s", "-c"]).arg(&cfg),
        dir.path(),
        BOUND,
    );
    assert!(!on_mock.status.success(), "{}", on_mock.stdout);
    assert!(
        on_mock.stderr.contains("--hold applies to SQS sources only"),
        "{}",
        on_mock.stderr
    );
    assert!(on_mock.stderr.contains("a mock session"), "{}", on_mock.stderr);
    for hold in ["0s", "13h", "soon"] {
        let bad = run_bounded(
            qt().args(["dlq", "replay", "--hold", hold, "-c"]).arg(&cfg),
            dir.path(),
            BOUND,
        );
        assert_eq!(bad.status.code(), Some(2), "--hold {hold}: {}", bad.stderr);
        assert!(bad.stderr.contains(&format!("{hold:?}")), "{}", bad.stderr);
    }
}

/// A `command` agent's program, and what it started, do not outlive a qt process that is
/// killed outright: the message is redelivered elsewhere, and the old run must not go on
/// beside the new one.
#[test]
fn a_command_agent_and_what_it_started_are_killed_with_their_qt_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pid_file = dir.path().join("agent.pid");
    let child_file = dir.path().join("child.pid");
    let script = dir.path().join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "sleep 300 &\necho $! > {}\necho $$ > {}\nexec sleep 300\n",
            child_file.display(),
            pid_file.display()
        ),
    )
    .unwrap();
    let cfg = dir.path().join("kill.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock}}\n\
             agent: {{targets: {{main: {{type: command, program: /bin/sh, args: [\"{script}\"], timeout: 10m}}}}}}\n\
             ledger: {{type: jsonl, path: {ledger}}}\n\
             observability: {{admin: {{listen: \"127.0.0.1:{port}\"}}}}\n",
            script = script.display(),
            ledger = dir.path().join("ledger.jsonl").display(),
        ),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(20));
    let sent = run_bounded(
        qt().args(["send", "-c"]).arg(&cfg).args(["--body", "{}"]),
        dir.path(),
        BOUND,
    );
    assert!(sent.status.success(), "{}", sent.stderr);
    let agent_pid = || std::fs::read_to_string(&pid_file).unwrap_or_default().trim().to_owned();
    wait_until(
        "the agent program started",
        BOUND,
        || !agent_pid().is_empty(),
        || run.logs(),
    );
    let pid = agent_pid();
    let child = std::fs::read_to_string(&child_file).unwrap().trim().to_owned();
    assert!(running(&pid), "agent {pid} is running before qt is killed");
    assert!(
        running(&child),
        "the agent's child {child} is running before qt is killed"
    );
    run.kill_hard();
    wait_until(
        "the agent program and its child gone with qt",
        Duration::from_secs(5),
        || !running(&pid) && !running(&child),
        || format!("agent {pid} or its child {child} still running after qt was killed"),
    );
}

/// Whether the process `pid` exists and is not a zombie waiting for a parent to reap it.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A message whose body cannot be parsed is still recorded under the tenant and dedup key its
/// headers give, so that an operator finds its record by them (the chaos suite found such
/// records without their dedup key).
#[test]
fn an_unparseable_message_is_recorded_with_the_tenant_and_dedup_key_of_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(
        &messages,
        r#"{"id": "bad", "headers": {"x-tenant-id": "acme", "x-dedup-key": "order-7"}, "text": "{not json"}
"#,
    )
    .unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: mock, file: {}}}\nagent: {{targets: {{main: {{type: log}}}}}}\nledger: {{type: jsonl, path: {}}}\nobservability: {{admin: {{enabled: false}}}}\n",
            messages.display(),
            ledger.display()
        ),
    )
    .unwrap();
    let ran = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(ran.status.success(), "{}", ran.stderr);
    let records = jsonl(&ledger);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], "parse_failed");
    assert_eq!(records[0]["tenant_id"], "acme");
    assert_eq!(records[0]["dedup_key"], "order-7");
}
