//! `qt dlq` on Kafka: a session on `dlq_topic` lists without changing anything, removes by
//! committing the `<consumer_group>-dlq` group's offset, and keeps every letter it did not
//! remove, also when it is dropped part way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;
use qt_adapter_kafka::{KafkaAdmin, KafkaDlq, KafkaPublisher};
use qt_core::config::KafkaSourceConfig;
use qt_core::headers::{REPLAYS, dead_letter};
use qt_core::{DlqMessage, DlqReader, Publisher, QueueAdapter};

const WAIT: Duration = Duration::from_secs(30);

/// A source topic, its dead-letter topic with `partitions` partitions, and the section
/// naming both.
async fn scenario(what: &str, partitions: i32) -> (KafkaAdmin, KafkaSourceConfig) {
    init_tracing();
    let admin = KafkaAdmin::plaintext(&brokers()).expect("admin");
    let src = topic(&admin, what, 1).await;
    let dlq = format!("{src}-dlq");
    admin.create_topic(&dlq, partitions).await.expect("create dlq topic");
    let mut cfg = source(&brokers(), &[&src], &unique("g"));
    cfg.dlq_topic = Some(dlq);
    (admin, cfg)
}

fn src(cfg: &KafkaSourceConfig) -> &str {
    &cfg.topics[0]
}

fn dlq(cfg: &KafkaSourceConfig) -> &str {
    cfg.dlq_topic.as_deref().unwrap()
}

/// Writes letters `0..n` to the DLQ as qt dead-letters them: the original headers plus
/// the `x-qt-dlq-*` ones naming the source topic.
async fn dead_letter(cfg: &KafkaSourceConfig, n: usize) {
    let publisher = KafkaPublisher::new(cfg, &settings(8)).expect("publisher");
    let letters = (0..n)
        .map(|i| {
            let mut m = message(dlq(cfg), i);
            m.headers.insert(dead_letter::REASON, format!("agent failed: {i}"));
            m.headers.insert(dead_letter::ORIGINAL_QUEUE, src(cfg).to_owned());
            m.headers
                .insert(dead_letter::ORIGINAL_MESSAGE_ID, format!("{}/0/{i}", src(cfg)));
            m
        })
        .collect();
    publisher.publish_many(letters).await.expect("dead letters written");
}

async fn open(cfg: &KafkaSourceConfig) -> Box<dyn DlqReader> {
    Box::new(KafkaDlq::open(cfg, &settings(8)).await.expect("open the DLQ"))
}

/// Every letter of a session, in its order.
async fn read_all(session: &mut dyn DlqReader) -> Vec<DlqMessage> {
    let mut out = Vec::new();
    while let Some(letter) = tokio::time::timeout(WAIT, session.next())
        .await
        .expect("the session answers")
        .expect("next letter")
    {
        out.push(letter);
    }
    out
}

fn number(letter: &DlqMessage) -> usize {
    letter
        .headers
        .get("x-test-seq")
        .expect("x-test-seq")
        .parse()
        .expect("number")
}

fn numbers(letters: &[DlqMessage]) -> BTreeSet<usize> {
    letters.iter().map(number).collect()
}

fn partition_offset(letter: &DlqMessage) -> (i32, i64) {
    let (p, o) = letter.id.split_once(':').expect("partition:offset");
    (p.parse().unwrap(), o.parse().unwrap())
}

async fn committed(admin: &KafkaAdmin, cfg: &KafkaSourceConfig) -> BTreeMap<i32, Option<i64>> {
    let group = format!("{}-dlq", cfg.consumer_group);
    admin
        .committed_offsets(&group, dlq(cfg))
        .await
        .expect("committed offsets")
}

