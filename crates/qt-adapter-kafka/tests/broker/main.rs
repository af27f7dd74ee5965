//! The adapter against a real Kafka-protocol broker (Nisshi at QT_TEST_KAFKA_BROKERS; start
//! it with `cargo xtask services up`). Every test uses its own topics and group.

#[path = "../common/mod.rs"]
mod common;
mod dlq;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use qt_adapter_kafka::{KafkaAdmin, NOT_BEFORE};
use qt_core::config::KafkaSourceConfig;
use qt_core::headers::{ATTEMPT, dead_letter};
use qt_core::{DeadLetter, ErrorClass, Health, QueueAdapter, SettleError};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(45);

/// A fresh topic and consumer group for one test: the admin client, the topic, the group,
/// and the source configuration that reads them.
async fn scenario(what: &str, partitions: i32) -> (KafkaAdmin, String, String, KafkaSourceConfig) {
    let admin = KafkaAdmin::plaintext(&brokers()).expect("admin");
    let topic = topic(&admin, what, partitions).await;
    let group = unique("g");
    let cfg = source(&brokers(), &[&topic], &group);
    (admin, topic, group, cfg)
}

/// [`scenario`] with a DLQ topic (`<topic>-dlq`) the source dead-letters to.
async fn scenario_with_dlq(what: &str) -> (KafkaAdmin, String, String, String, KafkaSourceConfig) {
    let (admin, topic, group, mut cfg) = scenario(what, 1).await;
    let dlq = topic_named(&admin, &format!("{topic}-dlq")).await;
    cfg.dlq_topic = Some(dlq.clone());
    (admin, topic, group, dlq, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_settles_and_commits_to_the_end() {
    let (admin, topic, group, cfg) = scenario("commit", 3).await;
    let adapter = connected(&cfg, 256).await;
    assert!(adapter.health().await.is_ready());
    let n = 300;
    produce(adapter.publisher(), &topic, 0, n).await;

    let got = receive_n(&adapter, n, WAIT).await;
    let seqs: BTreeSet<usize> = got.iter().map(seq).collect();
    assert_eq!(seqs, (0..n).collect(), "every message exactly once");
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for d in &got {
        let m = &d.message;
        let s = &m.source;
        assert_eq!(&*s.adapter, "kafka");
        assert_eq!(&*s.queue, topic.as_str());
        let (p, o) = (s.partition.unwrap(), s.offset.unwrap());
        assert_eq!(m.message_id, format!("{topic}/{p}/{o}"));
        assert_eq!(s.key.as_deref(), Some(format!("key-{}", seq(d) % 7).as_str()));
        assert_eq!(m.headers.get("x-tenant-id"), Some("acme"));
        assert_eq!(m.body, format!("{{\"seq\":{}}}", seq(d)).as_bytes());
        assert!(m.broker_timestamp.is_some(), "broker timestamp");
        assert!(!s.redelivered);
        // Delivered in partition order.
        if let Some(prev) = last_offset.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
    // Settle from many tasks at once.
    let tasks: Vec<_> = got
        .into_iter()
        .map(|d| tokio::spawn(async move { d.handle.ack().await }))
        .collect();
    for t in tasks {
        t.await.unwrap().expect("ack");
    }
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    adapter.close().await.expect("close");
    assert!(!adapter.health().await.is_ready(), "closed reports unhealthy");
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_after_the_committed_offset() {
    let (admin, topic, group, cfg) = scenario("restart", 1).await;
    let first = connected(&cfg, 200).await;
    produce(first.publisher(), &topic, 0, 100).await;
    let mut got = receive_n(&first, 100, WAIT).await;
    got.sort_by_key(|d| d.message.source.offset);
    let rest = got.split_off(60);
    // Finish 0..60 out of order; leave 60..100 unsettled.
    let mut done = got;
    done.reverse();
    ack_all(done).await;
    eventually("offset 60 committed", WAIT, || async {
        let c = admin.committed_offsets(&group, &topic).await.ok()?;
        (c.get(&0).copied().flatten() == Some(60)).then_some(())
    })
    .await;
    first.close().await.expect("close");
    // Unsettled handles dropped after close change nothing.
    drop(rest);
    let committed = admin.committed_offsets(&group, &topic).await.unwrap();
    assert_eq!(committed.get(&0).copied().flatten(), Some(60));

    let second = connected(&cfg, 200).await;
    let again = receive_n(&second, 40, WAIT).await;
    let offsets: Vec<i64> = again.iter().map(|d| d.message.source.offset.unwrap()).collect();
    assert_eq!(
        offsets,
        (60..100).collect::<Vec<_>>(),
        "resumes exactly after the commit"
    );
    let extra = receive_for(&second, Duration::from_secs(1)).await;
    assert!(extra.is_empty(), "nothing before the commit is redelivered");
    ack_all(again).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    second.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_acks_never_commit_past_an_unfinished_message() {
    let (admin, topic, group, cfg) = scenario("order", 3).await;
    let admin = Arc::new(admin);
    let adapter = Arc::new(connected(&cfg, 64).await);
    let n = 600;
    produce(adapter.publisher(), &topic, 0, n).await;

    // Offsets whose ack has started, per partition. Recorded before ack() is called, so a
    // commit can never cover an offset that is not in here yet.
    let started: Arc<Mutex<BTreeMap<i32, BTreeSet<i64>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (admin, started, stop, group, topic) = (
            admin.clone(),
            started.clone(),
            stop.clone(),
            group.clone(),
            topic.clone(),
        );
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(committed) = admin.committed_offsets(&group, &topic).await {
                    let snapshot = started.lock().clone();
                    for (p, c) in committed {
                        let Some(c) = c else { continue };
                        let acked = snapshot.get(&p).cloned().unwrap_or_default();
                        // Every offset below the commit must have been acked (offsets are
                        // dense on a fresh topic).
                        for o in 0..c {
                            assert!(
                                acked.contains(&o),
                                "partition {p}: committed {c} but offset {o} is unfinished"
                            );
                        }
                    }
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };

    let mut received = 0;
    let mut tasks = Vec::new();
    let deadline = Instant::now() + WAIT;
    while received < n {
        assert!(Instant::now() < deadline, "received only {received} of {n}");
        let batch = tokio::time::timeout(WAIT, adapter.receive(32))
            .await
            .expect("receive in time")
            .unwrap();
        received += batch.len();
        for d in batch {
            let started = started.clone();
            let delay = rand::rng().random_range(0..40);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let s = &d.message.source;
                started
                    .lock()
                    .entry(s.partition.unwrap())
                    .or_default()
                    .insert(s.offset.unwrap());
                d.handle.ack().await
            }));
        }
        // Keep many acks outstanding, like an engine with bounded concurrency.
        if tasks.len() > 200 {
            for t in tasks.drain(..100) {
                t.await.unwrap().expect("ack");
            }
        }
    }
    for t in tasks {
        t.await.unwrap().expect("ack");
    }
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.expect("no committed offset passed an unfinished message");
    assert!(samples > 5, "the sampler ran ({samples} samples)");
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_original_and_add_the_reasons() {
    let (admin, topic, group, dlq, cfg) = scenario_with_dlq("src").await;
    let adapter = connected(&cfg, 32).await;
    assert!(adapter.capabilities().dead_letter);
    produce(adapter.publisher(), &topic, 0, 3).await;
    let mut got = receive_n(&adapter, 3, WAIT).await;
    got.sort_by_key(|d| d.message.source.offset);
    let mut it = got.into_iter();
    let first = it.next().unwrap();
    let failed = it.next().unwrap();
    let last = it.next().unwrap();
    let original_key = failed.message.source.key.clone();
    let mut dl = DeadLetter::new("agent failed: boom");
    dl.error_class = Some(ErrorClass::Permanent);
    dl.attempts = 3;
    failed.handle.dead_letter(dl).await.expect("dead letter written");
    ack_all(vec![first, last]).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;

    // Read the DLQ with a second adapter.
    let reader = connected(&source(&brokers(), &[&dlq], &unique("g")), 8).await;
    let letters = receive_n(&reader, 1, WAIT).await;
    let m = &letters[0].message;
    assert_eq!(m.body, b"{\"seq\":1}".as_slice(), "original value");
    assert_eq!(m.source.key, original_key, "original key");
    assert_eq!(m.headers.get("x-test-seq"), Some("1"), "original headers");
    assert_eq!(m.headers.get("x-tenant-id"), Some("acme"));
    assert_eq!(m.headers.get(dead_letter::REASON), Some("agent failed: boom"));
    assert_eq!(m.headers.get(dead_letter::ERROR_CLASS), Some("permanent"));
    assert_eq!(m.headers.get(dead_letter::ATTEMPTS), Some("3"));
    assert_eq!(m.headers.get(dead_letter::ORIGINAL_QUEUE), Some(topic.as_str()));
    assert_eq!(m.headers.get(dead_letter::ORIGINAL_PARTITION), Some("0"));
    assert_eq!(m.headers.get(dead_letter::ORIGINAL_OFFSET), Some("1"));
    assert_eq!(
        m.headers.get(dead_letter::ORIGINAL_MESSAGE_ID),
        Some(format!("{topic}/0/1").as_str())
    );
    ack_all(letters).await;
    reader.close().await.unwrap();
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
    admin.delete_topic(&dlq).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_that_is_not_utf8_fails_only_its_record_which_is_dead_lettered_whole() {
    let (admin, topic, group, dlq, cfg) = scenario_with_dlq("badkey").await;
    let adapter = connected(&cfg, 32).await;
    let broker = brokers().split(',').next().unwrap().to_owned();
    let headers: [(&[u8], &[u8]); 3] = [
        (b"x-tenant-id", b"acme"),
        (b"\xff\xfekey", b"value"),
        (b"x-after", b"1"),
    ];
    let raw = tokio::task::spawn_blocking(move || {
        qt_test_support::raw_kafka::produce(&broker, &topic, b"{\"seq\":0}", &headers);
        topic
    });
    let topic = raw.await.unwrap();
    produce(adapter.publisher(), &topic, 1, 1).await;

    // The consumer survives the record and goes on to the next one.
    let mut got = receive_n(&adapter, 2, WAIT).await;
    got.sort_by_key(|d| d.message.source.offset);
    let next = got.pop().unwrap();
    let hostile = got.pop().unwrap();
    assert_eq!(next.message.unreadable, None);
    assert_eq!(seq(&next), 1);
    let reason = hostile
        .message
        .unreadable
        .clone()
        .expect("the record is marked unreadable");
    assert!(
        reason.contains("header 1 (counting from 0, of 3) has a key that is not UTF-8"),
        "{reason}"
    );
    assert_eq!(
        hostile.message.headers.get("x-tenant-id"),
        Some("acme"),
        "readable headers are kept"
    );
    assert_eq!(hostile.message.headers.get("x-after"), Some("1"));
    assert_eq!(hostile.message.body, b"{\"seq\":0}".as_slice());
    hostile
        .handle
        .dead_letter(DeadLetter::new(format!(
            "the message could not be read from the broker: {reason}"
        )))
        .await
        .expect("dead letter written");
    ack_all(vec![next]).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;

    // The letter carries every header as it came, the unreadable one in its place, and
    // qt's dead-letter headers after them.
    let reader = connected(&source(&brokers(), &[&dlq], &unique("g")), 8).await;
    let letters = receive_n(&reader, 1, WAIT).await;
    let letter = &letters[0].message;
    let again = letter
        .unreadable
        .as_deref()
        .expect("the letter keeps the unreadable header");
    assert!(again.contains("header 1 (counting from 0, of "), "{again}");
    assert_eq!(letter.headers.get("x-tenant-id"), Some("acme"));
    assert_eq!(letter.headers.get("x-after"), Some("1"));
    assert!(
        letter
            .headers
            .get(dead_letter::REASON)
            .is_some_and(|r| r.contains("not UTF-8")),
        "{:?}",
        letter.headers
    );
    assert_eq!(letter.body, b"{\"seq\":0}".as_slice());
    ack_all(letters).await;
    reader.close().await.unwrap();
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
    admin.delete_topic(&dlq).await.ok();
}

async fn topic_named(admin: &KafkaAdmin, name: &str) -> String {
    admin.create_topic(name, 1).await.expect("create topic");
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_reproduces_with_the_next_attempt_and_honours_the_delay() {
    let (admin, topic, group, cfg) = scenario("requeue", 2).await;
    let adapter = connected(&cfg, 32).await;
    produce(adapter.publisher(), &topic, 0, 4).await;
    let got = receive_n(&adapter, 4, WAIT).await;
    let mut by_seq: BTreeMap<usize, _> = got.into_iter().map(|d| (seq(&d), d)).collect();
    let now_retry = by_seq.remove(&0).unwrap();
    let later_retry = by_seq.remove(&1).unwrap();
    now_retry.handle.requeue(None, 2).await.expect("requeue");
    let requeued_at = Instant::now();
    later_retry
        .handle
        .requeue(Some(Duration::from_secs(2)), 3)
        .await
        .expect("delayed requeue");
    ack_all(by_seq.into_values().collect()).await;

    let again = receive_n(&adapter, 1, WAIT).await;
    assert_eq!(seq(&again[0]), 0, "the undelayed requeue comes back first");
    assert_eq!(again[0].message.headers.get(ATTEMPT), Some("2"));
    assert_eq!(again[0].message.attempt(), 2);
    assert_eq!(again[0].message.source.key.as_deref(), Some("key-0"));
    assert_eq!(again[0].message.headers.get("x-tenant-id"), Some("acme"));
    let delayed = receive_n(&adapter, 1, WAIT).await;
    let waited = requeued_at.elapsed();
    assert_eq!(seq(&delayed[0]), 1);
    assert_eq!(delayed[0].message.headers.get(ATTEMPT), Some("3"));
    assert!(delayed[0].message.headers.get(NOT_BEFORE).is_some());
    assert!(
        waited >= Duration::from_millis(1900),
        "delivered after {waited:?}, before its delay"
    );
    ack_all(again).await;
    ack_all(delayed).await;
    // The originals and the requeued copies are all committed.
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    let ends = admin.end_offsets(&topic).await.unwrap();
    assert_eq!(ends.values().sum::<i64>(), 6, "4 originals + 2 requeued copies");
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_without_dlq_topic_fails_and_the_message_comes_back() {
    let (admin, topic, group, cfg) = scenario("nodlq", 1).await;
    let adapter = connected(&cfg, 32).await;
    assert!(!adapter.capabilities().dead_letter);
    produce(adapter.publisher(), &topic, 0, 3).await;
    let mut got = receive_n(&adapter, 3, WAIT).await;
    got.sort_by_key(|d| d.message.source.offset);
    let mut it = got.into_iter();
    let first = it.next().unwrap();
    let second = it.next().unwrap();
    let third = it.next().unwrap();
    first.handle.ack().await.unwrap();
    let err = second
        .handle
        .dead_letter(DeadLetter::new("bad input"))
        .await
        .expect_err("no DLQ topic configured");
    assert!(matches!(err, SettleError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("dlq_topic"), "{err}");
    // A later message finished after the failure is stale: it will be delivered again.
    assert!(matches!(
        third.handle.ack().await,
        Err(SettleError::ConnectionLost { .. })
    ));
    // The partition is rewound to the failed message: it and the one after it come back.
    let again = receive_n(&adapter, 2, WAIT).await;
    let offsets: Vec<i64> = again.iter().map(|d| d.message.source.offset.unwrap()).collect();
    assert_eq!(offsets, vec![1, 2]);
    assert!(again.iter().all(|d| d.message.source.redelivered));
    // Meanwhile nothing past the failed message was committed.
    let committed = admin.committed_offsets(&group, &topic).await.unwrap();
    assert!(committed[&0].is_none_or(|c| c <= 1), "{committed:?}");
    ack_all(again).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_is_delivered_again() {
    let (admin, topic, group, cfg) = scenario("drop", 1).await;
    let adapter = connected(&cfg, 32).await;
    produce(adapter.publisher(), &topic, 0, 2).await;
    let mut got = receive_n(&adapter, 2, WAIT).await;
    got.sort_by_key(|d| d.message.source.offset);
    let second = got.pop().unwrap();
    drop(got);
    second.handle.ack().await.expect_err("stale after the rewind");
    let again = receive_n(&adapter, 2, WAIT).await;
    let offsets: Vec<i64> = again.iter().map(|d| d.message.source.offset.unwrap()).collect();
    assert_eq!(offsets, vec![0, 1]);
    ack_all(again).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_adapters_in_one_group_split_the_partitions() {
    let (admin, topic, group, cfg) = scenario("split", 4).await;
    let a = Arc::new(connected(&cfg, 256).await);
    let b = Arc::new(connected(&cfg, 256).await);
    // Wait for a stable split before producing, so no partition moves mid-test.
    eventually("both members to own partitions", WAIT, || async {
        let (sa, sb) = (a.status(), b.status());
        let both = !sa.assignment.is_empty() && !sb.assignment.is_empty();
        (both && sa.assignment.len() + sb.assignment.len() == 4).then_some(())
    })
    .await;
    let (pa, pb) = (a.status().assignment, b.status().assignment);
    assert!(pa.iter().all(|p| !pb.contains(p)), "disjoint: {pa:?} / {pb:?}");

    let n = 400;
    produce(a.publisher(), &topic, 0, n).await;
    let seen: Arc<Mutex<Vec<(char, usize, i32)>>> = Arc::default();
    let consume = |who: char,
                   adapter: Arc<qt_adapter_kafka::KafkaAdapter>,
                   seen: Arc<Mutex<Vec<(char, usize, i32)>>>| async move {
        loop {
            let Ok(batch) = tokio::time::timeout(Duration::from_millis(500), adapter.receive(64)).await else {
                continue;
            };
            let batch = batch.unwrap();
            if batch.is_empty() {
                return;
            }
            for d in batch {
                seen.lock().push((who, seq(&d), d.message.source.partition.unwrap()));
                d.handle.ack().await.unwrap();
            }
        }
    };
    let ta = tokio::spawn(consume('a', a.clone(), seen.clone()));
    let tb = tokio::spawn(consume('b', b.clone(), seen.clone()));
    eventually("all messages received", WAIT, || async {
        (seen.lock().len() >= n).then_some(())
    })
    .await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    ta.await.unwrap();
    tb.await.unwrap();

    let seen = seen.lock().clone();
    let seqs: BTreeSet<usize> = seen.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(seqs, (0..n).collect(), "together they receive every message");
    assert_eq!(seen.len(), n, "and each exactly once");
    for (who, _, p) in &seen {
        let owned = if *who == 'a' { &pa } else { &pb };
        assert!(
            owned.iter().any(|(_, q)| q == p),
            "{who} received from partition {p} it does not own"
        );
    }
    assert!(seen.iter().any(|(w, ..)| *w == 'a') && seen.iter().any(|(w, ..)| *w == 'b'));
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_and_slow_handlers_keep_the_group_membership() {
    let (admin, topic, group, mut cfg) = scenario("pause", 2).await;
    // A handler slower than max.poll.interval.ms must not cost the assignment.
    cfg.options.insert("max.poll.interval.ms".into(), "7000".into());
    let adapter = connected(&cfg, 8).await;
    produce(adapter.publisher(), &topic, 0, 40).await;
    let held = receive_n(&adapter, 8, WAIT).await;
    let rebalances = adapter.status().rebalances;
    // Hold these unsettled and receive nothing for longer than max.poll.interval.ms: the
    // buffer fills to max_in_flight and the partitions are paused, while polling goes on.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let status = adapter.status();
    assert_eq!(status.rebalances, rebalances, "no rebalance while the handler was slow");
    assert!(status.buffered <= 8 + 2 * 2 * 1_024, "buffer bounded: {status:?}");
    assert_eq!(adapter.health().await, Health::Healthy);
    ack_all(held).await;

    adapter.pause().await.unwrap();
    let drained = receive_for(&adapter, Duration::from_millis(500)).await;
    let paused_at = drained.len();
    ack_all(drained).await;
    produce(adapter.publisher(), &topic, 40, 10).await;
    let while_paused = receive_for(&adapter, Duration::from_secs(2)).await;
    assert!(
        while_paused.is_empty(),
        "nothing new while paused ({} arrived, {paused_at} were buffered before)",
        while_paused.len()
    );
    assert_eq!(adapter.status().rebalances, rebalances, "paused, still in the group");
    adapter.resume().await.unwrap();
    let rest = receive_n(&adapter, 50 - 8 - paused_at, WAIT).await;
    ack_all(rest).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_the_consumer_lag() {
    let (admin, topic, _, cfg) = scenario("lag", 2).await;
    let adapter = connected(&cfg, 100).await;
    produce(adapter.publisher(), &topic, 0, 50).await;
    let got = receive_n(&adapter, 50, WAIT).await;
    eventually("backlog of 50 unfinished messages", WAIT, || async {
        (adapter.backlog().await.unwrap() == Some(50)).then_some(())
    })
    .await;
    ack_all(got).await;
    eventually("backlog back to 0", WAIT, || async {
        (adapter.backlog().await.unwrap() == Some(0)).then_some(())
    })
    .await;
    adapter.close().await.unwrap();
    admin.delete_topic(&topic).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_connect_clearly() {
    let missing = unique("missing");
    let cfg = source(&brokers(), &[&missing], &unique("g"));
    let adapter = qt_adapter_kafka::KafkaAdapter::new(&cfg, settings(8)).unwrap();
    let err = adapter.connect().await.expect_err("missing topic");
    let text = err.to_string();
    assert!(text.contains(&missing), "{text}");
    assert!(matches!(err, qt_core::AdapterError::MissingResource { .. }), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_waits_for_in_flight_messages_and_commits_what_finished() {
    let (admin, topic, group, cfg) = scenario("revoke", 2).await;
    let a = Arc::new(connected(&cfg, 64).await);
    produce(a.publisher(), &topic, 0, 20).await;
    let mut held = receive_n(&a, 20, WAIT).await;
    held.sort_by_key(|d| (d.message.source.partition, d.message.source.offset));
    // Per partition, the first half finishes during the revocation, the rest does not.
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for d in &held {
        *counts.entry(d.message.source.partition.unwrap()).or_default() += 1;
    }
    let (early, late): (Vec<_>, Vec<_>) = held.into_iter().partition(|d| {
        let s = &d.message.source;
        s.offset.unwrap() < counts[&s.partition.unwrap()] / 2
    });
    let late_ids: BTreeSet<(i32, i64)> = late
        .iter()
        .map(|d| (d.message.source.partition.unwrap(), d.message.source.offset.unwrap()))
        .collect();

    // A second member joins: A is asked to give its partitions up and waits for the engine.
    let b = Arc::new(connected(&cfg, 64).await);
    eventually("A to start revoking", WAIT, || async {
        (!a.status().revoking.is_empty()).then_some(())
    })
    .await;
    ack_all(early).await;
    // The late half outlives revoke_drain_timeout; the partitions are let go without it.
    eventually("the group to settle on two members", WAIT, || async {
        let (sa, sb) = (a.status(), b.status());
        (sa.revoking.is_empty() && !sa.assignment.is_empty() && !sb.assignment.is_empty()).then_some(())
    })
    .await;
    let committed = admin.committed_offsets(&group, &topic).await.unwrap();
    for (p, n) in &counts {
        assert_eq!(
            committed[p],
            Some(n / 2),
            "partition {p}: the finished half is committed"
        );
    }
    for d in late {
        let err = d
            .handle
            .ack()
            .await
            .expect_err("a settle after the revocation does not count");
        assert!(matches!(err, SettleError::ConnectionLost { .. }), "{err}");
    }

    // The unfinished half is delivered again to the new owners, and nothing else.
    let seen: Arc<Mutex<BTreeSet<(i32, i64)>>> = Arc::default();
    let consume = |adapter: Arc<qt_adapter_kafka::KafkaAdapter>, seen: Arc<Mutex<BTreeSet<(i32, i64)>>>| async move {
        loop {
            let Ok(batch) = tokio::time::timeout(Duration::from_millis(300), adapter.receive(64)).await else {
                continue;
            };
            let batch = batch.unwrap();
            if batch.is_empty() {
                return;
            }
            for d in batch {
                let s = &d.message.source;
                assert!(
                    seen.lock().insert((s.partition.unwrap(), s.offset.unwrap())),
                    "delivered twice"
                );
                d.handle.ack().await.unwrap();
            }
        }
    };
    let ta = tokio::spawn(consume(a.clone(), seen.clone()));
    let tb = tokio::spawn(consume(b.clone(), seen.clone()));
    eventually("the unfinished half again", WAIT, || async {
        (seen.lock().len() >= late_ids.len()).then_some(())
    })
    .await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    ta.await.unwrap();
    tb.await.unwrap();
    assert_eq!(*seen.lock(), late_ids);
    admin.delete_topic(&topic).await.ok();
}
