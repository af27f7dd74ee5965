//! The brokers a scenario runs on: each one's container, `source` section, producer, and
//! reading of what is left in the queue and the dead-letter destination at the end.
//!
//! Every message carries its dedup key (`m-<i>`) in the `x-dedup-key` header; the verifier
//! follows messages by it, since a Kafka message's id is its position and an SQS message's id
//! is assigned on each send, both of which a producer's retry changes.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client as SqsClient;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qt_adapter_kafka::{KafkaAdmin, KafkaPublisher};
use qt_core::config::{KafkaSourceConfig, SqsSourceConfig};
use qt_core::{AdapterSettings, Headers, OutgoingMessage, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::services::{self, Images, S3Bucket, Service};

/// The queue (RabbitMQ, SQS) or topic (Kafka) the processes consume.
pub const QUEUE: &str = "chaos";
pub const DLQ: &str = "chaos.dlq";
/// The SQS dead-letter queue: SQS queue names allow no dot but a `.fifo` suffix.
const SQS_DLQ: &str = "chaos-dlq";
const SQS_REGION: &str = "us-east-1";
/// moto checks no credentials; qt and the SDK want some.
const SQS_ACCESS_KEY_ID: &str = "AKIAQTCHAOSTESTKEY01";
const SQS_SECRET_ACCESS_KEY: &str = "qt-chaos-sqs-secret";
/// How long a message SQS handed out stays invisible: a SIGKILLed process's messages come
/// back after this, so it is short (qt's heartbeat extends it while a message is in hand).
const SQS_VISIBILITY: Duration = Duration::from_secs(5);
/// The Kafka consumer group the processes share.
const GROUP: &str = "chaos";
/// Kafka partitions of the topic: enough for three processes to share.
const PARTITIONS: i32 = 6;

/// What the producer published: the dedup keys in order, and the key of each message id
/// the broker confirmed (for ledger records that carry no dedup key: those of messages
/// that could not be parsed).
#[derive(Debug, Default)]
pub struct Produced {
    pub keys: Vec<String>,
    pub key_of: HashMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Rabbitmq,
    Kafka,
    Sqs,
}

/// A broker's container and how to reach it.
#[derive(Debug)]
pub struct RunningBroker {
    pub kind: Broker,
    pub service: Service,
    /// Where the broker keeps its data when that is another container's (Nisshi's S3
    /// bucket), which stays up while the broker is restarted or killed.
    storage: Option<S3Bucket>,
}

/// The S3 bucket Nisshi keeps its data in when it must outlive a restart.
const NISSHI_BUCKET: &str = "nisshi";

impl Broker {
    /// Starts the broker; `durable`: its queues, messages and consumer positions must
    /// survive the broker being stopped or killed and started.
    pub fn start(self, images: Images, durable: bool) -> RunningBroker {
        let mut storage = None;
        let service = match self {
            // Durable queues and persistent messages.
            Broker::Rabbitmq => services::rabbitmq(images),
            Broker::Kafka => {
                if durable && images == Images::Host {
                    storage = Some(services::s3_bucket(images, NISSHI_BUCKET));
                }
                services::nisshi(images, storage.as_ref())
            }
            Broker::Sqs => {
                assert!(
                    !durable,
                    "moto keeps its SQS queues in memory: nothing survives its restart"
                );
                services::moto(images)
            }
        };
        let broker = RunningBroker {
            kind: self,
            service,
            storage,
        };
        if self == Broker::Kafka {
            super::support::runtime().block_on(async {
                let admin = broker.kafka_admin();
                for topic in [QUEUE, DLQ] {
                    admin
                        .create_topic(topic, PARTITIONS)
                        .await
                        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
                }
            });
        }
        if self == Broker::Sqs {
            super::support::runtime().block_on(async {
                let client = broker.sqs_client().await;
                for queue in [QUEUE, SQS_DLQ] {
                    client
                        .create_queue()
                        .queue_name(queue)
                        .attributes(
                            QueueAttributeName::VisibilityTimeout,
                            SQS_VISIBILITY.as_secs().to_string(),
                        )
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("creating queue {queue}: {e:?}"));
                }
            });
        }
        broker
    }
}

