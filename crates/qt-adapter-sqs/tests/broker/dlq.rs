//! `qt dlq` on SQS: listing leaves the DLQ as it was, removals are the only change, a
//! session that dies keeps every letter, and replays land on the original queue.

use std::collections::BTreeSet;
use std::time::Duration;

use qt_adapter_sqs::{SqsDlq, SqsPublisher};
use qt_core::headers::{REPLAYS, dead_letter};
use qt_core::{AdapterError, DeadLetter, DlqMessage, DlqReader, Headers, OutgoingMessage, Publisher, SourceInfo};
use tokio::time::sleep;

use crate::common::*;

async fn session(queue: &str, dlq: &str) -> SqsDlq {
    let mut cfg = source(queue);
    cfg.dlq_queue_url = Some(dlq.to_owned());
    SqsDlq::with_credentials(&cfg, &settings(1), credentials())
        .await
        .expect("DLQ session")
}

async fn publisher(queue: &str) -> SqsPublisher {
    SqsPublisher::with_credentials(&source(queue), &settings(1), credentials())
        .await
        .expect("publisher")
}

/// Writes `n` dead letters of `queue` into `dlq` as a trigger would: the dead-letter
/// headers plus the originals, eleven of them in all so some travel folded.
async fn dead_letter(queue: &str, dlq: &str, n: usize, group: Option<&str>) {
    let publisher = publisher(dlq).await;
    for i in 0..n {
        let mut original: Headers = (0..4).map(|h| (format!("x-extra-{h}"), format!("v{h}"))).collect();
        original.insert("x-tenant-id", "acme");
        let mut dl = DeadLetter::new(format!("agent failed: letter {i}"));
        dl.attempts = 3;
        let headers = dl.headers_for(&original, &SourceInfo::new("sqs", queue), &format!("m-{i}"));
        publisher
            .publish(OutgoingMessage {
                body: format!("letter-{i}").into(),
                headers,
                key: group.map(str::to_owned),
                deduplication_id: Some(format!("m-{i}")),
                ..OutgoingMessage::default()
            })
            .await
            .expect("dead letter written");
    }
}

async fn read_all(session: &mut SqsDlq) -> Vec<DlqMessage> {
    let mut out = Vec::new();
    while let Some(letter) = session.next().await.expect("next letter") {
        out.push(letter);
    }
    out
}

fn ids(letters: &[DlqMessage]) -> BTreeSet<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

