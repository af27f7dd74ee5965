//! One scenario: the services, three `qt run` processes, a producer, the fault, and the
//! settling afterwards; then the verifier's report.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::agent::RecordingAgent;
use super::brokers::{Broker, Produced, RunningBroker};
use super::services::{self, Images, Service};
use super::support::http::http_get;
use super::support::process::{QtRun, qt};
use super::support::{free_port, runtime};
use super::verify::{FaultEvent, Observed, Report};

/// The qt processes sharing the queue, the store and the ledger.
const PROCESSES: [&str; 3] = ["a", "b", "c"];
/// Bound on a qt process getting ready, or stopping after SIGTERM.
const PROCESS_BOUND: Duration = Duration::from_secs(60);
/// Bound on every produced message reaching an outcome once the faults are over; a killed
/// process's claims block their messages for the claim lease first.
const SETTLE_BOUND: Duration = Duration::from_secs(180);

/// What is done to the system while the traffic flows.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Nothing: the poison flood's clean comparison.
    None,
    /// SIGKILL one qt process after another, each restarted at once.
    KillQt {
        every: Duration,
    },
    /// SIGTERM one qt process after another (a drain under load), each restarted.
    DrainQt {
        every: Duration,
    },
    /// The broker frozen (a hung server), once.
    PauseBroker(Duration),
    /// The broker stopped cleanly and started, once.
    RestartBroker,
    /// The broker SIGKILLed and started, once.
    KillBroker,
    PauseRedis(Duration),
    /// Redis SIGKILLed and started, losing every claim (it keeps nothing on disk).
    KillRedis,
    /// The ledger's PostgreSQL frozen, once.
    PauseLedger(Duration),
}

impl Fault {
    /// Whether the fault stops the broker, which must then keep its data where a restart
    /// does not lose it.
    fn restarts_broker(self) -> bool {
        matches!(self, Fault::RestartBroker | Fault::KillBroker)
    }
}

#[derive(Debug)]
pub struct Scenario {
    name: &'static str,
    broker: Broker,
    fault: Fault,
    messages: usize,
    /// Messages published a second.
    rate: u32,
    poison_percent: usize,
    on_store_error: &'static str,
}

impl Scenario {
    pub fn new(name: &'static str, broker: Broker, fault: Fault) -> Self {
        let short = std::env::var("QT_CHAOS_SHORT").is_ok_and(|v| v == "1");
        // moto answers about a hundred SQS requests a second here, fewer the deeper its
        // queue: SQS scenarios are smaller and slower. So are those where Nisshi keeps its
        // log on moto's S3: each message costs about five requests there (its batch, the
        // partition's watermark, the producer's sequence, the fetch's listing and read).
        let on_moto_s3 = broker == Broker::Kafka && fault.restarts_broker();
        let (messages, rate) = match (broker, short) {
            (Broker::Sqs, false) => (900, 30),
            (Broker::Sqs, true) => (450, 30),
            (Broker::Kafka, false) if on_moto_s3 => (600, 20),
            (Broker::Kafka, true) if on_moto_s3 => (300, 20),
            (_, false) => (3000, 100),
            (_, true) => (1500, 100),
        };
        Self {
            name,
            broker,
            fault,
            messages,
            rate,
            poison_percent: 0,
            on_store_error: "fail_closed",
        }
    }

    pub fn on_store_error(mut self, setting: &'static str) -> Self {
        self.on_store_error = setting;
        self
    }

    /// Of every 100 messages, this many are poison: half undecodable, half failing for good.
    pub fn poison_percent(mut self, percent: usize) -> Self {
        self.poison_percent = percent;
        self
    }