impl RunningBroker {
    fn amqp(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.service.port)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.service.port)
    }

    fn kafka_config(&self) -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: vec![self.bootstrap()],
            topics: vec![QUEUE.to_owned()],
            delivery_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ..KafkaSourceConfig::default()
        }
    }

    /// Within a tokio runtime.
    fn kafka_admin(&self) -> KafkaAdmin {
        KafkaAdmin::new(&self.kafka_config()).expect("a Kafka admin client")
    }

    fn sqs_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.service.port)
    }

    /// An SDK client on the emulator, with short long polls (for reading what is left).
    async fn sqs_client(&self) -> SqsClient {
        let cfg = SqsSourceConfig {
            queue_url: QUEUE.to_owned(),
            region: SQS_REGION.to_owned(),
            endpoint_url: Some(self.sqs_endpoint()),
            wait_time: Duration::from_secs(1),
            ..SqsSourceConfig::default()
        };
        let credentials = Credentials::new(SQS_ACCESS_KEY_ID, SQS_SECRET_ACCESS_KEY, None, None, "qt-chaos");
        qt_adapter_sqs::connection::sdk_client(&cfg, false, Some(SharedCredentialsProvider::new(credentials)))
            .await
            .expect("an SDK client for the emulator")
    }

    async fn sqs_queue_url(&self, client: &SqsClient, queue: &str) -> String {
        let out = client.get_queue_url().queue_name(queue).send().await;
        out.unwrap_or_else(|e| panic!("GetQueueUrl {queue}: {e:?}"))
            .queue_url
            .expect("GetQueueUrl returns the URL")
    }

    /// What a `qt` process needs in its environment to reach the broker: SQS credentials
    /// from the standard variables, and no shared AWS files or instance metadata.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        match self.kind {
            Broker::Rabbitmq | Broker::Kafka => Vec::new(),
            Broker::Sqs => vec![
                ("AWS_ACCESS_KEY_ID", SQS_ACCESS_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", SQS_SECRET_ACCESS_KEY),
                ("AWS_CONFIG_FILE", "/dev/null"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        }
    }

    /// The configuration's `source` section.
    pub fn source(&self) -> String {
        match self.kind {
            Broker::Rabbitmq => format!(
                r#"source:
  type: rabbitmq
  url: "{url}"
  queue: {QUEUE}
  declare: {{queue: {{durable: true}}}}
  dlq: {{routing_key: {DLQ}, declare: {{durable: true}}}}
  connect_timeout: 5s
  reconnect_initial: 100ms
  reconnect_max: 1s
"#,
                url = self.amqp()
            ),
            // On S3 (moto), every heartbeat is a read and a conditional write of the group's
            // object, and every commit a write per partition: fewer of both, or the group
            // alone keeps moto busy.
            Broker::Kafka => format!(
                r#"source:
  type: kafka
  brokers: ["{bootstrap}"]
  topics: [{QUEUE}]
  consumer_group: {GROUP}
  dlq_topic: {DLQ}
  commit_interval: {commit_interval}
  redelivery_delay: 300ms
  revoke_drain_timeout: 5s
  delivery_timeout: 5s
  connect_timeout: 5s
  options:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "{heartbeat_ms}"
"#,
                bootstrap = self.bootstrap(),
                commit_interval = if self.storage.is_some() { "1s" } else { "200ms" },
                heartbeat_ms = if self.storage.is_some() { 2000 } else { 500 },
            ),
            // Dead letters go to qt's own DLQ queue (with the failure as attributes), as
            // `on_failure: dlq` needs; short long polls, so that a drain or a stop abandons
            // little.
            Broker::Sqs => format!(
                r#"source:
  type: sqs
  queue_url: {QUEUE}
  region: {SQS_REGION}
  endpoint_url: "{endpoint}"
  dlq_queue_url: {SQS_DLQ}
  wait_time: 1s
  visibility_timeout: {visibility}s
"#,
                endpoint = self.sqs_endpoint(),
                visibility = SQS_VISIBILITY.as_secs(),
            ),
        }
    }

    /// Publishes `messages` at `rate` a second, each confirmed by the broker, publishing
    /// again whatever was not confirmed (at least once, as a real producer does). `body(i)`
    /// is message `i`'s body. RabbitMQ and Kafka get one message at a time, SQS batches.
    pub async fn produce(&self, messages: usize, rate: u32, body: impl Fn(usize) -> Vec<u8>) -> Produced {
        if self.kind == Broker::Sqs {
            return self.produce_sqs(messages, rate, body).await;
        }
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let mut produced = Produced::default();
        let kafka = (self.kind == Broker::Kafka).then(|| {
            KafkaPublisher::new(&self.kafka_config(), &AdapterSettings::new("chaos-producer", 1, 1))
                .expect("a Kafka producer")
        });
        let mut channel = None;
        for i in 0..messages {
            pace.tick().await;
            let key = format!("m-{i:06}");
            let body = body(i);
            let id = loop {
                let published = match &kafka {
                    Some(producer) => publish_kafka(producer, &key, &body).await,
                    None => {
                        if channel.is_none() {
                            channel = connect(&self.amqp()).await;
                        }
                        match &channel {
                            Some(ch) => publish_amqp(ch, &key, &body).await.then(|| key.clone()),
                            None => None,
                        }
                    }
                };
                if let Some(id) = published {
                    break id;
                }
                channel = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            produced.key_of.insert(id, key.clone());
            produced.keys.push(key);
        }
        produced
    }

    /// SQS: ten messages per SendMessageBatch, at `rate` messages a second; entries SQS did
    /// not accept, or all of them when the call failed (moto hung, say), are sent again.
    async fn produce_sqs(&self, messages: usize, rate: u32, body: impl Fn(usize) -> Vec<u8>) -> Produced {
        const BATCH: usize = 10;
        let client = self.sqs_client().await;
        let url = self.sqs_queue_url(&client, QUEUE).await;
        let mut pace = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / f64::from(rate)));
        let mut produced = Produced::default();
        let mut next = 0;
        while next < messages {
            pace.tick().await;
            let batch: Vec<usize> = (next..messages.min(next + BATCH)).collect();
            next += batch.len();
            let mut unsent = batch.clone();
            while !unsent.is_empty() {
                let entries = unsent
                    .iter()
                    .map(|&i| {
                        let key = format!("m-{i:06}");
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(String::from_utf8_lossy(&body(i)))
                            .set_message_attributes(Some(qt_adapter_sqs::attributes::to_attributes(&headers(&key))))
                            .build()
                            .expect("a batch entry")
                    })
                    .collect();
                let sent = client
                    .send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                if let Ok(out) = sent {
                    for ok in out.successful() {
                        let i: usize = ok.id().parse().expect("the entry id is the message's index");
                        produced.key_of.insert(ok.message_id().to_owned(), format!("m-{i:06}"));
                        unsent.retain(|&u| u != i);
                    }
                }
                if !unsent.is_empty() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            produced.keys.extend(batch.iter().map(|i| format!("m-{i:06}")));
        }
        produced
    }

    /// The dedup keys of the messages still to be consumed, and of the dead letters, once the
    /// processes are stopped.
    pub async fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        match self.kind {
            Broker::Rabbitmq => {
                let channel = connect(&self.amqp()).await.expect("the broker is back for the count");
                (get_all(&channel, QUEUE).await, get_all(&channel, DLQ).await)
            }
            Broker::Kafka => {
                let admin = self.kafka_admin();
                let committed = admin.committed_offsets(GROUP, QUEUE).await.expect("committed offsets");
                let from = |p: i32| {
                    committed
                        .get(&p)
                        .copied()
                        .flatten()
                        .map_or(Offset::Beginning, Offset::Offset)
                };
                let queued = read_kafka(&self.bootstrap(), &admin, QUEUE, from).await;
                let dead = read_kafka(&self.bootstrap(), &admin, DLQ, |_| Offset::Beginning).await;
                (queued, dead)
            }
            Broker::Sqs => {
                let client = self.sqs_client().await;
                let queue = self.sqs_queue_url(&client, QUEUE).await;
                let dlq = self.sqs_queue_url(&client, SQS_DLQ).await;
                (take_all_sqs(&client, &queue).await, take_all_sqs(&client, &dlq).await)
            }
        }
    }
}

