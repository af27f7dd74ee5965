//! AWS SQS adapter for qt (aws-sdk-sqs).
//!
//! [`SqsAdapter`] consumes one standard or FIFO queue; [`SqsPublisher`] sends to one (for
//! `qt send`, dead letters and replays); [`SqsDlq`] reads and empties the DLQ for `qt dlq`
//! (see [its module](dlq) for what reading a queue without a peek costs).
//!
//! # Receiving
//!
//! `source.pollers` loops long-poll ReceiveMessage (`wait_time` up to 20 s, up to
//! `max_messages` per call) into a buffer that `receive` drains. Messages buffered plus
//! messages the engine holds never exceed `max_in_flight`: a poller asks for no more
//! messages than there is room for. Each message becomes a `RawMessage`:
//!
//! | qt | SQS |
//! |---|---|
//! | `message_id` | MessageId |
//! | `body` | Body (untouched) |
//! | `headers` | message attributes (binary values base64-encoded), [`attributes::FOLDED_HEADERS`] unfolded, plus the `x-sqs-*` headers below |
//! | `broker_timestamp` | SentTimestamp |
//! | `source.queue` | the queue URL |
//! | `source.key` | MessageGroupId (FIFO) |
//! | `source.delivery_count` | ApproximateReceiveCount (`redelivered` when above 1) |
//! | header `x-sqs-message-group-id` | MessageGroupId |
//! | header `x-sqs-deduplication-id` | MessageDeduplicationId: `processing.extraction.dedup_key: [{header: x-sqs-deduplication-id}]` deduplicates by the producer's id |
//! | header `x-sqs-sequence-number` | SequenceNumber (FIFO) |
//!
//! `x-sqs-*` headers come only from SQS itself: message attributes with those names are
//! dropped on receipt and never written on send.
//!
//! Closing or dropping the adapter abandons a long poll under way; messages SQS hands to
//! it (as to any receive whose response is lost) come back after their visibility timeout,
//! and on a FIFO queue their group waits until then.
//!
//! # Settling
//!
//! | settlement | SQS |
//! |---|---|
//! | ack | DeleteMessageBatch: acks are batched (ten, or 10 ms), each ack returns once its own entry is deleted; failed entries are retried, refused ones reported |
//! | nack | nothing is deleted: SQS has no reject. The message is visible again after `nack_delay` (default 0 s) and the queue's redrive policy (maxReceiveCount) decides when it goes to the queue's own DLQ |
//! | requeue (delay) | ChangeMessageVisibility(delay): the same message comes back later, its ApproximateReceiveCount one higher (SQS cannot rewrite a message, so no `x-qt-attempt` header is added) |
//! | dead letter | SendMessage to `dlq_queue_url` with the original body and the headers of `DeadLetter::headers_for` as attributes, then delete. Without `dlq_queue_url` this fails with a `SettleError` and the message is redelivered |
//! | handle dropped | the message is made visible at once (best effort; otherwise when its visibility timeout ends) |
//!
//! SQS allows ten message attributes. When a message has more headers than fit, or
//! headers SQS cannot carry as attributes (names outside `[A-Za-z0-9_.-]`, empty values,
//! control characters), those go folded as a JSON array of `[name, value]` pairs in one
//! String attribute, `x-qt-headers`; the dead-letter reason, error class, attempts,
//! original queue and original message id stay attributes of their own. qt unfolds
//! `x-qt-headers` on receipt, so no header is lost.
//!
//! # Visibility heartbeat
//!
//! While a message is unsettled, its visibility is extended (ChangeMessageVisibility by the
//! visibility timeout) whenever half of the timeout is left, until it has been invisible
//! for `max_visibility_extension` since its receipt; a handler running longer lets the
//! message return to the queue. The engine need not call `AckHandle::extend`, though it
//! works too. Closing or dropping the adapter stops the heartbeats.
//!
//! # FIFO queues
//!
//! Messages of one MessageGroupId are delivered in order (SQS hands out a group's next
//! messages only once the previous ones are settled) with `source.key` set to the group id;
//! the engine keeps them serial with `processing.ordering: partition` or `key`. Dead
//! letters to a FIFO DLQ keep the group id and use the original MessageId as deduplication
//! id.
//!
//! # Credentials and least privilege
//!
//! Credentials come from the standard AWS provider chain (`AWS_ACCESS_KEY_ID`/
//! `AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, the shared config and credentials files
//! with `source.profile`, web identity, SSO, `credential_process`, container and instance
//! metadata), or from [`SqsAdapter::with_credentials`]. They never appear in logs, errors or
//! `Debug` output. `security.require_tls` refuses `http://` endpoints and queue URLs.
//!
//! The consumer needs `sqs:ReceiveMessage`, `sqs:DeleteMessage`,
//! `sqs:ChangeMessageVisibility`, `sqs:GetQueueAttributes` (and `sqs:GetQueueUrl` when
//! configured by name) on its queue, plus `sqs:SendMessage` and `sqs:GetQueueAttributes` on
//! `dlq_queue_url`; a publisher needs `sqs:SendMessage`. `qt dlq` needs
//! `sqs:GetQueueAttributes`, `sqs:ReceiveMessage`, `sqs:ChangeMessageVisibility` and (to
//! remove, replay or purge) `sqs:DeleteMessage` on `dlq_queue_url`, and `sqs:SendMessage` on
//! the queues it replays to. Queues encrypted with a customer
//! KMS key also need `kms:Decrypt` (receiving) and `kms:GenerateDataKey` (sending).

mod adapter;
pub mod attributes;
pub mod connection;
mod deleter;
pub mod dlq;
mod health;
mod lease;
mod message;
mod poller;
mod publisher;
mod queue;
mod send;
mod settle;

pub use adapter::SqsAdapter;
pub use dlq::SqsDlq;
pub use message::{DEDUPLICATION_ID_HEADER, GROUP_ID_HEADER, SEQUENCE_NUMBER_HEADER};
pub use publisher::SqsPublisher;
