//! The adapter conformance suite against RabbitMQ: every check on queues of its own, the
//! adapter connected through a proxy the connection-loss check can cut.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};

use async_trait::async_trait;
use common::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use qt_adapter_mock::testkit::{CuttableProxy, DeadLetterCopy, TestMessage, TestQueue, Unsupported};
use qt_adapter_rabbitmq::RabbitMqAdapter;
use qt_core::config::{RabbitMqDlq, RabbitMqSourceConfig};
use qt_core::{Headers, QueueAdapter};

struct RabbitTestQueue {
    broker: Broker,
    queue: String,
    dlq: String,
    /// The adapter's configuration: the broker through `proxy`, dead letters to `dlq`.
    config: RabbitMqSourceConfig,
    proxy: CuttableProxy,
    _cleanup: Cleanup,
}

async fn fresh_queue() -> RabbitTestQueue {
    let broker = Broker::connect().await;
    let queue = unique("conformance");
    let dlq = unique("conformance-dlq");
    let mut url = url::Url::parse(&broker_url()).expect("QT_TEST_RABBITMQ_URL is a URL");
    let upstream: SocketAddr = (url.host_str().expect("a host"), url.port().unwrap_or(5672))
        .to_socket_addrs()
        .expect("the broker's address resolves")
        .next()
        .expect("an address");
    let proxy = CuttableProxy::start(upstream).await.expect("the proxy listens");
    url.set_ip_host(proxy.addr().ip()).unwrap();
    url.set_port(Some(proxy.addr().port())).unwrap();
    let mut config = config(url.as_str(), &queue);
    config.dlq = Some(RabbitMqDlq {
        exchange: String::new(),
        routing_key: dlq.clone(),
        declare: None,
        queue: None,
    });
    let cleanup = Cleanup::new(&[&queue, &dlq, &config.retry_queue_name()]);
    broker.declare(&queue, FieldTable::default()).await;
    broker.declare(&dlq, FieldTable::default()).await;
    RabbitTestQueue {
        broker,
        queue,
        dlq,
        config,
        proxy,
        _cleanup: cleanup,
    }
}

fn headers_of(properties: &lapin::BasicProperties) -> Headers {
    let Some(table) = properties.headers() else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .map(|(name, value)| {
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

#[async_trait]
impl TestQueue for RabbitTestQueue {
    async fn adapter(&self) -> Box<dyn QueueAdapter> {
        Box::new(RabbitMqAdapter::new(&self.config, settings(8)).expect("a valid configuration"))
    }

    async fn publish(&self, message: TestMessage) {
        let mut headers = FieldTable::default();
        for (name, value) in message.headers.iter() {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.broker
            .publish(&self.queue, message.body.as_bytes(), with_id(&id).with_headers(headers))
            .await;
    }

    async fn take_dead_letters(&self) -> Result<Vec<DeadLetterCopy>, Unsupported> {
        let mut copies = Vec::new();
        while let Some(got) = self.broker.get(&self.dlq).await {
            copies.push(DeadLetterCopy {
                body: got.delivery.data.clone().into(),
                headers: headers_of(&got.delivery.properties),
            });
        }
        Ok(copies)
    }

    async fn cut_connection(&self) -> Result<(), Unsupported> {
        self.proxy.cut().await;
        Ok(())
    }

    async fn restore_connection(&self) {
        self.proxy.restore().await;
    }
}

qt_adapter_mock::conformance_suite!(fresh_queue);
