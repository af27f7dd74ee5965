//! RabbitMQ adapter for qt, built on lapin (AMQP 0-9-1).
//!
//! [`RabbitMqAdapter`] consumes one queue; [`RabbitMqPublisher`] publishes (`qt send`, DLQ
//! replay); [`RabbitMqDlq`] reads and empties the dead-letter queue (`qt dlq`). All take the
//! `source` section of a `type: rabbitmq` configuration
//! ([`qt_core::config::RabbitMqSourceConfig`]).
//!
//! # Consuming
//!
//! On `connect` (and on every reconnect) the adapter declares the configured exchanges, the
//! queue and its bindings, or, without `declare.queue`, checks passively that the queue
//! exists and fails with an error naming it. It makes sure the retry queue exists (declaring
//! it when it does not) and checks the dead-letter destination. The prefetch (basic.qos) is
//! `source.prefetch`, by default the engine's `max_in_flight`, so the broker never sends more
//! than the engine may hold.
//!
//! # Settling
//!
//! | settlement | on RabbitMQ |
//! |---|---|
//! | ack | `basic.ack`; acks of neighbouring deliveries that form a run are sent as one `basic.ack(multiple=true)` |
//! | nack | `basic.nack`, no requeue: the queue's dead-letter exchange applies if it has one, otherwise the broker drops the message |
//! | requeue | `basic.nack` with requeue |
//! | requeue with a delay | a copy goes to the retry queue (`<queue>.qt-retry`: `x-dead-letter-exchange ""`, `x-dead-letter-routing-key <queue>`) with `expiration` = the delay and `x-qt-attempt` = the attempt; after the broker confirms it, the original is acked |
//! | dead letter | a copy with the original headers plus the `x-qt-*` dead-letter headers goes to `source.dlq` (exchange, routing key); after the broker confirms it, the original is acked. Without `source.dlq`, the settle fails with [`qt_core::SettleError::Unsupported`] |
//!
//! Acks that arrive together are coalesced: the longest run of unsettled delivery tags,
//! from the lowest up, that are all being acked goes out as one `basic.ack(multiple=true)`;
//! the other acks of the round go out singly, so a slow message never holds back the acks
//! of later ones. A run never covers a message that is still being processed, nacked,
//! requeued or dead-lettered.
//!
//! A settle that fails leaves the original unacknowledged, so the adapter returns it to the
//! queue (`basic.nack(requeue)`) one second later rather than let it sit on the channel; a
//! handle dropped unsettled is returned at once. The retry queue is a classic queue with per-message TTL: a message
//! expires only when it reaches the head of that queue, so a long delay can hold back a
//! shorter one queued behind it. A delayed message never comes back early, but may come back
//! late when delays are mixed.
//!
//! # Identity and delivery count
//!
//! `message_id` is the AMQP `message-id` property; without one it is `sha256:` + 32 hex
//! digits hashed from the body, the `timestamp` property and the application headers minus
//! those the broker or qt add per delivery (`x-delivery-count`, `x-death`,
//! `x-first-death-*`, `x-last-death-*`, `x-qt-attempt`), so it is the same on every
//! redelivery, and two byte-identical messages without an id share one. Copies qt writes
//! (retry, DLQ) carry the id as their `message-id`, so it survives the round trip.
//!
//! `delivery_count` is `x-delivery-count + 1` when the broker sends the header (quorum
//! queues), 1 for a delivery not flagged as redelivered, and unknown for a classic-queue
//! redelivery; `redelivered` is the AMQP flag. `key` is the routing key.
//!
//! # Connection loss
//!
//! The adapter reports `Unhealthy` while disconnected and reconnects with backoff
//! (`reconnect_initial`, doubling up to `reconnect_max`, with jitter). The broker requeues
//! whatever the lost connection had delivered and not acknowledged; settling one of those
//! old handles fails with [`qt_core::SettleError::ConnectionLost`] (a delivery tag is never
//! used on another channel). `connect` itself does not retry: a broker that is unreachable at
//! start is an error for the caller.
//!
//! # Deeply nested headers
//!
//! RabbitMQ delivers headers that nest tables and arrays as deep as its frame size allows
//! (tens of thousands of levels in the default 128 KiB frame). lapin parses them on its own
//! thread, recursing once per level, and a default 2 MiB stack overflows after a few
//! thousand levels, which aborts the process. lapin takes no stack size for that thread: a
//! program using this crate sets `RUST_MIN_STACK` (64 MiB covers the default frame size in
//! an optimised build), as the `qt` binary does for itself.
//!
//! # Dead letters (`qt dlq`)
//!
//! [`RabbitMqDlq`] reads the queue `source.dlq.queue`, else `source.dlq.routing_key` when
//! `source.dlq.exchange` is `""`. It takes letters with `basic.get` and leaves them
//! unacknowledged; removing one acks it, and the letters it did not remove go back to their
//! places in the queue when the session closes or its connection is lost. A replay is
//! published to the default exchange with the original queue (`x-qt-original-queue`) as the
//! routing key, and acked in the DLQ only after the broker confirmed the publish.
//!
//! # Security
//!
//! `amqps://` URLs use rustls, trusting the platform's roots plus `ca_file`; a client
//! certificate is sent when `client_cert_file`/`client_key_file` are set. With
//! `require_tls`, a plaintext URL is refused at construction. The password never appears in
//! errors, health reasons, log lines or `Debug` output of this crate (the tests capture TRACE
//! logs of every target, lapin included). lapin's TRACE logs dump AMQP frames, message
//! bodies included: keep `lapin` at INFO or above in production.
//!
//! Least privilege: `read` on the queue; `write` on the exchanges qt publishes to
//! (`amq.default` for the retry queue and for a DLQ on the default exchange, else the DLQ
//! exchange); `configure` on the retry queue unless it already exists, and on whatever
//! `declare` lists (bindings also need `write` on the queue and `read` on the exchange).
//! `qt dlq` needs `read` on the DLQ queue, and for a replay `write` on `amq.default`.

mod acks;
mod adapter;
mod amqp_value;
mod backoff;
mod connection;
mod context;
mod describe;
mod dlq;
mod health;
mod message;
mod publish;
mod publisher;
mod redact;
mod session;
mod settle;
mod topology;

pub use adapter::RabbitMqAdapter;
pub use dlq::RabbitMqDlq;
pub use publisher::RabbitMqPublisher;
