//! Shared helpers: the emulator endpoint, throwaway queues, adapters with static test
//! credentials, and bounded waits.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use qt_adapter_sqs::SqsAdapter;
use qt_adapter_sqs::connection::sdk_client;
use qt_core::config::SqsSourceConfig;
use qt_core::{AdapterSettings, Delivery, QueueAdapter};
use tokio::time::{Instant, timeout};

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "AKIAQTTESTACCESSKEY";
pub const SECRET_ACCESS_KEY: &str = "qt-test-secret-never-printed-7f3a9c";

pub fn endpoint() -> String {
    std::env::var("QT_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// Fails the test with what to do when the emulator is not running.
pub fn require_emulator() -> String {
    let endpoint = endpoint();
    let host_port = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(&endpoint)
        .trim_end_matches('/')
        .to_owned();
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr: SocketAddr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok());
    assert!(
        reachable,
        "the SQS emulator is not reachable at {endpoint} (QT_TEST_SQS_ENDPOINT): start it with \
         `cargo xtask services up`"
    );
    endpoint
}

pub fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "qt-tests")
}

pub fn source(queue_url: &str) -> SqsSourceConfig {
    SqsSourceConfig {
        queue_url: queue_url.to_owned(),
        region: REGION.to_owned(),
        endpoint_url: Some(endpoint()),
        pollers: 1,
        wait_time: Duration::from_secs(1),
        visibility_timeout: Some(Duration::from_secs(30)),
        ..SqsSourceConfig::default()
    }
}

pub fn settings(max_in_flight: usize) -> AdapterSettings {
    AdapterSettings::new("qt-sqs-test", max_in_flight, max_in_flight)
}

/// A connected adapter.
pub async fn adapter(cfg: &SqsSourceConfig, max_in_flight: usize) -> SqsAdapter {
    let adapter = SqsAdapter::with_credentials(cfg, settings(max_in_flight), credentials())
        .await
        .expect("adapter");
    adapter.connect().await.expect("connect");
    adapter
}

/// A client for setting up and inspecting queues.
pub async fn admin() -> Client {
    require_emulator();
    sdk_client(
        &source("qt-admin"),
        false,
        Some(SharedCredentialsProvider::new(credentials())),
    )
    .await
    .expect("admin client")
}

/// Creates a uniquely named queue; `.fifo` queues get FIFO attributes.
pub async fn create_queue(client: &Client, fifo: bool) -> String {
    let name = format!(
        "qt-test-{}{}",
        uuid::Uuid::new_v4().simple(),
        if fifo { ".fifo" } else { "" }
    );
    let mut request = client.create_queue().queue_name(&name);
    if fifo {
        request = request.attributes(QueueAttributeName::FifoQueue, "true");
    }
    request
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url")
}

pub async fn delete_queue(client: &Client, url: &str) {
    let _ = client.delete_queue().queue_url(url).send().await;
}

pub fn text(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("attribute")
}

pub async fn send(client: &Client, url: &str, body: &str) {
    client
        .send_message()
        .queue_url(url)
        .message_body(body)
        .message_attributes("x-tenant-id", text("acme"))
        .send()
        .await
        .expect("send");
}

/// Receives until `n` deliveries arrived or `limit` passed.
pub async fn receive_n(adapter: &SqsAdapter, n: usize, limit: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, adapter.receive(n - out.len())).await {
            Ok(Ok(batch)) => out.extend(batch),
            Ok(Err(e)) => panic!("receive failed: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Whatever the adapter delivers within `window` (expected: nothing).
pub async fn receive_within(adapter: &SqsAdapter, window: Duration) -> Vec<Delivery> {
    match timeout(window, adapter.receive(10)).await {
        Ok(Ok(batch)) => batch,
        Ok(Err(e)) => panic!("receive failed: {e}"),
        Err(_) => Vec::new(),
    }
}

/// Messages in the queue: (visible, in flight, delayed).
pub async fn counts(client: &Client, url: &str) -> (u64, u64, u64) {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let attributes = out.attributes().expect("attributes");
    let get = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

/// Raw receive with every attribute, for checking what landed in a queue.
pub async fn peek(client: &Client, url: &str) -> Vec<Message> {
    client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}

pub fn body(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.body.to_vec()).expect("text body")
}
