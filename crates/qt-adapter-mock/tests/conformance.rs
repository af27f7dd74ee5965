//! The adapter conformance suite against the in-memory queue.

#![cfg(feature = "testkit")]

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_adapter_mock::MockQueue;
use qt_adapter_mock::testkit::{DeadLetterCopy, TestMessage, TestQueue, Unsupported};
use qt_core::{QueueAdapter, RawMessage};

struct MockTestQueue {
    queue: MockQueue,
    /// How many of the queue's dead letters were already handed out.
    dead_letters_taken: Mutex<usize>,
}

async fn fresh_queue() -> MockTestQueue {
    MockTestQueue {
        queue: MockQueue::new(&format!("conformance-{}", uuid::Uuid::new_v4().simple())),
        dead_letters_taken: Mutex::new(0),
    }
}

#[async_trait]
impl TestQueue for MockTestQueue {
    async fn adapter(&self) -> Box<dyn QueueAdapter> {
        Box::new(self.queue.adapter())
    }

    async fn publish(&self, message: TestMessage) {
        let id = format!("m-{}", uuid::Uuid::new_v4().simple());
        let raw = RawMessage::new(id, message.body, self.queue.source_info()).with_headers(message.headers);
        self.queue.enqueue(raw);
    }

    async fn take_dead_letters(&self) -> Result<Vec<DeadLetterCopy>, Unsupported> {
        let all = self.queue.dead_lettered();
        let mut taken = self.dead_letters_taken.lock();
        let new = all[*taken..]
            .iter()
            .map(|d| DeadLetterCopy {
                body: d.message.body.clone(),
                headers: d.headers.clone(),
            })
            .collect();
        *taken = all.len();
        Ok(new)
    }

    async fn cut_connection(&self) -> Result<(), Unsupported> {
        Err(Unsupported(
            "the in-memory queue has no connection to lose (its health is always Healthy)".into(),
        ))
    }

    async fn restore_connection(&self) {}
}

qt_adapter_mock::conformance_suite!(fresh_queue);