async fn clean_up(admin: &KafkaAdmin, cfg: &KafkaSourceConfig) {
    admin.delete_topic(src(cfg)).await.ok();
    admin.delete_topic(dlq(cfg)).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_twice_shows_the_same_letters_in_partition_order_and_commits_nothing() {
    let (admin, cfg) = scenario("dlq-list", 2).await;
    dead_letter(&cfg, 8).await;

    let mut first = open(&cfg).await;
    assert_eq!(first.name(), dlq(&cfg));
    let letters = read_all(first.as_mut()).await;
    first.close().await.expect("close");
    assert_eq!(numbers(&letters), (0..8).collect(), "every letter once");
    let places: Vec<(i32, i64)> = letters.iter().map(partition_offset).collect();
    let mut sorted = places.clone();
    sorted.sort_unstable();
    assert_eq!(places, sorted, "partition after partition, each in offset order");
    for (seq, l) in letters.iter().enumerate() {
        let i = number(l);
        assert_eq!(l.seq, seq as u64);
        assert_eq!(l.body, format!("{{\"seq\":{i}}}").as_bytes());
        assert_eq!(l.key.as_deref(), Some(format!("key-{}", i % 7).as_str()));
        assert_eq!(l.headers.get("x-tenant-id"), Some("acme"));
        assert!(l.timestamp.is_some(), "the record's timestamp");
        let details = l.details();
        assert_eq!(details.reason, Some(format!("agent failed: {i}")));
        assert_eq!(details.original_queue.as_deref(), Some(src(&cfg)));
    }

    let mut second = open(&cfg).await;
    let again = read_all(second.as_mut()).await;
    second.close().await.expect("close");
    let ids = |ls: &[DlqMessage]| ls.iter().map(|l| l.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&letters), "listing changed nothing");
    assert!(
        committed(&admin, &cfg).await.values().all(Option::is_none),
        "a session that removed nothing committed nothing"
    );
    clean_up(&admin, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_dlq_ends_at_once() {
    let (admin, cfg) = scenario("dlq-empty", 3).await;
    let mut session = open(&cfg).await;
    let started = std::time::Instant::now();
    assert!(session.next().await.expect("next").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    session.close().await.expect("close");
    clean_up(&admin, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_letters_are_gone_after_close_and_kept_ones_stay_even_before_a_removed_one() {
    let (admin, cfg) = scenario("dlq-remove", 1).await;
    dead_letter(&cfg, 6).await;
    let mut session = open(&cfg).await;
    let letters = read_all(session.as_mut()).await;
    assert_eq!(
        letters.iter().map(number).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    let original: BTreeMap<usize, DlqMessage> = letters.iter().map(|l| (number(l), l.clone())).collect();

    session.remove(&letters[0]).await.expect("remove 0");
    assert_eq!(
        committed(&admin, &cfg).await.get(&0).copied().flatten(),
        Some(1),
        "a removed first letter is committed away at once"
    );
    session.remove(&letters[2]).await.expect("remove 2");
    session.remove(&letters[4]).await.expect("remove 4");
    assert_eq!(
        committed(&admin, &cfg).await.get(&0).copied().flatten(),
        Some(1),
        "kept letter 1 holds the commit back until close"
    );
    session.close().await.expect("close");

    let mut next = open(&cfg).await;
    let rest = read_all(next.as_mut()).await;
    next.close().await.expect("close");
    assert_eq!(
        numbers(&rest),
        BTreeSet::from([1, 3, 5]),
        "exactly the kept letters, once each"
    );
    assert_eq!(rest.len(), 3);
    for l in &rest {
        let before = &original[&number(l)];
        assert_eq!(l.body, before.body);
        assert_eq!(l.key, before.key);
        assert_eq!(l.headers, before.headers, "written again with the same headers");
        assert_eq!(l.timestamp, before.timestamp, "and the same timestamp");
    }
    assert_eq!(
        rest[0].id, letters[5].id,
        "the letter after the last removed one did not move"
    );
    clean_up(&admin, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_after_removing_keeps_every_letter_it_did_not_commit() {
    let (admin, cfg) = scenario("dlq-drop", 1).await;
    dead_letter(&cfg, 4).await;
    let mut session = open(&cfg).await;
    let letters = read_all(session.as_mut()).await;
    session.remove(&letters[0]).await.expect("remove 0");
    session.remove(&letters[2]).await.expect("remove 2");
    // Killed before close: letter 2 lies after kept letter 1, so it was not committed.
    drop(session);

    let mut next = open(&cfg).await;
    let rest = read_all(next.as_mut()).await;
    next.close().await.expect("close");
    assert_eq!(
        rest.iter().map(number).collect::<Vec<_>>(),
        [1, 2, 3],
        "only the committed prefix is gone; every kept letter is still there"
    );
    clean_up(&admin, &cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_to_the_original_topic_and_removal_empties_the_dlq() {
    let (admin, cfg) = scenario("dlq-replay", 2).await;
    dead_letter(&cfg, 3).await;
    let publisher = KafkaPublisher::new(&cfg, &settings(8)).expect("publisher");
    let mut session = open(&cfg).await;
    let letters = read_all(session.as_mut()).await;
    assert_eq!(letters.len(), 3);
    for l in &letters {
        let replay = session.replay_message(l, None).expect("has an original queue");
        publisher.publish(replay).await.expect("replayed");
        session.remove(l).await.expect("remove");
    }
    session.close().await.expect("close");

    let mut after = open(&cfg).await;
    assert!(read_all(after.as_mut()).await.is_empty(), "the DLQ is empty");
    after.close().await.expect("close");

    let reader = connected(&source(&brokers(), &[src(&cfg)], &unique("g")), 8).await;
    let replayed = receive_n(&reader, 3, WAIT).await;
    let seqs: BTreeSet<usize> = replayed.iter().map(seq).collect();
    assert_eq!(seqs, BTreeSet::from([0, 1, 2]));
    for d in &replayed {
        let h = &d.message.headers;
        assert_eq!(h.get(REPLAYS), Some("1"));
        assert_eq!(h.get(dead_letter::REASON), None, "dead-letter headers dropped");
        assert_eq!(h.get("x-tenant-id"), Some("acme"));
    }
    ack_all(replayed).await;
    reader.close().await.expect("close");
    clean_up(&admin, &cfg).await;
}
