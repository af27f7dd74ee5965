//! The adapter conformance suite: what every [`QueueAdapter`] must
//! do, checked against the adapter's real broker.
//!
//! An adapter's tests implement [`TestQueue`] for a fresh queue on their broker and expand
//! [`conformance_suite!`](crate::conformance_suite) with an async function that makes one.
//! That gives one `#[tokio::test]` per check, named after the behaviour it checks:
//!
//! ```rust,ignore
//! use qt_adapter_mock::testkit::{DeadLetterCopy, TestMessage, TestQueue, Unsupported};
//!
//! struct MyQueue { /* the queue's name, a client to publish with, ... */ }
//!
//! #[async_trait::async_trait]
//! impl TestQueue for MyQueue {
//!     // a new adapter on the queue, a raw publish, reading the dead-letter destination,
//!     // cutting and restoring the connection (or saying why the test cannot)
//! }
//!
//! async fn fresh_queue() -> MyQueue { /* create a uniquely named queue */ }
//!
//! qt_adapter_mock::conformance_suite!(fresh_queue);
//! ```
//!
//! A check that needs something the adapter's [`Capabilities`](qt_core::Capabilities) say it
//! lacks, or something the test cannot do ([`Unsupported`]), prints why it was skipped and
//! passes without checking; it never simulates the missing part.
//!
//! Settling a message twice is ruled out by type: settling consumes the handle. Settling once
//! compiles:
//!
//! ```no_run
//! async fn settle_once(delivery: qt_core::Delivery) {
//!     let handle = delivery.handle;
//!     let _ = handle.ack().await;
//! }
//! ```
//!
//! and settling twice does not:
//!
//! ```compile_fail
//! async fn settle_twice(delivery: qt_core::Delivery) {
//!     let handle = delivery.handle;
//!     let _ = handle.ack().await;
//!     let _ = handle.ack().await;
//! }
//! ```

mod checks;
mod proxy;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qt_core::{Headers, QueueAdapter};

pub use checks::{
    a_dead_letter_carries_every_qt_header_and_the_original_body_and_headers,
    a_delayed_requeue_comes_back_no_earlier_than_its_delay_with_its_attempt, a_dropped_handle_is_redelivered,
    an_acked_message_is_not_delivered_again, close_lets_in_flight_settlements_finish,
    health_reflects_a_lost_connection_and_its_recovery, pause_stops_intake_and_resume_restarts_it,
};
pub use proxy::CuttableProxy;

/// A message the suite puts on the queue, bypassing the adapter under test.
#[derive(Clone, Debug)]
pub struct TestMessage {
    /// Text unique to this message (some brokers, SQS among them, carry text bodies only).
    pub body: String,
    pub headers: Headers,
}

/// A message as read back from the dead-letter destination.
#[derive(Clone, Debug)]
pub struct DeadLetterCopy {
    pub body: Bytes,
    pub headers: Headers,
}

/// Why a check cannot run against this adapter's test setup; printed when it is skipped.
#[derive(Clone, Debug)]
pub struct Unsupported(pub String);

/// How long the checks wait. Slow brokers (an emulator, a consumer group that must join
/// first) set longer times.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    /// The longest wait for something that should happen: a delivery, a redelivery, a dead
    /// letter, a change of health.
    pub arrival: Duration,
    /// How long nothing arriving counts as "not delivered". Must be longer than the broker
    /// takes to bring back a message that was not settled (SQS: the visibility timeout).
    pub quiet: Duration,
    /// The delay the delayed-requeue check asks for.
    pub requeue_delay: Duration,
    /// How long after `pause` returns the adapter may still take in messages: adapters
    /// pause from their own task, and what the broker had already sent still arrives.
    pub pause_grace: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            arrival: Duration::from_secs(15),
            quiet: Duration::from_secs(1),
            requeue_delay: Duration::from_secs(2),
            pause_grace: Duration::from_millis(500),
        }
    }
}

/// A fresh queue on the broker under test, as the adapter's test sets it up.
#[async_trait]
pub trait TestQueue: Send + Sync {
    /// A new adapter on this queue, not connected yet. A check may make several, one after
    /// another: a later one must see what an earlier one left on the queue. Dead letters go
    /// to a destination [`TestQueue::take_dead_letters`] reads.
    async fn adapter(&self) -> Box<dyn QueueAdapter>;

    /// Puts a message on the queue with the broker's own client, not through the adapter.
    async fn publish(&self, message: TestMessage);

    /// The dead letters written since the last call, read at the destination the adapters
    /// write them to.
    async fn take_dead_letters(&self) -> Result<Vec<DeadLetterCopy>, Unsupported>;

    /// Cuts every connection between the adapters and the broker, and keeps them cut until
    /// [`TestQueue::restore_connection`].
    async fn cut_connection(&self) -> Result<(), Unsupported>;

    async fn restore_connection(&self);

    fn patience(&self) -> Patience {
        Patience::default()
    }
}

/// Every check, by name: what [`conformance_suite!`](crate::conformance_suite) runs.
pub const CHECKS: [&str; 7] = [
    "an_acked_message_is_not_delivered_again",
    "a_dropped_handle_is_redelivered",
    "a_delayed_requeue_comes_back_no_earlier_than_its_delay_with_its_attempt",
    "a_dead_letter_carries_every_qt_header_and_the_original_body_and_headers",
    "pause_stops_intake_and_resume_restarts_it",
    "health_reflects_a_lost_connection_and_its_recovery",
    "close_lets_in_flight_settlements_finish",
];

/// Expands into one `#[tokio::test]` per conformance check, each running the check on a
/// queue made by `$fresh_queue` (an async function returning a [`TestQueue`]).
///
/// `conformance_suite!(fresh_queue)` runs every check. To record a check the adapter fails
/// today, list every check and mark that one `#[ignore = "why"]`; a test then fails if a
/// check is missing from the list, so none is left out silently:
///
/// ```rust,ignore
/// qt_adapter_mock::conformance_suite!(fresh_queue;
///     an_acked_message_is_not_delivered_again,
///     // ... every other check ...
///     #[ignore = "close cuts acks under way: they fail and the messages are redelivered"]
///     close_lets_in_flight_settlements_finish,
/// );
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($fresh_queue:path) => {
        $crate::conformance_suite!($fresh_queue;
            an_acked_message_is_not_delivered_again,
            a_dropped_handle_is_redelivered,
            a_delayed_requeue_comes_back_no_earlier_than_its_delay_with_its_attempt,
            a_dead_letter_carries_every_qt_header_and_the_original_body_and_headers,
            pause_stops_intake_and_resume_restarts_it,
            health_reflects_a_lost_connection_and_its_recovery,
            close_lets_in_flight_settlements_finish,
        );
    };
    ($fresh_queue:path; $($(#[$attribute:meta])* $check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attribute])*
            async fn $check() {
                let queue = $fresh_queue().await;
                $crate::testkit::$check(&queue).await;
            }
        )+

        #[test]
        fn every_conformance_check_is_listed() {
            let mut listed = vec![$(stringify!($check)),+];
            listed.sort_unstable();
            let mut all = $crate::testkit::CHECKS.to_vec();
            all.sort_unstable();
            assert_eq!(
                listed, all,
                "list every conformance check once; mark one the adapter fails with #[ignore = \"why\"]"
            );
        }
    };
}

/// Runs `cleanup` (deleting a test queue, say) to its end from a `Drop` impl. It gets a
/// runtime of its own on a thread of its own: `Drop` may run inside the test's runtime, where
/// blocking on it would panic, or while the test unwinds.
pub fn clean_up_on_drop(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(cleanup);
    })
    .join();
}
