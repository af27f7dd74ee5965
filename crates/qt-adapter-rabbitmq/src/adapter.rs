//! The consuming side: [`RabbitMqAdapter`].
//!
//! A supervisor task owns the connection. It moves deliveries from the broker into a buffer
//! that [`QueueAdapter::receive`] drains, applies pause and resume, and, when the connection
//! or the consuming channel fails, marks the session dead, reports `Unhealthy`, and
//! reconnects with backoff (`reconnect_initial` doubling up to `reconnect_max`), declaring
//! the topology and resubscribing each time. Messages that were delivered and not settled
//! when the connection died are requeued by the broker and arrive again; their old handles
//! fail with [`qt_core::SettleError::ConnectionLost`].
//!
//! The buffer holds at most what the broker sends, which the prefetch (basic.qos) bounds.
//!
//! [`QueueAdapter::close`] first stops intake (cancels the consumer), then lets the
//! settlements already under way finish, and only then closes the connection; deliveries
//! never handed out, and those whose settle did not finish in time, are redelivered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::{Consumer, Event};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AckHandle, AdapterError, AdapterSettings, Capabilities, Delivery, Health, OrderingUnit, QueueAdapter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::reconnect_delay;
use crate::context::Context;
use crate::describe::{is_connection_loss, lapin_error};
use crate::health;
use crate::message::raw_message;
use crate::session::{CLOSE_TIMEOUT, Opened, SETTLE_DRAIN_TIMEOUT, Session};
use crate::settle::{Original, RabbitMqSettle};
use crate::topology::ready_messages;

/// How long `close` waits for the supervisor to close the connection: each of its steps is
/// bounded (cancelling the consumer, waiting for settlements, closing the connection), and
/// this covers them all with a second to spare.
const CLOSE_WAIT: Duration = CLOSE_TIMEOUT
    .saturating_add(SETTLE_DRAIN_TIMEOUT)
    .saturating_add(CLOSE_TIMEOUT)
    .saturating_add(Duration::from_secs(1));

/// Consumes one RabbitMQ queue. See the crate documentation for what each settlement does.
pub struct RabbitMqAdapter {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Context>,
    state: parking_lot::Mutex<State>,
    buffer: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Incoming>>>,
    paused: watch::Sender<bool>,
    closed: CancellationToken,
    connect_lock: tokio::sync::Mutex<()>,
    supervisor: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

struct State {
    health: Health,
    session: Option<Arc<Session>>,
}

/// A delivery waiting in the buffer, with the session that can settle it.
struct Incoming {
    delivery: Delivery,
    session: Arc<Session>,
}

enum SessionEnd {
    Closed,
    Lost(String),
}

impl RabbitMqAdapter {
    /// Checks the configuration (URL, TLS files, `require_tls`, names); connects nothing yet.
    pub fn new(cfg: &RabbitMqSourceConfig, settings: AdapterSettings) -> Result<Self, AdapterError> {
        let ctx = Arc::new(Context::new(cfg, settings)?);
        let (paused, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                state: parking_lot::Mutex::new(State {
                    health: health::not_connected(),
                    session: None,
                }),
                buffer: tokio::sync::Mutex::new(None),
                paused,
                closed: CancellationToken::new(),
                connect_lock: tokio::sync::Mutex::new(()),
                supervisor: parking_lot::Mutex::new(None),
            }),
        })
    }

    /// The basic.qos prefetch count in use.
    pub fn prefetch(&self) -> u16 {
        self.inner.ctx.prefetch
    }

    /// The queue delayed requeues go through.
    pub fn retry_queue(&self) -> &str {
        &self.inner.ctx.plan.retry_queue
    }
}

impl Inner {
    fn set_health(&self, health: Health) {
        self.state.lock().health = health;
    }

    fn url(&self) -> &str {
        self.ctx.endpoint.masked()
    }

    fn redact(&self, text: impl std::fmt::Display) -> String {
        self.ctx.endpoint.redactor.redact(text)
    }
}

impl Drop for RabbitMqAdapter {
    fn drop(&mut self) {
        // The supervisor holds the connection; without this it would outlive the adapter.
        self.inner.closed.cancel();
    }
}

impl std::fmt::Debug for RabbitMqAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqAdapter")
            .field("url", &self.inner.url())
            .field("queue", &self.inner.ctx.plan.queue)
            .field("prefetch", &self.inner.ctx.prefetch)
            .field("health", &self.inner.state.lock().health)
            .finish()
    }
}