    pub fn run(self) {
        let images = Images::from_env();
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(self.broker.start(images, self.fault.restarts_broker()));
        let redis = services::redis(images);
        let ledger = services::postgres(images);
        let agent = RecordingAgent::start();
        let config = dir.path().join("qt.yaml");
        std::fs::write(&config, self.config(&broker, &redis, &ledger)).unwrap();
        let mut fleet = Fleet::start(dir.path(), &config, &agent, broker.env());
        eprintln!("{}: services and {} qt processes up", self.name, PROCESSES.len());

        let started = SystemTime::now();
        let producer = Producer::start(Arc::clone(&broker), self.messages, self.rate, self.poison_percent);
        let faults = self.inject(&producer, &mut fleet, &broker.service, &redis, &ledger);
        let Produced { keys: produced, key_of } = producer.finish();
        let traffic_ended = SystemTime::now();
        eprintln!(
            "{}: {} messages produced, {} faults; settling",
            self.name,
            produced.len(),
            faults.len()
        );

        let settled = Instant::now();
        loop {
            let records = read_ledger(&config, &key_of);
            let done: BTreeSet<&str> = records.iter().filter(|r| r.final_).map(|r| r.key.as_str()).collect();
            if produced.iter().all(|key| done.contains(key.as_str())) || settled.elapsed() > SETTLE_BOUND {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        // Stopped first, so that what their drains settle is in the ledger read after.
        fleet.stop();
        let ledger_records = read_ledger(&config, &key_of);
        let (still_queued, dead_letters) = runtime().block_on(broker.leftovers());
        let observed = Observed {
            produced,
            runs: agent.runs(),
            ledger: ledger_records,
            dead_letters,
            still_queued,
            faults,
            traffic: (started, traffic_ended),
        };
        let report = Report::build(self.name, images, self.poison_percent, &observed);
        report.publish(&observed.faults);
        report.assert_holds();
    }

    fn config(&self, broker: &RunningBroker, redis: &Service, ledger: &Service) -> String {
        format!(
            r#"name: chaos
{source}processing: {{concurrency: 8, on_failure: dlq, duplicate_in_flight_delay: 200ms}}
idempotency:
  enabled: true
  window: 1h
  lease: 10s
  on_store_error: {on_store_error}
  store_error_delay: 500ms
  store: {{type: redis, url: "redis://127.0.0.1:{redis}"}}
agent:
  targets:
    main: {{type: http, url: "${{QT_CHAOS_AGENT}}", timeout: 10s}}
ledger: {{type: postgres, url: "postgres://postgres@127.0.0.1:{pg}/postgres", connect_timeout: 2s, statement_timeout: 5s}}
observability:
  admin: {{listen: "${{QT_CHAOS_ADMIN}}"}}
  log: {{level: info}}
"#,
            source = broker.source(),
            on_store_error = self.on_store_error,
            redis = redis.port,
            pg = ledger.port,
        )
    }

    /// Injects the fault while the producer runs; returns what was done, when.
    fn inject(
        &self,
        producer: &Producer,
        fleet: &mut Fleet,
        broker: &Service,
        redis: &Service,
        ledger: &Service,
    ) -> Vec<FaultEvent> {
        let mut faults = Vec::new();
        // One-off faults strike a third of the way through the traffic.
        let strike_at = Duration::from_secs_f64(self.messages as f64 / f64::from(self.rate) / 3.0);
        let once = |what: &str, service: &Service, break_it: &dyn Fn(&Service)| {
            std::thread::sleep(strike_at);
            let at = SystemTime::now();
            eprintln!("{}: {what}", self.name);
            break_it(service);
            FaultEvent::new(what, at, SystemTime::now())
        };
        let hold = |d: Duration| {
            move |s: &Service| {
                s.pause();
                std::thread::sleep(d);
                s.unpause();
            }
        };
        match self.fault {
            Fault::None => {}
            Fault::KillQt { every } | Fault::DrainQt { every } => {
                let kill = matches!(self.fault, Fault::KillQt { .. });
                let mut next = 0;
                loop {
                    std::thread::sleep(every);
                    if producer.done() {
                        break;
                    }
                    faults.push(fleet.cycle(next % PROCESSES.len(), kill));
                    next += 1;
                }
            }
            Fault::PauseBroker(d) => faults.push(once("broker paused", broker, &hold(d))),
            Fault::RestartBroker => faults.push(once("broker restarted", broker, &Service::restart)),
            Fault::KillBroker => faults.push(once("broker SIGKILLed and started", broker, &Service::kill_and_start)),
            Fault::PauseRedis(d) => faults.push(once("redis paused", redis, &hold(d))),
            Fault::KillRedis => faults.push(once("redis SIGKILLed and started", redis, &Service::kill_and_start)),
            Fault::PauseLedger(d) => faults.push(once("ledger database paused", ledger, &hold(d))),
        }
        faults
    }
}

/// The qt processes; a process replaced after a fault gets the next generation's name
/// (`a.1`, `a.2`, ...), which is also how it calls the agent.
struct Fleet {
    dir: PathBuf,
    config: PathBuf,
    agent: String,
    /// What the broker's client needs in each process's environment.
    env: Vec<(&'static str, &'static str)>,
    processes: Vec<Process>,
}

struct Process {
    name: String,
    generation: u32,
    admin_port: u16,
    run: QtRun,
}

impl Fleet {
    fn start(dir: &Path, config: &Path, agent: &RecordingAgent, env: Vec<(&'static str, &'static str)>) -> Self {
        let mut fleet = Fleet {
            dir: dir.to_owned(),
            config: config.to_owned(),
            agent: agent.url(""),
            env,
            processes: Vec::new(),
        };
        for base in PROCESSES {
            let process = fleet.spawn(base, 1);
            fleet.processes.push(process);
        }
        for p in &mut fleet.processes {
            p.run.wait_ready(PROCESS_BOUND);
        }
        fleet
    }

    fn spawn(&self, base: &str, generation: u32) -> Process {
        let name = format!("{base}.{generation}");
        let admin_port = free_port();
        let run = QtRun::spawn(
            qt().args(["run", "-c"])
                .arg(&self.config)
                .env("QT_CHAOS_AGENT", format!("{}{name}", self.agent))
                .env("QT_CHAOS_ADMIN", format!("127.0.0.1:{admin_port}"))
                .envs(self.env.iter().copied()),
            &self.dir.join(format!("{name}.log")),
            admin_port,
        );
        Process {
            name,
            generation,
            admin_port,
            run,
        }
    }

    /// Ends process `index` (SIGKILL or SIGTERM) and starts its next generation.
    fn cycle(&mut self, index: usize, kill: bool) -> FaultEvent {
        let base = PROCESSES[index];
        let old = self.processes.remove(index);
        let in_flight = in_flight(old.admin_port);
        let at = SystemTime::now();
        if kill {
            old.run.kill_hard();
        } else {
            let mut run = old.run;
            let status = run.terminate(PROCESS_BOUND);
            assert!(
                status.success(),
                "{} did not drain cleanly: {status}\n{}",
                old.name,
                run.logs()
            );
        }
        let mut next = self.spawn(base, old.generation + 1);
        next.run.wait_ready(PROCESS_BOUND);
        let what = if kill { "SIGKILL" } else { "SIGTERM" };
        let event = FaultEvent::new(&format!("{what} {}", old.name), at, SystemTime::now())
            .on_process(&old.name, if kill { in_flight } else { 0 });
        self.processes.insert(index, next);
        event
    }

    /// SIGTERM to every process; each must drain and exit cleanly.
    fn stop(&mut self) {
        for mut p in self.processes.drain(..) {
            let status = p.run.terminate(PROCESS_BOUND);
            assert!(
                status.success(),
                "{} did not stop cleanly: {status}\n{}",
                p.name,
                p.run.logs()
            );
        }
    }
}

/// Messages the process had taken and not yet settled, from its `/status`; 0 when it does
/// not answer.
fn in_flight(admin_port: u16) -> u64 {
    http_get(admin_port, "/status")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|s| s["status"]["metrics"]["inflight"].as_u64())
        .unwrap_or(0)
}

/// One ledger record, as far as the verifier needs it.
#[derive(Clone, Debug)]
pub struct LedgerRecord {
    /// The message's dedup key, which the producer gave it.
    pub key: String,
    pub status: String,
    /// Settled by ack or dead-lettering: the message left the queue with this record.
    pub final_: bool,
    pub finished_at: SystemTime,
}

/// Every record, through `qt ledger query` (run unbounded and unprinted: it is called every
/// few seconds, once the faults are over). A record without a dedup key (a message that
/// could not be parsed) is matched by its message id.
fn read_ledger(config: &Path, key_of: &HashMap<String, String>) -> Vec<LedgerRecord> {
    let out = qt()
        .args(["ledger", "query", "--json", "--limit", "1000000", "-c"])
        .arg(config)
        // The configuration's per-process values, which reading the ledger does not use.
        .env("QT_CHAOS_AGENT", "http://127.0.0.1:1/")
        .env("QT_CHAOS_ADMIN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qt ledger query: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let finished = chrono::DateTime::parse_from_rfc3339(r["finished_at"].as_str().unwrap()).unwrap();
            LedgerRecord {
                key: r["dedup_key"]
                    .as_str()
                    .or_else(|| key_of.get(r["message_id"].as_str()?).map(String::as_str))
                    .unwrap_or_default()
                    .to_owned(),
                status: r["status"].as_str().unwrap_or_default().to_owned(),
                final_: matches!(r["settlement"].as_str(), Some("ack" | "dead_letter")),
                finished_at: SystemTime::from(finished),
            }
        })
        .collect()
}

/// Publishes the scenario's messages on a thread of its own while the faults strike.
/// Poison messages, the first `poison_percent` of every 100: half not JSON, half refused by
/// the agent for good.
struct Producer {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Produced>,
}

impl Producer {
    fn start(broker: Arc<RunningBroker>, messages: usize, rate: u32, poison_percent: usize) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let body = |i: usize| match i % 100 {
                n if n < poison_percent / 2 => b"{not json".to_vec(),
                n if n < poison_percent => format!(r#"{{"n":{i},"poison":true}}"#).into_bytes(),
                _ => format!(r#"{{"n":{i}}}"#).into_bytes(),
            };
            let produced = runtime().block_on(broker.produce(messages, rate, body));
            finished.store(true, Ordering::SeqCst);
            produced
        });
        Self { done, thread }
    }

    fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn finish(self) -> Produced {
        self.thread.join().expect("the producer")
    }
}
