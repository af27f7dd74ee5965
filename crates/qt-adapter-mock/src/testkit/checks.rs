//! The checks, one function each, named after the behaviour they check.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use qt_core::headers::{ATTEMPT, TRACEPARENT};
use qt_core::{DeadLetter, Delivery, ErrorClass, QueueAdapter, SettleError, Settlement, Settling};
use tokio::time::Instant;

use super::{DeadLetterCopy, TestMessage, TestQueue};

/// Headers of qt's own; dead letters must carry every one the adapter was asked to write.
const QT_HEADER_PREFIX: &str = "x-qt-";

/// An ack removes the message for good: a later adapter on the queue does not get it.
pub async fn an_acked_message_is_not_delivered_again(queue: &dyn TestQueue) {
    let sent = message("ack");
    queue.publish(sent.clone()).await;
    let adapter = connected(queue).await;
    let delivery = receive(queue, adapter.as_ref(), &sent).await;
    assert_carries(&delivery, &sent);
    delivery.handle.ack().await.expect("the ack succeeds");
    close(adapter.as_ref()).await;

    let adapter = connected(queue).await;
    assert_only_a_sentinel_arrives(queue, adapter.as_ref(), "after the ack").await;
    close(adapter.as_ref()).await;
}

/// A handle dropped without settling leaves the message to be delivered again.
pub async fn a_dropped_handle_is_redelivered(queue: &dyn TestQueue) {
    let sent = message("drop");
    queue.publish(sent.clone()).await;
    let adapter = connected(queue).await;
    let first = receive(queue, adapter.as_ref(), &sent).await;
    let id = first.message.message_id.clone();
    drop(first);

    let again = receive(queue, adapter.as_ref(), &sent).await;
    assert_eq!(again.message.message_id, id, "the redelivery keeps the message id");
    assert_carries(&again, &sent);
    again.handle.ack().await.expect("the redelivery can be acked");
    close(adapter.as_ref()).await;
}

/// A requeue with a delay brings the message back no earlier than the delay, carrying the
/// attempt the requeue asked for.
pub async fn a_delayed_requeue_comes_back_no_earlier_than_its_delay_with_its_attempt(queue: &dyn TestQueue) {
    let check = "a_delayed_requeue_comes_back_no_earlier_than_its_delay_with_its_attempt";
    let adapter = queue.adapter().await;
    if !adapter.capabilities().delayed_requeue {
        return skip(adapter.as_ref(), check, "its capabilities declare no delayed requeue");
    }
    connect(adapter.as_ref()).await;
    let sent = message("requeue");
    queue.publish(sent.clone()).await;
    let first = receive(queue, adapter.as_ref(), &sent).await;
    let attempt = first.message.attempt() + 1;
    let delay = queue.patience().requeue_delay;
    let requeued_at = Instant::now();
    first
        .handle
        .requeue(Some(delay), attempt)
        .await
        .expect("the requeue succeeds");

    let back = receive_within(adapter.as_ref(), &sent, delay + queue.patience().arrival).await;
    let waited = requeued_at.elapsed();
    assert!(
        waited >= delay,
        "came back after {waited:?}, before the {delay:?} delay"
    );
    assert_carries(&back, &sent);
    assert_eq!(back.message.attempt(), attempt, "the attempt the requeue asked for");
    match back.message.headers.get(ATTEMPT) {
        Some(header) => assert_eq!(header, attempt.to_string(), "{ATTEMPT}"),
        None => note(
            adapter.as_ref(),
            check,
            &format!("no {ATTEMPT} header: the attempt comes from the broker's delivery count"),
        ),
    }
    back.handle.ack().await.expect("the requeued message can be acked");
    close(adapter.as_ref()).await;
}