#[async_trait]
impl QueueAdapter for RabbitMqAdapter {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn queue(&self) -> &str {
        &self.inner.ctx.plan.queue
    }

    fn capabilities(&self) -> Capabilities {
        let mut notes = vec![
            "nack is basic.nack without requeue: the queue's own dead-letter exchange applies; without one the \
             broker drops the message",
            "requeue without a delay is basic.nack with requeue: qt's x-qt-attempt header is not rewritten (quorum \
             queues count returns in x-delivery-count, classic queues only flag redeliveries)",
            "requeue with a delay goes through the retry queue (per-message TTL, dead-lettered back to the queue); \
             a message expires only at the head of the retry queue, so a long delay can hold back shorter ones \
             queued behind it (never earlier than asked)",
            "no ordering guarantee: requeues, redeliveries and concurrency reorder messages",
        ];
        if self.inner.ctx.plan.dlq.is_none() {
            notes.push(
                "dead-lettering needs source.dlq; without it a dead-letter settle fails and the message is returned to the queue",
            );
        }
        Capabilities {
            native_reject: true,
            delayed_requeue: true,
            dead_letter: self.inner.ctx.plan.dlq.is_some(),
            lease_extension: false,
            pause: true,
            ordering: OrderingUnit::None,
            notes,
        }
    }