fn headers(key: &str) -> Headers {
    let mut headers = Headers::new();
    headers.insert("x-dedup-key", key);
    headers.insert("x-tenant-id", "chaos");
    headers.insert("content-type", "application/json");
    headers
}

/// The message id the consumer will see (`topic/partition/offset`), once the broker
/// acknowledged the record.
async fn publish_kafka(producer: &KafkaPublisher, key: &str, body: &[u8]) -> Option<String> {
    let message = OutgoingMessage {
        body: body.to_vec().into(),
        headers: headers(key),
        key: Some(key.to_owned()),
        destination: Some(QUEUE.to_owned()),
        ..OutgoingMessage::default()
    };
    producer.publish(message).await.ok().flatten()
}

async fn connect(amqp: &str) -> Option<lapin::Channel> {
    let connect = Connection::connect(amqp, ConnectionProperties::default());
    let conn = tokio::time::timeout(Duration::from_secs(5), connect).await.ok()?.ok()?;
    let channel = conn.create_channel().await.ok()?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.ok()?;
    Some(channel)
}

/// Whether the broker confirmed the persistent message within 5 s.
async fn publish_amqp(channel: &lapin::Channel, key: &str, body: &[u8]) -> bool {
    let mut table = FieldTable::default();
    for (name, value) in headers(key).iter() {
        if name != "content-type" {
            table.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
    }
    let properties = BasicProperties::default()
        .with_message_id(key.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table);
    let confirmed = async {
        channel
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .ok()?
            .await
            .ok()
            .filter(|c| c.is_ack())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), confirmed).await,
        Ok(Some(_))
    )
}

