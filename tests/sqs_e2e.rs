//! End-to-end tests that run the built `qt` binary against the local SQS emulator (moto).
//!
//! The emulator is `QT_TEST_SQS_ENDPOINT` (default `http://127.0.0.1:4566`; `cargo xtask
//! services up` starts it). `qt` gets dummy static credentials through the standard AWS
//! environment variables, region us-east-1, and the emulator as `source.endpoint_url`;
//! everything else that could point the SDK elsewhere (profiles, config files, endpoint
//! variables) is cleared from its environment.
//!
//! moto handles tens of messages per second, so the tests use few messages. Every test uses
//! randomly named queues (deleted when it ends), bounds each wait, and kills the processes
//! it started on every path (a guard kills the `qt` process group on drop).

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry,
};
use qt_core::config::SqsSourceConfig;
use serde_json::Value;

mod support;

use support::agent::counting_agent;
use support::collector::{Collector, consumer_span, with_tracing};
use support::dlq::{DlqStory, breakable_agent, story_prefix};
use support::files::{by_message, ledger, status_of};
use support::process::{Finished, QtRun};
use support::wait::wait_until;
use support::{free_port, reachable, runtime, unique};

const REGION: &str = "us-east-1";
const ACCESS_KEY_ID: &str = "AKIAQTE2ETESTKEY0001";
/// Must never appear in anything qt prints.
const SECRET_ACCESS_KEY: &str = "qt-e2e-sqs-secret-never-printed-91c4d2";
/// What the counting agent notes of each run: the delivery attempt the event carries.
const DELIVERY_ATTEMPT: &str = r#"grep -o '"delivery_attempt":[0-9]*' | head -n 1 | cut -d ':' -f 2"#;

