//! Faults injected with librdkafka's mock cluster: brokers going down and requests failing.
//! Nothing here needs an external broker.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use qt_adapter_kafka::KafkaAdmin;
use qt_core::{Health, QueueAdapter};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const WAIT: Duration = Duration::from_secs(30);

fn fast_source(bootstrap: &str, topic: &str) -> qt_core::config::KafkaSourceConfig {
    let mut cfg = source(bootstrap, &[topic], &unique("g"));
    cfg.options.insert("statistics.interval.ms".into(), "200".into());
    cfg.options.insert("reconnect.backoff.ms".into(), "100".into());
    cfg.options.insert("reconnect.backoff.max.ms".into(), "500".into());
    cfg.producer_options
        .insert("reconnect.backoff.max.ms".into(), "500".into());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_turns_unhealthy_and_recovers_without_loss() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let topic = unique("down");
    mock.create_topic(&topic, 2, 1).expect("topic");
    let cfg = fast_source(&bootstrap, &topic);
    let group = cfg.consumer_group.clone();
    let admin = KafkaAdmin::plaintext(&bootstrap).unwrap();
    let adapter = connected(&cfg, 128).await;

    produce(adapter.publisher(), &topic, 0, 50).await;
    let first = receive_n(&adapter, 50, WAIT).await;
    ack_all(first).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    eventually("healthy", WAIT, || async {
        adapter.health().await.is_healthy().then_some(())
    })
    .await;

    mock.broker_down(1).expect("broker down");
    let reason = eventually("unhealthy while the broker is down", WAIT, || async {
        match adapter.health().await {
            Health::Unhealthy(reason) => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(!reason.is_empty());

    mock.broker_up(1).expect("broker up");
    eventually("healthy again", WAIT, || async {
        adapter.health().await.is_healthy().then_some(())
    })
    .await;

    produce(adapter.publisher(), &topic, 50, 50).await;
    let second = receive_n(&adapter, 50, WAIT).await;
    let seqs: BTreeSet<usize> = second.iter().map(seq).collect();
    assert_eq!(seqs, (50..100).collect(), "nothing lost, nothing repeated");
    ack_all(second).await;
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    adapter.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_and_fetches_are_retried_without_loss() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let topic = unique("errors");
    mock.create_topic(&topic, 2, 1).expect("topic");
    let cfg = fast_source(&bootstrap, &topic);
    let group = cfg.consumer_group.clone();
    let admin = KafkaAdmin::plaintext(&bootstrap).unwrap();
    let adapter = connected(&cfg, 256).await;
    produce(adapter.publisher(), &topic, 0, 100).await;

    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    // Errors librdkafka does not retry by itself: the commits fail back to the adapter,
    // and the stored offsets go out again with the next commits.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let got = receive_n(&adapter, 100, WAIT).await;
    let seqs: BTreeSet<usize> = got.iter().map(seq).collect();
    assert_eq!(seqs, (0..100).collect());
    ack_all(got).await;
    // The failed commits are retried at the next interval until they go through.
    wait_committed_to_end(&admin, &group, &topic, WAIT).await;
    assert!(adapter.health().await.is_healthy());
    adapter.close().await.unwrap();
}