    async fn connect(&self) -> Result<(), AdapterError> {
        let inner = &self.inner;
        let _guard = inner.connect_lock.lock().await;
        if inner.closed.is_cancelled() {
            return Err(AdapterError::Other {
                what: format!("connecting to queue {:?}", inner.ctx.plan.queue),
                reason: "the adapter was closed; create a new one".into(),
            });
        }
        if inner.supervisor.lock().is_some() {
            return Ok(());
        }
        let paused = *inner.paused.borrow();
        let opened = match Session::open(&inner.ctx, 1, paused).await {
            Ok(opened) => opened,
            Err(e) => {
                inner.set_health(health::connect_failed(&e));
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        *inner.buffer.lock().await = Some(rx);
        {
            let mut state = inner.state.lock();
            state.session = Some(Arc::clone(&opened.session));
            state.health = Health::Healthy;
        }
        tracing::info!(
            trigger = %inner.ctx.trigger,
            queue = %inner.ctx.plan.queue,
            url = %inner.url(),
            prefetch = inner.ctx.prefetch,
            paused,
            "connected to RabbitMQ"
        );
        let handle = tokio::spawn(supervise(Arc::clone(inner), opened, tx));
        *inner.supervisor.lock() = Some(handle);
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let inner = &self.inner;
        let max = max.max(1);
        let mut guard = inner.buffer.lock().await;
        let Some(buffer) = guard.as_mut() else {
            if inner.closed.is_cancelled() {
                return Ok(Vec::new());
            }
            return Err(AdapterError::Receive {
                queue: inner.ctx.plan.queue.clone(),
                reason: "connect() must succeed before receive()".into(),
            });
        };
        loop {
            // The only await point: a message is either still in the buffer or returned.
            let first = tokio::select! {
                biased;
                _ = inner.closed.cancelled() => return Ok(Vec::new()),
                next = buffer.recv() => next,
            };
            let Some(first) = first else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(max.min(256));
            keep_live(&mut out, first);
            while out.len() < max {
                match buffer.try_recv() {
                    Ok(next) => keep_live(&mut out, next),
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    async fn pause(&self) -> Result<(), AdapterError> {
        self.inner.paused.send_replace(true);
        Ok(())
    }

    async fn resume(&self) -> Result<(), AdapterError> {
        self.inner.paused.send_replace(false);
        Ok(())
    }

    async fn health(&self) -> Health {
        self.inner.state.lock().health.clone()
    }

    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        let inner = &self.inner;
        let Some(session) = inner.state.lock().session.clone() else {
            return Ok(None);
        };
        let fail = |e: lapin::Error| AdapterError::Other {
            what: format!("reading the backlog of queue {:?}", inner.ctx.plan.queue),
            reason: inner.redact(lapin_error(&e)),
        };
        let channel = session.query_channel().await.map_err(fail)?;
        let ready = ready_messages(&channel, &inner.ctx.plan.queue).await.map_err(fail)?;
        Ok(Some(u64::from(ready)))
    }

    async fn close(&self) -> Result<(), AdapterError> {
        let inner = &self.inner;
        inner.closed.cancel();
        let supervisor = inner.supervisor.lock().take();
        if let Some(handle) = supervisor
            && tokio::time::timeout(CLOSE_WAIT, handle).await.is_err()
        {
            tracing::warn!(queue = %inner.ctx.plan.queue, "closing the RabbitMQ connection took longer than {CLOSE_WAIT:?}");
        }
        {
            let mut state = inner.state.lock();
            state.session = None;
            state.health = health::closed();
        }
        // Buffered deliveries belong to the closed connection; the broker has requeued them.
        if let Ok(mut buffer) = inner.buffer.try_lock() {
            *buffer = None;
        }
        Ok(())
    }
}

fn keep_live(out: &mut Vec<Delivery>, incoming: Incoming) {
    if incoming.session.is_alive() {
        out.push(incoming.delivery);
    } else {
        tracing::debug!(
            message_id = %incoming.delivery.message.message_id,
            generation = incoming.session.generation,
            "dropping a buffered delivery of a lost connection; the broker redelivers it"
        );
    }
}

/// Owns the connection for the adapter's lifetime: runs a session until it ends, then
/// reconnects, until the adapter is closed.
async fn supervise(inner: Arc<Inner>, mut opened: Opened, tx: mpsc::UnboundedSender<Incoming>) {
    let mut generation = opened.session.generation;
    loop {
        let end = run_session(&inner, &mut opened, &tx).await;
        let lost = opened.session.clone();
        if matches!(end, SessionEnd::Closed) {
            stop_intake(&inner, &mut opened).await;
            lost.finish_settlements().await;
        }
        lost.shutdown().await;
        inner.state.lock().session = None;
        let reason = match end {
            SessionEnd::Closed => {
                tracing::info!(queue = %inner.ctx.plan.queue, url = %inner.url(), "RabbitMQ connection closed");
                return;
            }
            SessionEnd::Lost(reason) => reason,
        };
        tracing::warn!(
            queue = %inner.ctx.plan.queue,
            url = %inner.url(),
            %reason,
            generation,
            "lost the RabbitMQ connection; reconnecting (unsettled messages are redelivered by the broker)"
        );
        inner.set_health(health::lost(inner.url(), &reason));

        let mut attempt = 0u32;
        opened = loop {
            let delay = reconnect_delay(
                attempt,
                inner.ctx.reconnect_initial,
                inner.ctx.reconnect_max,
                rand::random::<f64>(),
            );
            tokio::select! {
                _ = inner.closed.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            generation += 1;
            let paused = *inner.paused.borrow();
            let result = tokio::select! {
                _ = inner.closed.cancelled() => return,
                result = Session::open(&inner.ctx, generation, paused) => result,
            };
            match result {
                Ok(opened) => break opened,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let reason = inner.redact(&e);
                    tracing::warn!(
                        queue = %inner.ctx.plan.queue,
                        attempt,
                        error = %reason,
                        "reconnecting to RabbitMQ failed"
                    );
                    inner.set_health(health::reconnect_failed(inner.url(), attempt, &reason));
                }
            }
        };
        {
            let mut state = inner.state.lock();
            state.session = Some(Arc::clone(&opened.session));
            state.health = Health::Healthy;
        }
        tracing::info!(
            queue = %inner.ctx.plan.queue,
            url = %inner.url(),
            generation,
            attempts = attempt + 1,
            "reconnected to RabbitMQ and resubscribed"
        );
    }
}

/// Pumps one session's deliveries into the buffer and applies pause/resume, until the
/// session fails or the adapter closes.
async fn run_session(inner: &Inner, opened: &mut Opened, tx: &mpsc::UnboundedSender<Incoming>) -> SessionEnd {
    let session = Arc::clone(&opened.session);
    let mut paused = inner.paused.subscribe();
    // The pause state may have changed while the session was opening.
    paused.mark_changed();
    let mut cancelling = false;
    loop {
        tokio::select! {
            biased;
            _ = inner.closed.cancelled() => return SessionEnd::Closed,
            event = opened.events.next() => match event {
                // lapin reports channel closures here too: a refused passive check or publish
                // closes only its own channel, which is not a reason to drop the connection.
                Some(Event::Error(e)) if is_connection_loss(&e) || !session.is_alive() => {
                    return SessionEnd::Lost(inner.redact(lapin_error(&e)));
                }
                Some(Event::Error(e)) => {
                    tracing::debug!(queue = %inner.ctx.plan.queue, error = %inner.redact(lapin_error(&e)), "a channel was closed by the broker");
                }
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(queue = %inner.ctx.plan.queue, %reason, "the broker blocked this connection");
                    inner.set_health(health::blocked(&reason));
                }
                Some(Event::ConnectionUnblocked) => inner.set_health(Health::Healthy),
                Some(_) => {}
                None => return SessionEnd::Lost("the connection's event stream ended".into()),
            },
            changed = paused.changed() => {
                if changed.is_err() {
                    return SessionEnd::Closed;
                }
                let want_paused = *paused.borrow_and_update();
                if want_paused && opened.consumer.is_some() && !cancelling {
                    if let Err(e) = session.cancel_consumer().await {
                        return SessionEnd::Lost(e.to_string());
                    }
                    // Keep reading: deliveries the broker sent before the cancel still arrive,
                    // and must reach the buffer rather than sit unacknowledged.
                    cancelling = true;
                    tracing::info!(queue = %inner.ctx.plan.queue, "paused: consumer cancelled");
                } else if !want_paused && opened.consumer.is_none() {
                    match session.start_consumer().await {
                        Ok(consumer) => {
                            opened.consumer = Some(consumer);
                            tracing::info!(queue = %inner.ctx.plan.queue, "resumed: consuming again");
                        }
                        Err(e) => return SessionEnd::Lost(e.to_string()),
                    }
                }
            },
            delivery = next_delivery(&mut opened.consumer) => match delivery {
                Some(Ok(delivery)) => {
                    if tx.send(incoming(&session, delivery)).is_err() {
                        return SessionEnd::Closed;
                    }
                }
                Some(Err(e)) => return SessionEnd::Lost(inner.redact(lapin_error(&e))),
                None if cancelling => {
                    cancelling = false;
                    opened.consumer = None;
                    if !*paused.borrow() {
                        match session.start_consumer().await {
                            Ok(consumer) => opened.consumer = Some(consumer),
                            Err(e) => return SessionEnd::Lost(e.to_string()),
                        }
                    }
                }
                None => {
                    return SessionEnd::Lost(format!(
                        "the broker cancelled the consumer of queue {:?} (was the queue deleted?)",
                        inner.ctx.plan.queue
                    ));
                }
            },
        }
    }
}

/// Cancels the consumer so that the broker sends nothing more while settlements finish.
/// Deliveries it sent before the cancel are never handed out; closing the connection returns
/// them to the queue.
/// (`&mut`: the event stream in `Opened` is `Send` but not `Sync`.)
async fn stop_intake(inner: &Inner, opened: &mut Opened) {
    if opened.consumer.is_none() {
        return;
    }
    let queue = &inner.ctx.plan.queue;
    match tokio::time::timeout(CLOSE_TIMEOUT, opened.session.cancel_consumer()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%queue, error = %inner.redact(&e), "cancelling the consumer on close failed");
        }
        Err(_) => {
            tracing::debug!(%queue, "cancelling the consumer on close took longer than {CLOSE_TIMEOUT:?}");
        }
    }
}

async fn next_delivery(consumer: &mut Option<Consumer>) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

fn incoming(session: &Arc<Session>, delivery: lapin::message::Delivery) -> Incoming {
    let lapin::message::Delivery {
        delivery_tag,
        routing_key,
        redelivered,
        properties,
        data,
        acker,
        ..
    } = delivery;
    session.acks.delivered(delivery_tag);
    let body = Bytes::from(data);
    let message = raw_message(
        &session.ctx.queue,
        routing_key.as_str(),
        redelivered,
        &properties,
        body.clone(),
    );
    let original = Original {
        properties,
        body,
        source: message.source.clone(),
    };
    let settle = RabbitMqSettle::new(
        Arc::clone(session),
        acker,
        delivery_tag,
        message.message_id.clone(),
        original,
    );
    Incoming {
        delivery: Delivery::new(message, AckHandle::new(settle)),
        session: Arc::clone(session),
    }
}
