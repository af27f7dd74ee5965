//! The brokers a scenario runs on: each one's container, `source` section, producer, and
//! reading of what is left in the queue and the dead-letter destination at the end.
//!
//! Every message carries its dedup key (`m-<i>`) in the `x-dedup-key` header; the verifier
//! follows messages by it, since a Kafka message's id is its position, which a producer's
//! retry changes.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qt_adapter_kafka::{KafkaAdmin, KafkaPublisher};
use qt_core::config::KafkaSourceConfig;
use qt_core::{AdapterSettings, Headers, OutgoingMessage, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::services::{self, Images, Service};

/// The queue (RabbitMQ) or topic (Kafka) the processes consume.
pub const QUEUE: &str = "chaos";
pub const DLQ: &str = "chaos.dlq";
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
}

/// A broker's container and how to reach it.
#[derive(Debug)]
pub struct RunningBroker {
    pub kind: Broker,
    pub service: Service,
}

impl Broker {
    pub fn start(self, images: Images) -> RunningBroker {
        let service = match self {
            Broker::Rabbitmq => services::rabbitmq(images),
            Broker::Kafka => services::nisshi(images),
        };
        let broker = RunningBroker { kind: self, service };
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
            Broker::Kafka => format!(
                r#"source:
  type: kafka
  brokers: ["{bootstrap}"]
  topics: [{QUEUE}]
  consumer_group: {GROUP}
  dlq_topic: {DLQ}
  commit_interval: 200ms
  redelivery_delay: 300ms
  revoke_drain_timeout: 5s
  delivery_timeout: 5s
  connect_timeout: 5s
  options:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
"#,
                bootstrap = self.bootstrap()
            ),
        }
    }

    /// Publishes `messages` at `rate` a second, each confirmed by the broker, publishing
    /// again whatever was not confirmed (at least once, as a real producer does). `body(i)`
    /// is message `i`'s body.
    pub async fn produce(&self, messages: usize, rate: u32, body: impl Fn(usize) -> Vec<u8>) -> Produced {
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let mut produced = Produced::default();
        let kafka = match self.kind {
            Broker::Kafka => Some(
                KafkaPublisher::new(&self.kafka_config(), &AdapterSettings::new("chaos-producer", 1, 1))
                    .expect("a Kafka producer"),
            ),
            Broker::Rabbitmq => None,
        };
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