fn endpoint() -> String {
    std::env::var("QT_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// The `qt` binary with an environment that reaches the emulator and nothing else: static
/// credentials, no profile, no config files, no endpoint overrides, no instance metadata.
fn qt(dir: &Path) -> Command {
    let mut c = support::process::qt();
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        c.env_remove(var);
    }
    // Empty files rather than none: the SDK warns about a configured file that is missing.
    let (config_file, credentials_file) = (dir.join("aws-config"), dir.join("aws-credentials"));
    for file in [&config_file, &credentials_file] {
        if !file.exists() {
            File::create(file).unwrap();
        }
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_CONFIG_FILE", config_file)
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials_file)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Every bounded command here also checks its output for the secret access key, so that no
/// test can forget to.
fn run_bounded(cmd: &mut Command, dir: &Path, within: Duration) -> Finished {
    let done = support::process::run_bounded(cmd, dir, within);
    assert_no_secret(&done.stdout);
    assert_no_secret(&done.stderr);
    done
}

fn assert_no_secret(text: &str) {
    assert!(
        !text.contains(SECRET_ACCESS_KEY),
        "the secret access key appears in:\n{text}"
    );
}

/// Message ids with a succeeded record in the ledger at `path`.
fn succeeded(path: &Path) -> BTreeSet<String> {
    by_message(&ledger(path))
        .into_iter()
        .filter(|(_, rs)| rs.iter().any(|r| status_of(r) == "succeeded"))
        .map(|(id, _)| id)
        .collect()
}

/// An SDK client on the emulator for setting up and inspecting queues, with a runtime of its
/// own so the tests stay synchronous.
struct Sqs {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Sqs {
    fn connect() -> Self {
        let endpoint = endpoint();
        let host_port = endpoint.split("://").nth(1).unwrap_or(&endpoint).trim_end_matches('/');
        assert!(
            reachable(host_port, Duration::from_millis(500)),
            "the SQS emulator is not reachable at {endpoint} (QT_TEST_SQS_ENDPOINT): start it with \
             `cargo xtask services up`"
        );
        let runtime = runtime();
        let cfg = SqsSourceConfig {
            queue_url: "qt-e2e-admin".into(),
            region: REGION.into(),
            endpoint_url: Some(endpoint),
            ..SqsSourceConfig::default()
        };
        let credentials = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "qt-e2e");
        let client = runtime
            .block_on(qt_adapter_sqs::connection::sdk_client(
                &cfg,
                false,
                Some(SharedCredentialsProvider::new(credentials)),
            ))
            .expect("an SDK client for the emulator");
        Self { runtime, client }
    }

    /// Creates a uniquely named standard queue; returns its URL.
    fn create_queue(&self, what: &str) -> String {
        let name = unique(what);
        self.runtime
            .block_on(self.client.create_queue().queue_name(&name).send())
            .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
            .queue_url
            .expect("CreateQueue returns the URL")
    }

    /// Creates a uniquely named FIFO queue (no content-based deduplication); returns its URL.
    fn create_fifo_queue(&self, what: &str) -> String {
        let name = format!("{}.fifo", unique(what));
        self.runtime
            .block_on(
                self.client
                    .create_queue()
                    .queue_name(&name)
                    .attributes(QueueAttributeName::FifoQueue, "true")
                    .send(),
            )
            .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
            .queue_url
            .expect("CreateQueue returns the URL")
    }

    fn delete_queue(&self, url: &str) {
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), self.client.delete_queue().queue_url(url).send()).await
        });
    }

    /// Sends the bodies (ten per SendMessageBatch), each with its attributes; returns the
    /// MessageIds SQS assigned, in order.
    fn send_all(&self, url: &str, messages: &[(String, Vec<(&str, String)>)]) -> Vec<String> {
        let mut ids = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (body, attributes))| {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body);
                    for (name, value) in attributes {
                        entry = entry.message_attributes(*name, text(value));
                    }
                    entry.build().unwrap()
                })
                .collect();
            let out = self
                .runtime
                .block_on(
                    self.client
                        .send_message_batch()
                        .queue_url(url)
                        .set_entries(Some(entries))
                        .send(),
                )
                .unwrap_or_else(|e| panic!("SendMessageBatch to {url}: {e:?}"));
            assert!(
                out.failed().is_empty(),
                "SendMessageBatch refused entries: {:?}",
                out.failed()
            );
            let by_entry: HashMap<&str, &str> = out.successful().iter().map(|s| (s.id(), s.message_id())).collect();
            ids.extend((0..chunk.len()).map(|i| by_entry[i.to_string().as_str()].to_owned()));
        }
        ids
    }

    /// Sends `body` with the `AWSTraceHeader` system attribute an X-Ray traced producer
    /// sets; returns the MessageId.
    fn send_with_xray_header(&self, url: &str, body: &str, trace_header: &str) -> String {
        let header = MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(trace_header)
            .build()
            .unwrap();
        self.runtime
            .block_on(
                self.client
                    .send_message()
                    .queue_url(url)
                    .message_body(body)
                    .message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, header)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("SendMessage with AWSTraceHeader to {url}: {e:?}"))
            .message_id
            .expect("SendMessage returns the MessageId")
    }

    /// (visible, in flight, delayed) messages of `url`.
    fn counts(&self, url: &str) -> (u64, u64, u64) {
        let out = self
            .runtime
            .block_on(
                self.client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::All)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("GetQueueAttributes {url}: {e:?}"));
        let attributes = out.attributes().cloned().unwrap_or_default();
        let get = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        )
    }

    /// Receives (and deletes) messages of `url` until `n` arrived or `within` passed.
    fn take(&self, url: &str, n: usize, within: Duration) -> Vec<Message> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let got = self
                .runtime
                .block_on(
                    self.client
                        .receive_message()
                        .queue_url(url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .message_attribute_names("All")
                        .message_system_attribute_names(MessageSystemAttributeName::All)
                        .send(),
                )
                .unwrap_or_else(|e| panic!("ReceiveMessage {url}: {e:?}"))
                .messages
                .unwrap_or_default();
            for m in got {
                let receipt = m.receipt_handle().expect("receipt handle").to_owned();
                self.runtime
                    .block_on(
                        self.client
                            .delete_message()
                            .queue_url(url)
                            .receipt_handle(receipt)
                            .send(),
                    )
                    .unwrap_or_else(|e| panic!("DeleteMessage {url}: {e:?}"));
                out.push(m);
            }
        }
        out
    }
}

fn text(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

fn attribute(message: &Message, name: &str) -> Option<String> {
    message
        .message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .map(str::to_owned)
}

/// Deletes the queues when dropped, also when the test panics.
struct Queues<'a> {
    sqs: &'a Sqs,
    urls: Vec<String>,
}