/// A dead letter carries the original body and headers and every `x-qt-*` header of
/// [`DeadLetter::headers_for`]; the original is not delivered again.
pub async fn a_dead_letter_carries_every_qt_header_and_the_original_body_and_headers(queue: &dyn TestQueue) {
    let check = "a_dead_letter_carries_every_qt_header_and_the_original_body_and_headers";
    let adapter = queue.adapter().await;
    if !adapter.capabilities().dead_letter {
        return skip(adapter.as_ref(), check, "its capabilities declare no dead-lettering");
    }
    if let Err(unsupported) = queue.take_dead_letters().await {
        return skip(adapter.as_ref(), check, &unsupported.0);
    }
    connect(adapter.as_ref()).await;
    let sent = message("dead-letter");
    queue.publish(sent.clone()).await;
    let delivery = receive(queue, adapter.as_ref(), &sent).await;
    let dead_letter = full_dead_letter();
    let expected = dead_letter.headers_for(
        &delivery.message.headers,
        &delivery.message.source,
        &delivery.message.message_id,
    );
    delivery
        .handle
        .dead_letter(dead_letter)
        .await
        .expect("dead-lettering succeeds");

    let copy = dead_letter_of(queue, &sent).await;
    assert_eq!(copy.body, sent.body.as_bytes(), "the original body");
    for (name, value) in sent.headers.iter() {
        assert_eq!(copy.headers.get(name), Some(value), "the original header {name}");
    }
    let qt_headers: Vec<(&str, &str)> = expected
        .iter()
        .filter(|(name, _)| name.starts_with(QT_HEADER_PREFIX) || *name == TRACEPARENT)
        .collect();
    for (name, value) in qt_headers {
        assert_eq!(copy.headers.get(name), Some(value), "the dead-letter header {name}");
    }
    assert_only_a_sentinel_arrives(queue, adapter.as_ref(), "after dead-lettering").await;
    close(adapter.as_ref()).await;
}

/// While paused (once `pause_grace` has passed), the adapter delivers nothing; after resume,
/// what arrived meanwhile comes.
pub async fn pause_stops_intake_and_resume_restarts_it(queue: &dyn TestQueue) {
    let adapter = queue.adapter().await;
    if !adapter.capabilities().pause {
        return skip(
            adapter.as_ref(),
            "pause_stops_intake_and_resume_restarts_it",
            "its capabilities declare no pause",
        );
    }
    connect(adapter.as_ref()).await;
    // A first message proves the adapter is consuming before it is paused.
    let before = message("before-pause");
    queue.publish(before.clone()).await;
    receive(queue, adapter.as_ref(), &before)
        .await
        .handle
        .ack()
        .await
        .expect("ack");

    adapter.pause().await.expect("pause succeeds");
    tokio::time::sleep(queue.patience().pause_grace).await;
    let during = message("while-paused");
    queue.publish(during.clone()).await;
    let quiet = queue.patience().quiet;
    if let Ok(batch) = tokio::time::timeout(quiet, adapter.receive(10)).await {
        panic!(
            "delivered while paused: {:?}",
            batch.map(|b| bodies(&b)).unwrap_or_else(|e| vec![e.to_string()])
        );
    }
    adapter.resume().await.expect("resume succeeds");
    receive(queue, adapter.as_ref(), &during)
        .await
        .handle
        .ack()
        .await
        .expect("ack");
    close(adapter.as_ref()).await;
}

/// Health turns not-ready when the connection to the broker is lost, and ready again (and
/// messages flow) once it is back.
pub async fn health_reflects_a_lost_connection_and_its_recovery(queue: &dyn TestQueue) {
    let check = "health_reflects_a_lost_connection_and_its_recovery";
    let adapter = connected(queue).await;
    let arrival = queue.patience().arrival;
    wait_for_health(adapter.as_ref(), true, arrival, "before the cut").await;
    if let Err(unsupported) = queue.cut_connection().await {
        close(adapter.as_ref()).await;
        return skip(adapter.as_ref(), check, &unsupported.0);
    }
    wait_for_health(adapter.as_ref(), false, arrival, "with the connection cut").await;
    queue.restore_connection().await;
    wait_for_health(adapter.as_ref(), true, arrival, "after the connection came back").await;

    let after = message("after-recovery");
    queue.publish(after.clone()).await;
    receive(queue, adapter.as_ref(), &after)
        .await
        .handle
        .ack()
        .await
        .expect("ack after recovery");
    close(adapter.as_ref()).await;
}

