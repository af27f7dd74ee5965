//! The queue's state and its test handle.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use qt_core::{DeadLetter, Headers, RawMessage, SourceInfo};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::adapter::MockAdapter;
use crate::file::{FileError, append_dead_letter, read_messages};
use crate::publisher::MockPublisher;

/// A message settled by the engine, as the test handle shows it.
#[derive(Clone, Debug)]
pub struct Settled {
    pub message: RawMessage,
}

/// A dead-lettered message with the reason and the headers the DLQ copy carries.
#[derive(Clone, Debug)]
pub struct DeadLettered {
    pub message: RawMessage,
    pub dead_letter: DeadLetter,
    /// Original headers plus the `x-qt-dlq-*` headers.
    pub headers: Headers,
}

#[derive(Debug)]
struct Delayed {
    at: Instant,
    seq: u64,
    message: RawMessage,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub ready: VecDeque<RawMessage>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    pub outstanding: usize,
    pub closed: bool,
    pub paused: bool,
    seq: u64,
    pub acked: Vec<Settled>,
    pub nacked: Vec<Settled>,
    pub requeued: Vec<(Settled, Option<Duration>)>,
    pub dead_lettered: Vec<DeadLettered>,
    pub acked_count: u64,
    pub redeliveries: u64,
}

impl State {
    /// Moves due delayed messages to the ready queue; returns when the next one is due.
    pub fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse(d)) = self.delayed.peek() {
            if d.at > now {
                return Some(d.at);
            }
            let Reverse(d) = self.delayed.pop().expect("peeked");
            self.ready.push_back(d.message);
        }
        None
    }

    pub fn delay(&mut self, message: RawMessage, by: Duration) {
        self.seq += 1;
        let seq = self.seq;
        self.delayed.push(Reverse(Delayed {
            at: Instant::now() + by,
            seq,
            message,
        }));
    }

    pub fn pending(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.outstanding
    }
}

pub(crate) struct Inner {
    pub name: Arc<str>,
    pub state: Mutex<State>,
    /// Pinged when messages become available or the queue closes.
    pub available: Notify,
    /// Pinged when the queue becomes idle (nothing ready, delayed or unsettled); pinging on
    /// every settle would wake idle-waiters once per message.
    pub idle: Notify,
    pub dlq_file: Option<PathBuf>,
    pub keep_history: bool,
}

/// The queue and its test handle; clones share one queue.
#[derive(Clone)]
pub struct MockQueue {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for MockQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("MockQueue")
            .field("name", &self.inner.name)
            .field("ready", &s.ready.len())
            .field("outstanding", &s.outstanding)
            .finish_non_exhaustive()
    }
}

impl MockQueue {
    pub fn new(name: &str) -> Self {
        Self::build(name, None, true)
    }

    /// A queue that only counts settlements instead of keeping every settled message, for
    /// benchmarks that push millions.
    pub fn counting_only(name: &str) -> Self {
        Self::build(name, None, false)
    }

    fn build(name: &str, dlq_file: Option<PathBuf>, keep_history: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                state: Mutex::new(State::default()),
                available: Notify::new(),
                idle: Notify::new(),
                dlq_file,
                keep_history,
            }),
        }
    }

    /// The queue described by a `source: {type: mock}` section: its file's messages are
    /// enqueued, dead letters go to its `dlq_file`.
    pub fn from_config(config: &qt_core::config::MockSourceConfig) -> Result<Self, FileError> {
        let q = Self::build(&config.queue, config.dlq_file.clone(), true);
        if let Some(path) = &config.file {
            for line in read_messages(path)? {
                q.enqueue(line.into_raw(&config.queue));
            }
        }
        Ok(q)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn adapter(&self) -> MockAdapter {
        MockAdapter::new(self.clone())
    }

    pub fn publisher(&self) -> MockPublisher {
        MockPublisher::new(self.clone())
    }

    pub fn source_info(&self) -> SourceInfo {
        SourceInfo::new("mock", self.inner.name.clone())
    }

    /// Adds a message to the back of the queue.
    pub fn enqueue(&self, message: RawMessage) {
        self.inner.state.lock().ready.push_back(message);
        self.inner.available.notify_one();
    }

    /// Adds many messages at once.
    pub fn enqueue_all(&self, messages: impl IntoIterator<Item = RawMessage>) {
        self.inner.state.lock().ready.extend(messages);
        self.inner.available.notify_one();
    }

    /// Adds a JSON message with headers.
    pub fn enqueue_json(&self, id: &str, headers: &[(&str, &str)], body: &serde_json::Value) {
        let raw = RawMessage::new(
            id,
            serde_json::to_vec(body).expect("JSON values serialize"),
            self.source_info(),
        )
        .with_headers(headers.iter().copied().collect());
        self.enqueue(raw);
    }

    /// Ends the queue: once drained, `receive` returns an empty batch.
    pub fn close(&self) {
        self.inner.state.lock().closed = true;
        self.inner.available.notify_waiters();
        self.inner.available.notify_one();
    }

    /// Messages ready, delayed, or delivered and not yet settled.
    pub fn pending(&self) -> usize {
        self.inner.state.lock().pending()
    }

    /// Waits until nothing is ready, delayed or unsettled.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.pending() == 0 {
                return;
            }
            // The periodic re-check covers any wake-up that raced with registration.
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
        }
    }

    pub fn acked(&self) -> Vec<Settled> {
        self.inner.state.lock().acked.clone()
    }

    pub fn acked_count(&self) -> u64 {
        self.inner.state.lock().acked_count
    }

    pub fn nacked(&self) -> Vec<Settled> {
        self.inner.state.lock().nacked.clone()
    }

    pub fn requeued(&self) -> Vec<(Settled, Option<Duration>)> {
        self.inner.state.lock().requeued.clone()
    }

    pub fn dead_lettered(&self) -> Vec<DeadLettered> {
        self.inner.state.lock().dead_lettered.clone()
    }

    pub(crate) fn notify_if_idle(&self, idle: bool) {
        if idle {
            self.inner.idle.notify_waiters();
        }
    }

    /// Returns an unsettled message to the front of the queue as a redelivery.
    pub(crate) fn put_back(&self, mut message: RawMessage) {
        message.source.redelivered = true;
        message.source.delivery_count = Some(message.source.delivery_count.unwrap_or(1) + 1);
        let mut s = self.inner.state.lock();
        s.outstanding -= 1;
        s.redeliveries += 1;
        s.ready.push_front(message);
        drop(s);
        self.inner.available.notify_one();
    }

    /// Messages put back because their handle was dropped unsettled.
    pub fn redeliveries(&self) -> u64 {
        self.inner.state.lock().redeliveries
    }

    /// Writes the dead letter (to the DLQ file first, when there is one). On failure the
    /// message is put back as a redelivery, like a broker whose DLQ publish failed.
    pub(crate) fn record_dead_letter(&self, message: RawMessage, dead_letter: DeadLetter) -> Result<(), FileError> {
        let headers = dead_letter.headers_for(&message.headers, &message.source, &message.message_id);
        if let Some(path) = &self.inner.dlq_file
            && let Err(e) = append_dead_letter(path, &message, &dead_letter, &headers)
        {
            self.put_back(message);
            return Err(e);
        }
        let mut s = self.inner.state.lock();
        s.outstanding -= 1;
        s.dead_lettered.push(DeadLettered {
            message,
            dead_letter,
            headers,
        });
        let idle = s.pending() == 0;
        drop(s);
        self.notify_if_idle(idle);
        Ok(())
    }
}