impl Drop for Queues<'_> {
    fn drop(&mut self) {
        for url in &self.urls {
            self.sqs.delete_queue(url);
        }
    }
}

/// `qt run -c <config>` in the environment `qt` gives it here.
fn start(dir: &Path, config: &Path, log: &Path, admin_port: u16, env: &[(&str, &str)]) -> QtRun {
    QtRun::spawn(
        qt(dir).args(["run", "-c"]).arg(config).envs(env.iter().copied()),
        log,
        admin_port,
    )
}

/// Where and how `qt run` consumes in these tests.
struct Setup<'a> {
    queue_url: &'a str,
    dlq_url: &'a str,
    /// Run through `/bin/sh`, so no freshly written file is executed (which can fail with
    /// ETXTBSY while another test forks).
    agent: &'a Path,
    /// The JSONL ledger path; may be `${VAR}`.
    ledger: &'a str,
    admin_port: u16,
    visibility_timeout: Duration,
    processing: &'a str,
}

fn config(s: &Setup<'_>) -> String {
    format!(
        r#"name: e2e-sqs
source:
  type: sqs
  queue_url: "{queue_url}"
  region: {REGION}
  endpoint_url: "{endpoint}"
  dlq_queue_url: "{dlq_url}"
  wait_time: 1s
  visibility_timeout: {visibility}s
processing: {processing}
idempotency: {{enabled: true, window: 1h, lease: 5m, store: {{type: memory}}}}
agent:
  targets:
    main: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 60s}}
ledger: {{type: jsonl, path: "{ledger}"}}
observability:
  admin: {{listen: "127.0.0.1:{admin_port}"}}
  log: {{level: info}}
"#,
        queue_url = s.queue_url,
        dlq_url = s.dlq_url,
        endpoint = endpoint(),
        visibility = s.visibility_timeout.as_secs(),
        processing = s.processing,
        agent = s.agent.display(),
        ledger = s.ledger,
        admin_port = s.admin_port,
    )
}