/// Settlements under way when `close` is called finish, and count: what they acked is not
/// delivered again, what they dead-lettered reaches the dead-letter destination.
pub async fn close_lets_in_flight_settlements_finish(queue: &dyn TestQueue) {
    let adapter = connected(queue).await;
    let acked: Vec<TestMessage> = (0..3).map(|i| message(&format!("close-ack-{i}"))).collect();
    let dead = (adapter.capabilities().dead_letter && queue.take_dead_letters().await.is_ok())
        .then(|| message("close-dead-letter"));
    let mut sent = acked.clone();
    sent.extend(dead.clone());
    for m in &sent {
        queue.publish(m.clone()).await;
    }
    let mut settling = Vec::new();
    for m in &sent {
        let delivery = receive(queue, adapter.as_ref(), m).await;
        let settlement = if Some(m.body.as_str()) == dead.as_ref().map(|d| d.body.as_str()) {
            Settlement::DeadLetter(Box::new(full_dead_letter()))
        } else {
            Settlement::Ack
        };
        settling.push(InFlight::Waiting(delivery.handle.settle(settlement)));
    }
    // Every settlement has started (been polled once) before close is called.
    start_all(&mut settling).await;
    let (results, closed) = tokio::join!(finish_all(settling), adapter.close());
    closed.expect("close succeeds");
    for (m, result) in sent.iter().zip(results) {
        if let Err(e) = result {
            panic!("settling {:?} failed while the adapter closed: {e}", m.body);
        }
    }
    if let Some(dead) = &dead {
        dead_letter_of(queue, dead).await;
    }
    let adapter = connected(queue).await;
    assert_only_a_sentinel_arrives(queue, adapter.as_ref(), "after the close").await;
    close(adapter.as_ref()).await;
}

enum InFlight {
    Waiting(Settling),
    Done(Result<(), SettleError>),
}

async fn start_all(settling: &mut [InFlight]) {
    poll_fn(|cx| {
        for slot in settling.iter_mut() {
            if let InFlight::Waiting(future) = slot
                && let Poll::Ready(result) = Pin::new(future).poll(cx)
            {
                *slot = InFlight::Done(result);
            }
        }
        Poll::Ready(())
    })
    .await;
}

async fn finish_all(settling: Vec<InFlight>) -> Vec<Result<(), SettleError>> {
    let mut results = Vec::with_capacity(settling.len());
    for slot in settling {
        results.push(match slot {
            InFlight::Waiting(future) => future.await,
            InFlight::Done(result) => result,
        });
    }
    results
}

fn message(what: &str) -> TestMessage {
    TestMessage {
        body: format!("conformance {what} {}", uuid::Uuid::new_v4().simple()),
        headers: [("x-tenant-id", "acme"), ("x-conformance-check", what)]
            .into_iter()
            .collect(),
    }
}

/// A dead letter with every field set, so that every dead-letter header is written.
fn full_dead_letter() -> DeadLetter {
    let now = Utc::now();
    let mut dead_letter = DeadLetter::new("conformance: the handler failed for good");
    dead_letter.error_class = Some(ErrorClass::Permanent);
    dead_letter.attempts = 3;
    dead_letter.first_failure_at = Some(now - chrono::Duration::seconds(30));
    dead_letter.last_failure_at = Some(now);
    dead_letter.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
    dead_letter
}

async fn connect(adapter: &dyn QueueAdapter) {
    if let Err(e) = adapter.connect().await {
        panic!("connecting the {} adapter to {}: {e}", adapter.kind(), adapter.queue());
    }
}

async fn connected(queue: &dyn TestQueue) -> Box<dyn QueueAdapter> {
    let adapter = queue.adapter().await;
    connect(adapter.as_ref()).await;
    adapter
}

async fn close(adapter: &dyn QueueAdapter) {
    if let Err(e) = adapter.close().await {
        panic!("closing the {} adapter: {e}", adapter.kind());
    }
}

async fn receive(queue: &dyn TestQueue, adapter: &dyn QueueAdapter, wanted: &TestMessage) -> Delivery {
    receive_within(adapter, wanted, queue.patience().arrival).await
}