/// Takes every message of `queue` with `basic.get`; returns their dedup keys.
async fn get_all(channel: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
    {
        let key = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-dedup-key").cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            });
        keys.push(key.unwrap_or_default());
    }
    keys
}

/// The dedup keys of `topic`'s records from `from(partition)` to the end, read with a plain
/// consumer (assigned, no group).
async fn read_kafka(bootstrap: &str, admin: &KafkaAdmin, topic: &str, from: impl Fn(i32) -> Offset) -> Vec<String> {
    let ends = admin.end_offsets(topic).await.expect("end offsets");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "chaos-verifier")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a plain consumer");
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, from(*p)).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut keys = Vec::new();
    let mut idle = 0;
    // Until every partition reached its end offset, or nothing came for 5 s.
    while idle < 25 {
        let position = consumer.position().expect("positions");
        let at_end = ends.iter().all(
            |(p, end)| match position.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o >= *end,
                _ => *end == 0,
            },
        );
        if at_end {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                idle = 0;
                let key = record.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "x-dedup-key")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                keys.push(key.unwrap_or_default());
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => idle += 1,
        }
    }
    keys
}

/// The dedup keys of every message in the SQS queue at `url`, those in flight too: each is
/// received once and kept invisible (never deleted: the container is thrown away), until
/// none is visible and every invisible one is one of those received. A message a stopped
/// process held comes back by its visibility timeout at the latest.
async fn take_all_sqs(client: &SqsClient, url: &str) -> Vec<String> {
    let bound = SQS_VISIBILITY * 6;
    let started = std::time::Instant::now();
    let mut keys = Vec::new();
    loop {
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(600)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("ReceiveMessage {url}: {e:?}"));
        let messages = received.messages.unwrap_or_default();
        if !messages.is_empty() {
            for m in messages {
                let headers = qt_adapter_sqs::attributes::to_headers(m.message_attributes.as_ref());
                keys.push(headers.get("x-dedup-key").unwrap_or_default().to_owned());
            }
            continue;
        }
        let attributes = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetQueueAttributes {url}: {e:?}"))
            .attributes
            .unwrap_or_default();
        let count =
            |name: QueueAttributeName| -> usize { attributes.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let visible = count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
        let invisible = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        if visible == 0 && invisible <= keys.len() {
            return keys;
        }
        assert!(
            started.elapsed() < bound,
            "{url}: {visible} messages visible and {invisible} in flight after {bound:?}, {} received",
            keys.len()
        );
    }
}