/// `qt validate` shows an sqs configuration valid and refuses a plaintext endpoint under
/// `security.require_tls`, also one that comes from `AWS_ENDPOINT_URL` (the adapter's own
/// check, reached through `AdapterSettings::require_tls`). `qt send` publishes through the
/// SQS publisher into a running `qt run`, and each outcome row lands where it should:
/// success deleted, a duplicate deleted without running, a permanent agent failure and an
/// unparseable body in the DLQ queue with the failure details as message attributes.
#[test]
fn validate_send_and_every_outcome_on_sqs() {
    let sqs = Sqs::connect();
    let dir = tempfile::tempdir().unwrap();
    let queue = sqs.create_queue("send");
    let dlq = sqs.create_queue("send-dlq");
    let _queues = Queues {
        sqs: &sqs,
        urls: vec![queue.clone(), dlq.clone()],
    };
    let events = dir.path().join("events");
    std::fs::create_dir(&events).unwrap();
    let agent = dir.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!(
            "body=$(cat)\n\
             printf '%s' \"$body\" > {events}/\"$QT_MESSAGE_ID\".json\n\
             case \"$body\" in *'\"fail\":true'*) echo 'refusing this order on purpose' >&2; exit 3;; esac\n",
            events = events.display()
        ),
    )
    .unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let ledger_arg = ledger_path.display().to_string();
    let yaml = config(&Setup {
        queue_url: &queue,
        dlq_url: &dlq,
        agent: &agent,
        ledger: &ledger_arg,
        admin_port: port,
        visibility_timeout: Duration::from_secs(30),
        processing: "{concurrency: 4}",
    });
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(&cfg, &yaml).unwrap();

    run_bounded(
        qt(dir.path()).args(["validate", "-c"]).arg(&cfg),
        dir.path(),
        Duration::from_secs(30),
    )
    .assert_shows(&["valid", "type: sqs", &queue, &dlq]);

    // A plaintext endpoint in the file: the configuration itself is refused.
    let tls_cfg = dir.path().join("tls.yaml");
    std::fs::write(&tls_cfg, format!("{yaml}security: {{require_tls: true}}\n")).unwrap();
    for subcommand in [&["validate", "-c"][..], &["send", "--body", "{}", "-c"][..]] {
        run_bounded(
            qt(dir.path()).args(subcommand).arg(&tls_cfg),
            dir.path(),
            Duration::from_secs(30),
        )
        .assert_refused(&["source.endpoint_url", "require_tls"]);
    }
    // The queue by name and the endpoint from the environment: the file alone is valid, and
    // with that environment validate, the adapter and the publisher refuse the plaintext
    // endpoint the SDK would use.
    let queue_name = queue.rsplit('/').next().unwrap();
    let env_cfg = dir.path().join("env-endpoint.yaml");
    std::fs::write(
        &env_cfg,
        format!(
            "source: {{type: sqs, queue_url: {queue_name}, region: {REGION}}}\n\
             processing: {{on_failure: nack, on_parse_failure: nack, on_unrouted: nack}}\n\
             agent: {{targets: {{main: {{type: log}}}}}}\n\
             observability: {{admin: {{listen: \"127.0.0.1:0\"}}}}\n\
             security: {{require_tls: true}}\n"
        ),
    )
    .unwrap();
    let valid = run_bounded(
        qt(dir.path()).args(["validate", "-c"]).arg(&env_cfg),
        dir.path(),
        Duration::from_secs(30),
    );
    assert!(valid.status.success(), "{}", valid.stderr);
    for subcommand in [
        &["validate", "-c"][..],
        &["send", "--body", "{}", "-c"][..],
        &["run", "-c"][..],
    ] {
        let refused = run_bounded(
            qt(dir.path())
                .args(subcommand)
                .arg(&env_cfg)
                .env("AWS_ENDPOINT_URL", endpoint()),
            dir.path(),
            Duration::from_secs(30),
        );
        assert!(!refused.status.success(), "{subcommand:?} must fail");
        assert!(
            refused.stderr.contains("AWS_ENDPOINT_URL") && refused.stderr.contains("require_tls"),
            "{subcommand:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(sqs.counts(&queue), (0, 0, 0), "nothing was sent under require_tls");

    let mut run = start(dir.path(), &cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));

    let send = |args: &[&str]| {
        run_bounded(
            qt(dir.path()).args(["send", "-c"]).arg(&cfg).args(args),
            dir.path(),
            Duration::from_secs(30),
        )
        .sent_id()
    };
    let ok = send(&[
        "--id",
        "order-1",
        "--body",
        r#"{"order_id":"o-1","total":42}"#,
        "-H",
        "x-tenant-id=acme",
        "-H",
        "x-dedup-key=o-1",
    ]);
    // Same dedup key, another message: the idempotency store absorbs it.
    let duplicate = send(&[
        "--body",
        r#"{"order_id":"o-1"}"#,
        "-H",
        "x-dedup-key=o-1",
        "-H",
        "x-tenant-id=acme",
    ]);
    let failing = send(&[
        "--body",
        r#"{"order_id":"o-2","fail":true}"#,
        "-H",
        "x-tenant-id=acme",
        "-H",
        "x-dedup-key=o-2",
    ]);
    let unparseable = send(&["--body", "not json at all", "-H", "x-tenant-id=acme"]);
    let ids = [ok.as_str(), duplicate.as_str(), failing.as_str(), unparseable.as_str()];
    for id in ids {
        assert_eq!(id.len(), 36, "qt send prints the MessageId SQS assigned: {id}");
    }

    let records = run.wait_recorded_once(&ledger_path, &ids, Duration::from_secs(60));
    let only = |id: &str| records[id].clone();
    let r = only(&ok);
    assert_eq!(status_of(&r), "succeeded", "{r}");
    assert_eq!(r["adapter"], "sqs");
    assert_eq!(r["queue"], queue.as_str());
    assert_eq!(r["tenant_id"], "acme");
    assert_eq!(r["dedup_key"], "o-1");
    assert_eq!(r["settlement"], "ack");
    let r = only(&duplicate);
    assert_eq!(status_of(&r), "duplicate", "{r}");
    assert_eq!(r["settlement"], "ack");
    let r = only(&failing);
    assert_eq!(status_of(&r), "failed", "{r}");
    assert_eq!(r["settlement"], "dead_letter");
    assert_eq!(r["error_class"], "permanent", "{r}");
    let r = only(&unparseable);
    assert_eq!(status_of(&r), "parse_failed", "{r}");
    assert_eq!(r["settlement"], "dead_letter");

    // What the agent saw: body and headers as sent, the SQS origin, and the send id.
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(events.join(format!("{ok}.json"))).unwrap()).unwrap();
    assert_eq!(event["context"]["message_id"], ok.as_str());
    assert_eq!(event["context"]["payload"]["total"], 42);
    assert_eq!(event["context"]["headers"]["x-tenant-id"], "acme");
    assert_eq!(
        event["context"]["headers"]["x-message-id"], "order-1",
        "qt send --id travels as x-message-id"
    );
    assert_eq!(event["context"]["source"]["adapter"], "sqs");
    assert_eq!(event["context"]["source"]["queue"], queue.as_str());
    assert_eq!(event["context"]["delivery_attempt"], 1);
    assert!(
        !events.join(format!("{duplicate}.json")).exists(),
        "the duplicate never reached the agent"
    );
    assert!(
        events.join(format!("{failing}.json")).exists(),
        "the failing order reached the agent"
    );

    // Settled on SQS: nothing left in the queue; the DLQ holds the two failures with their
    // details. The ledger record is written before the settle, so wait for both.
    wait_until(
        "the source queue empty",
        Duration::from_secs(30),
        || sqs.counts(&queue) == (0, 0, 0),
        || format!("counts {:?}\nqt log:\n{}", sqs.counts(&queue), run.logs()),
    );
    let dead = sqs.take(&dlq, 2, Duration::from_secs(20));
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let dead: HashMap<String, &Message> = dead
        .iter()
        .map(|m| {
            (
                attribute(m, "x-qt-original-message-id").expect("original message id"),
                m,
            )
        })
        .collect();
    let failed_copy = dead[&failing];
    assert_eq!(failed_copy.body(), Some(r#"{"order_id":"o-2","fail":true}"#));
    assert_eq!(attribute(failed_copy, "x-qt-error-class").as_deref(), Some("permanent"));
    assert_eq!(attribute(failed_copy, "x-qt-attempts").as_deref(), Some("1"));
    assert_eq!(
        attribute(failed_copy, "x-qt-original-queue").as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(attribute(failed_copy, "x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(attribute(failed_copy, "x-dedup-key").as_deref(), Some("o-2"));
    let reason = attribute(failed_copy, "x-qt-dlq-reason").expect("a reason");
    assert!(
        reason.contains("refusing this order on purpose") || reason.contains("exit"),
        "{reason}"
    );
    let parse_copy = dead[&unparseable];
    assert_eq!(parse_copy.body(), Some("not json at all"));
    let reason = attribute(parse_copy, "x-qt-dlq-reason").expect("a reason");
    assert!(reason.contains("JSON"), "{reason}");
    assert_eq!(sqs.counts(&dlq), (0, 0, 0));

    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");
    let logs = std::fs::read_to_string(dir.path().join("qt.log")).unwrap();
    assert!(logs.contains("consuming from SQS"), "{logs}");
    assert_no_secret(&logs);
    assert!(
        !logs.contains(ACCESS_KEY_ID),
        "the access key id appears in the log:\n{logs}"
    );
}

/// The producer's trace is continued from a `traceparent` message attribute, and from the
/// `AWSTraceHeader` system attribute of an X-Ray traced producer that sent no traceparent:
/// with `observability.tracing` on, the collector gets one consumer span per message, the
/// child of the producer's span, naming the queue.
#[test]
fn a_traceparent_attribute_or_an_xray_trace_header_continues_the_producers_trace() {
    const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
    const XRAY_HEADER: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    const XRAY_TRACE: &str = "5759e988bd862e3fe1be46a994272793";
    const XRAY_PARENT: &str = "53995c3f42cd8ad8";
    let sqs = Sqs::connect();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let queue = sqs.create_queue("traced");
    let dlq = sqs.create_queue("traced-dlq");
    let _queues = Queues {
        sqs: &sqs,
        urls: vec![queue.clone(), dlq.clone()],
    };
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, "cat > /dev/null\n").unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let ledger_arg = ledger_path.display().to_string();
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        with_tracing(
            &config(&Setup {
                queue_url: &queue,
                dlq_url: &dlq,
                agent: &agent,
                ledger: &ledger_arg,
                admin_port: port,
                visibility_timeout: Duration::from_secs(30),
                processing: "{}",
            }),
            &collector.url,
        ),
    )
    .unwrap();
    let w3c = sqs
        .send_all(
            &queue,
            &[(
                r#"{"order_id":"o-1"}"#.to_owned(),
                vec![("traceparent", format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"))],
            )],
        )
        .remove(0);
    let xray = sqs.send_with_xray_header(&queue, r#"{"order_id":"o-2"}"#, XRAY_HEADER);

    let mut run = start(dir.path(), &cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let records = run.wait_recorded_once(&ledger_path, &[&w3c, &xray], Duration::from_secs(60));
    for r in records.values() {
        assert_eq!(status_of(r), "succeeded", "{r}");
    }
    // Stopping flushes the spans: all of them are at the collector once qt has exited.
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");

    let spans = collector.spans();
    for (id, trace, parent) in [(&w3c, PRODUCER_TRACE, PRODUCER_SPAN), (&xray, XRAY_TRACE, XRAY_PARENT)] {
        let span = consumer_span(&spans, id);
        // The conventions name an SQS queue by its name; the URL is beside it.
        let name = queue.rsplit('/').next().unwrap();
        span.assert_continues(trace, parent, "aws_sqs", name);
        assert_eq!(span.attr("aws.sqs.queue.url"), Some(queue.as_str()), "{span:#?}");
        assert_eq!(records[id]["trace_id"], trace, "{}", records[id]);
    }
}

/// `qt send` to a FIFO queue: `--key` is the MessageGroupId and `--id` the
/// MessageDeduplicationId (and the `x-message-id` attribute), so a second send of the same id
/// is dropped by SQS itself; without `--key` the send is refused with the reason.
#[test]
fn qt_send_to_a_fifo_queue_uses_key_and_id() {
    let sqs = Sqs::connect();
    let dir = tempfile::tempdir().unwrap();
    let queue = sqs.create_fifo_queue("fifo");
    let _queues = Queues {
        sqs: &sqs,
        urls: vec![queue.clone()],
    };
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{type: sqs, queue_url: \"{queue}\", region: {REGION}, endpoint_url: \"{}\"}}\n\
             processing: {{on_failure: nack, on_parse_failure: nack, on_unrouted: nack}}\n\
             agent: {{targets: {{main: {{type: log}}}}}}\n",
            endpoint()
        ),
    )
    .unwrap();
    let send = |args: &[&str]| {
        run_bounded(
            qt(dir.path()).args(["send", "-c"]).arg(&cfg).args(args),
            dir.path(),
            Duration::from_secs(30),
        )
    };
    let args = [
        "--key",
        "customer-7",
        "--id",
        "order-7",
        "--body",
        r#"{"order_id":"o-7"}"#,
    ];
    let first = send(&args);
    assert!(first.status.success(), "{}", first.stderr);
    let again = send(&args);
    assert!(again.status.success(), "{}", again.stderr);
    let refused = send(&["--id", "order-8", "--body", "{}"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("MessageGroupId"), "{}", refused.stderr);

    let got = sqs.take(&queue, 2, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "SQS dropped the second send of order-7: {got:#?}");
    let m = &got[0];
    assert_eq!(m.body(), Some(r#"{"order_id":"o-7"}"#));
    let system = m.attributes().expect("system attributes");
    assert_eq!(
        system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .map(String::as_str),
        Some("customer-7")
    );
    assert_eq!(
        system
            .get(&MessageSystemAttributeName::MessageDeduplicationId)
            .map(String::as_str),
        Some("order-7")
    );
    assert_eq!(attribute(m, "x-message-id").as_deref(), Some("order-7"));
    assert_eq!(sqs.counts(&queue), (0, 0, 0));
}

/// `(message id, delivery attempt)` of every agent run, in order.
fn agent_runs(runs: &Path) -> Vec<(String, u32)> {
    support::agent::agent_runs(runs)
        .into_iter()
        .filter_map(|(id, attempt)| Some((id, attempt.trim().parse().ok()?)))
        .collect()
}

/// `qt run` is killed with SIGKILL while slow agents hold messages: nothing settles them,
/// releases them or extends their visibility any more, so SQS makes them visible again once
/// their visibility timeout (4s) ends, and the next `qt run` processes them. Every message
/// ends with a succeeded record in one ledger or the other.
#[test]
fn sigkill_mid_run_unacked_messages_return_after_the_visibility_timeout() {
    const N: usize = 16;
    const VISIBILITY: Duration = Duration::from_secs(4);
    let sqs = Sqs::connect();
    let dir = tempfile::tempdir().unwrap();
    let queue = sqs.create_queue("sigkill");
    let dlq = sqs.create_queue("sigkill-dlq");
    let _queues = Queues {
        sqs: &sqs,
        urls: vec![queue.clone(), dlq.clone()],
    };
    let runs = dir.path().join("runs.log");
    let agent = counting_agent(dir.path(), &runs, DELIVERY_ATTEMPT, "0");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    // Four agents of 3s each and up to eight messages held: when the first run is killed, a
    // few messages are done, four are running and more wait for an agent, all invisible.
    // The 3s runs outlast half the visibility timeout, so the heartbeat extends them.
    std::fs::write(
        &cfg,
        config(&Setup {
            queue_url: &queue,
            dlq_url: &dlq,
            agent: &agent,
            ledger: "${QT_E2E_LEDGER}",
            admin_port: port,
            visibility_timeout: VISIBILITY,
            processing: "{concurrency: 4, max_in_flight: 8, batch_size: 4}",
        }),
    )
    .unwrap();
    let ledger1 = dir.path().join("ledger-1.jsonl");
    let ledger2 = dir.path().join("ledger-2.jsonl");
    let messages: Vec<_> = (0..N)
        .map(|i| {
            (
                format!(r#"{{"order_id":"o-{i:02}"}}"#),
                vec![("x-dedup-key", format!("o-{i:02}")), ("x-tenant-id", "acme".to_owned())],
            )
        })
        .collect();
    let ids: BTreeSet<String> = sqs.send_all(&queue, &messages).into_iter().collect();
    assert_eq!(ids.len(), N);

    let mut first = start(
        dir.path(),
        &cfg,
        &dir.path().join("qt-1.log"),
        port,
        &[("AGENT_SLEEP", "3"), ("QT_E2E_LEDGER", ledger1.to_str().unwrap())],
    );
    first.wait_ready(Duration::from_secs(30));
    wait_until(
        "some messages done and more running",
        Duration::from_secs(60),
        || {
            let done = succeeded(&ledger1).len();
            done >= 2 && agent_runs(&runs).len() >= done + 2 && first.in_flight() >= 4
        },
        || {
            format!(
                "ledger: {:#?}\nruns: {:?}\nqt log:\n{}",
                ledger(&ledger1),
                agent_runs(&runs),
                first.logs()
            )
        },
    );
    first.kill_hard();
    let killed_at = Instant::now();

    let first_runs = agent_runs(&runs);
    let finished_first = succeeded(&ledger1);
    let interrupted: BTreeSet<String> = first_runs
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !finished_first.contains(id))
        .collect();
    assert!(
        !interrupted.is_empty() && finished_first.len() < N,
        "no agent run was cut short by the kill; the test proves nothing (finished {finished_first:?})"
    );
    let (_, invisible, _) = sqs.counts(&queue);
    assert!(
        invisible >= interrupted.len() as u64,
        "SQS holds the killed run's messages in flight ({invisible} of {} interrupted)",
        interrupted.len()
    );

    // Nobody released them: they stay invisible until the visibility timeout of their last
    // receipt or heartbeat extension runs out (the heartbeat extends with half the timeout
    // left, so that is between 2s and 4s after the kill), then SQS hands them out again.
    wait_until(
        "the killed run's messages visible again",
        VISIBILITY + Duration::from_secs(10),
        || sqs.counts(&queue).1 == 0,
        || format!("counts {:?}", sqs.counts(&queue)),
    );
    let back_after = killed_at.elapsed();
    assert!(
        back_after >= VISIBILITY / 2 - Duration::from_millis(500),
        "the messages were visible again {back_after:?} after the kill, before their visibility timeout ended"
    );
    let (visible, _, _) = sqs.counts(&queue);
    assert!(
        visible >= interrupted.len() as u64,
        "{visible} visible, {} interrupted",
        interrupted.len()
    );

    let mut second = start(
        dir.path(),
        &cfg,
        &dir.path().join("qt-2.log"),
        port,
        &[("AGENT_SLEEP", "0"), ("QT_E2E_LEDGER", ledger2.to_str().unwrap())],
    );
    second.wait_ready(Duration::from_secs(30));
    let all_done = || {
        finished_first
            .union(&succeeded(&ledger2))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    wait_until(
        "every message succeeded in one run or the other",
        Duration::from_secs(60),
        || all_done() == ids,
        || {
            format!(
                "done: {} of {N}\nsecond ledger: {:#?}\nqt log:\n{}",
                all_done().len(),
                ledger(&ledger2),
                second.logs()
            )
        },
    );
    wait_until(
        "the queue empty",
        Duration::from_secs(30),
        || sqs.counts(&queue) == (0, 0, 0) && second.in_flight() == 0,
        || format!("counts {:?}\nqt log:\n{}", sqs.counts(&queue), second.logs()),
    );
    let status = second.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status})");

    // The interrupted messages came back as second deliveries.
    let second_runs: BTreeMap<String, u32> = agent_runs(&runs).into_iter().skip(first_runs.len()).collect();
    for id in &interrupted {
        let attempt = second_runs
            .get(id)
            .unwrap_or_else(|| panic!("{id} was cut short by the kill and never ran again: {second_runs:?}"));
        assert!(*attempt >= 2, "{id} came back as delivery {attempt}");
    }
    for (id, rs) in by_message(&ledger(&ledger2)) {
        assert!(ids.contains(&id), "unknown message {id}");
        for r in &rs {
            assert!(matches!(status_of(r), "succeeded" | "duplicate"), "{id}: {r}");
        }
    }
    for (id, rs) in by_message(&ledger(&ledger1)) {
        for r in &rs {
            assert_eq!(status_of(r), "succeeded", "{id}: {r}");
            assert_eq!(r["settlement"], "ack");
        }
    }
    assert_eq!(sqs.counts(&dlq), (0, 0, 0), "nothing dead-lettered");
    for log in ["qt-1.log", "qt-2.log"] {
        assert_no_secret(&std::fs::read_to_string(dir.path().join(log)).unwrap());
    }
    eprintln!(
        "{N} messages: {} finished by the first run, {} cut short by SIGKILL, visible again {back_after:?} after it",
        finished_first.len(),
        interrupted.len()
    );
}

/// Issue 19: the dead-letter story of every source on SQS: letters listed from the DLQ queue
/// and made visible again, replayed with send-then-delete, kept by the loop guard, safe under
/// a SIGKILL mid-replay, and purged by filter.
#[test]
fn dead_letters_are_listed_shown_replayed_guarded_and_purged_with_qt_dlq_on_sqs() {
    let sqs = Sqs::connect();
    let dir = tempfile::tempdir().unwrap();
    let queue = sqs.create_queue("dlq-story");
    let dlq = sqs.create_queue("dlq-story-dlq");
    let _queues = Queues {
        sqs: &sqs,
        urls: vec![queue.clone(), dlq.clone()],
    };
    let broken = dir.path().join("broken");
    let agent = breakable_agent(dir.path(), &broken);
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let ledger_arg = ledger_path.display().to_string();
    let yaml = config(&Setup {
        queue_url: &queue,
        dlq_url: &dlq,
        agent: &agent,
        ledger: &ledger_arg,
        admin_port: port,
        visibility_timeout: Duration::from_secs(30),
        processing: "{concurrency: 2, on_failure: dlq}",
    });
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut run = start(dir.path(), &cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let command = || qt(dir.path());
    DlqStory {
        dir: dir.path(),
        config: cfg,
        ledger: ledger_path,
        broken,
        run: &run,
        qt: &command,
        prefix: story_prefix(),
        hold: Some("10s"),
    }
    .tell();
    assert!(run.terminate(Duration::from_secs(30)).success(), "{}", run.logs());
}