fn bodies(letters: &[DlqMessage]) -> Vec<String> {
    letters
        .iter()
        .map(|l| String::from_utf8(l.body.to_vec()).expect("text body"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_twice_returns_the_same_letters_and_leaves_them_visible() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    dead_letter(&queue, &dlq, 3, None).await;

    let mut first = session(&queue, &dlq).await;
    assert_eq!(first.name(), dlq);
    let letters = read_all(&mut first).await;
    Box::new(first).close().await.expect("close");
    let mut listed = bodies(&letters);
    listed.sort();
    assert_eq!(listed, ["letter-0", "letter-1", "letter-2"]);
    let seqs: Vec<u64> = letters.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    for letter in &letters {
        let details = letter.details();
        assert_eq!(details.original_queue.as_deref(), Some(queue.as_str()));
        assert_eq!(details.attempts, Some(3));
        assert!(details.reason.unwrap().starts_with("agent failed: letter"));
        assert_eq!(letter.headers.get("x-tenant-id"), Some("acme"));
        assert_eq!(
            letter.headers.get("x-extra-3"),
            Some("v3"),
            "folded headers are unfolded"
        );
        assert!(letter.timestamp.is_some(), "SentTimestamp");
        assert_eq!(letter.key, None);
    }
    assert_eq!(counts(&admin, &dlq).await, (3, 0, 0), "visible again after close");

    let mut second = session(&queue, &dlq).await;
    let again = read_all(&mut second).await;
    Box::new(second).close().await.expect("close");
    assert_eq!(ids(&again), ids(&letters));
    assert_eq!(counts(&admin, &dlq).await, (3, 0, 0));
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_leaves_exactly_the_letters_it_did_not_remove() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    dead_letter(&queue, &dlq, 4, None).await;

    let mut s = session(&queue, &dlq).await;
    let letters = read_all(&mut s).await;
    assert_eq!(letters.len(), 4);
    s.remove(&letters[0]).await.expect("remove");
    s.remove(&letters[2]).await.expect("remove");
    s.remove(&letters[2]).await.expect("removing twice is no error");
    Box::new(s).close().await.expect("close");
    assert_eq!(counts(&admin, &dlq).await, (2, 0, 0));

    let mut s = session(&queue, &dlq).await;
    let rest = read_all(&mut s).await;
    let unknown = DlqMessage {
        seq: 7,
        ..rest[0].clone()
    };
    let err = s.remove(&unknown).await.expect_err("not read by this session");
    assert!(matches!(err, AdapterError::Other { .. }), "{err}");
    Box::new(s).close().await.expect("close");
    assert_eq!(ids(&rest), ids(&[letters[1].clone(), letters[3].clone()]));
    assert_eq!(counts(&admin, &dlq).await, (2, 0, 0));
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_without_close_keeps_every_letter_it_did_not_remove() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    dead_letter(&queue, &dlq, 3, None).await;

    let mut s = session(&queue, &dlq)
        .await
        .with_visibility_timeout(Duration::from_secs(4));
    let letters = read_all(&mut s).await;
    assert_eq!(letters.len(), 3);
    s.remove(&letters[1]).await.expect("remove");
    drop(s);
    assert_eq!(
        counts(&admin, &dlq).await,
        (0, 2, 0),
        "invisible until the session's visibility timeout ends"
    );

    sleep(Duration::from_secs(4)).await;
    let mut s = session(&queue, &dlq).await;
    let rest = read_all(&mut s).await;
    Box::new(s).close().await.expect("close");
    assert_eq!(ids(&rest), ids(&[letters[0].clone(), letters[2].clone()]));
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_letters_are_on_their_original_queue_and_gone_from_the_dlq() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let dlq = create_queue(&admin, false).await;
    dead_letter(&queue, &dlq, 2, None).await;

    let replays = publisher(&queue).await;
    let mut s = session(&queue, &dlq).await;
    while let Some(letter) = s.next().await.expect("next") {
        let message = s.replay_message(&letter, None).expect("replay message");
        assert_eq!(message.destination.as_deref(), Some(queue.as_str()));
        replays.publish(message).await.expect("replayed");
        s.remove(&letter).await.expect("removed");
    }
    Box::new(s).close().await.expect("close");

    assert_eq!(counts(&admin, &dlq).await, (0, 0, 0));
    let mut back = peek(&admin, &queue).await;
    back.sort_by(|a, b| a.body().cmp(&b.body()));
    let back_bodies: Vec<_> = back.iter().map(|m| m.body().unwrap_or_default()).collect();
    assert_eq!(back_bodies, ["letter-0", "letter-1"]);
    for m in &back {
        let attributes = m.message_attributes().expect("attributes");
        assert_eq!(attributes[REPLAYS].string_value(), Some("1"));
        assert_eq!(attributes["x-tenant-id"].string_value(), Some("acme"));
        assert!(
            !attributes.contains_key(dead_letter::REASON),
            "dead-letter headers are not replayed"
        );
    }
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_dlq_lists_a_group_in_order_and_replays_it_with_its_group_id() {
    let admin = admin().await;
    let queue = create_queue(&admin, true).await;
    let dlq = create_queue(&admin, true).await;
    dead_letter(&queue, &dlq, 3, Some("customer-7")).await;
    let queue_name = queue.rsplit('/').next().expect("queue name").to_owned();

    let replays = publisher(&queue).await;
    let mut s = session(&queue, &dlq).await;
    let mut listed = Vec::new();
    while let Some(letter) = s.next().await.expect("next") {
        assert_eq!(letter.key.as_deref(), Some("customer-7"));
        // By name, as `--to` may give it.
        let message = s.replay_message(&letter, Some(&queue_name)).expect("replay message");
        replays.publish(message).await.expect("replayed");
        s.remove(&letter).await.expect("removed");
        listed.push(letter);
    }
    Box::new(s).close().await.expect("close");
    assert_eq!(bodies(&listed), ["letter-0", "letter-1", "letter-2"]);

    assert_eq!(counts(&admin, &dlq).await, (0, 0, 0));
    let back = peek(&admin, &queue).await;
    let back_bodies: Vec<_> = back.iter().map(|m| m.body().unwrap_or_default()).collect();
    assert_eq!(back_bodies, ["letter-0", "letter-1", "letter-2"]);
    for m in &back {
        let system = m.attributes().expect("system attributes");
        assert_eq!(
            system
                .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                .map(String::as_str),
            Some("customer-7")
        );
    }
    delete_queue(&admin, &queue).await;
    delete_queue(&admin, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_that_does_not_exist_is_refused_naming_the_field() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let mut cfg = source(&queue);
    cfg.dlq_queue_url = Some(format!("qt-test-missing-{}", uuid::Uuid::new_v4().simple()));
    let err = SqsDlq::with_credentials(&cfg, &settings(1), credentials())
        .await
        .expect_err("no such queue");
    assert!(matches!(err, AdapterError::MissingResource { .. }), "{err}");
    assert!(err.to_string().contains("source.dlq_queue_url"), "{err}");
    delete_queue(&admin, &queue).await;
}