/// Receives until `wanted` arrives. Any other message is a failure: each check's queue is
/// fresh and the check settles every message before the next one can arrive.
async fn receive_within(adapter: &dyn QueueAdapter, wanted: &TestMessage, within: Duration) -> Delivery {
    let deadline = Instant::now() + within;
    loop {
        let batch = match tokio::time::timeout_at(deadline, adapter.receive(1)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => panic!("receive failed while waiting for {:?}: {e}", wanted.body),
            Err(_) => panic!("{:?} did not arrive within {within:?}", wanted.body),
        };
        assert!(
            !batch.is_empty(),
            "receive returned an empty batch (the adapter closed) while waiting for {:?}",
            wanted.body
        );
        let mut wanted_delivery = None;
        let mut others = Vec::new();
        for delivery in batch {
            if delivery.message.body == wanted.body.as_bytes() && wanted_delivery.is_none() {
                wanted_delivery = Some(delivery);
            } else {
                others.push(delivery);
            }
        }
        assert!(
            others.is_empty(),
            "expected {:?}, also got {:?}",
            wanted.body,
            bodies(&others)
        );
        if let Some(delivery) = wanted_delivery {
            return delivery;
        }
    }
}

/// Publishes a sentinel and receives until it has arrived and `quiet` has passed; anything
/// else delivered meanwhile is a message that should have been gone.
async fn assert_only_a_sentinel_arrives(queue: &dyn TestQueue, adapter: &dyn QueueAdapter, when: &str) {
    let sentinel = message("sentinel");
    queue.publish(sentinel.clone()).await;
    let patience = queue.patience();
    let quiet_until = Instant::now() + patience.quiet;
    let deadline = Instant::now() + patience.arrival.max(patience.quiet);
    let mut seen_sentinel = false;
    while !seen_sentinel || Instant::now() < quiet_until {
        let wait_until = if seen_sentinel { quiet_until } else { deadline };
        let batch = match tokio::time::timeout_at(wait_until, adapter.receive(10)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => panic!("receive failed {when}: {e}"),
            Err(_) if seen_sentinel => break,
            Err(_) => panic!(
                "the sentinel message did not arrive within {:?} {when}",
                patience.arrival
            ),
        };
        assert!(!batch.is_empty(), "the adapter closed {when}");
        for delivery in batch {
            if delivery.message.body == sentinel.body.as_bytes() {
                seen_sentinel = true;
                delivery.handle.ack().await.expect("the sentinel can be acked");
            } else {
                panic!(
                    "delivered again {when}: {:?}",
                    String::from_utf8_lossy(&delivery.message.body)
                );
            }
        }
    }
}

async fn dead_letter_of(queue: &dyn TestQueue, sent: &TestMessage) -> DeadLetterCopy {
    let within = queue.patience().arrival;
    let deadline = Instant::now() + within;
    loop {
        let copies = match queue.take_dead_letters().await {
            Ok(copies) => copies,
            Err(unsupported) => panic!("reading the dead letters: {}", unsupported.0),
        };
        if let Some(copy) = copies.into_iter().find(|c| c.body == sent.body.as_bytes()) {
            return copy;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter of {:?} arrived within {within:?}",
            sent.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_health(adapter: &dyn QueueAdapter, ready: bool, within: Duration, when: &str) {
    let deadline = Instant::now() + within;
    loop {
        let health = adapter.health().await;
        if health.is_ready() == ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}, health is still {health:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_carries(delivery: &Delivery, sent: &TestMessage) {
    assert_eq!(delivery.message.body, sent.body.as_bytes(), "the body as published");
    for (name, value) in sent.headers.iter() {
        assert_eq!(
            delivery.message.headers.get(name),
            Some(value),
            "the header {name} as published"
        );
    }
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

// The suite's report of what it did not check goes to the test output, as a test harness
// has no other channel for it.
#[allow(clippy::print_stderr)]
fn skip(adapter: &dyn QueueAdapter, check: &str, reason: &str) {
    eprintln!(
        "conformance: {check} skipped for the {} adapter: {reason}",
        adapter.kind()
    );
}

#[allow(clippy::print_stderr)]
fn note(adapter: &dyn QueueAdapter, check: &str, what: &str) {
    eprintln!("conformance: {check}, {} adapter: {what}", adapter.kind());
}
