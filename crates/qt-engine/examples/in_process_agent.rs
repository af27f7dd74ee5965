//! qt as a library: an agent implemented in process, a [`QueueTrigger`] over the in-memory
//! mock queue, and each message's outcome read back from the ledger.
//!
//! ```sh
//! cargo run -p qt-engine --example in_process_agent
//! ```
//!
//! The agent succeeds for most orders, fails retryably on the first attempt for one (qt
//! retries it) and permanently for another (qt dead-letters it); a re-sent order carries the
//! same dedup key as the first and is recognised as a duplicate. The example checks each
//! outcome and exits non-zero when one differs, so CI running it is a real check.
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example reports to whoever runs it

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qt_adapter_mock::MockQueue;
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, SourceConfig};
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, LedgerStatus, SettlementKind};
use qt_engine::QueueTrigger;
use qt_engine::builtin::memory_ledger::MemoryLedger;
use serde_json::{Value, json};

/// Fulfils orders. What it does with one depends on the order's `sku`.
#[derive(Debug)]
struct FulfilmentAgent;

#[async_trait]
impl AgentRuntime for FulfilmentAgent {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let order = event
            .payload_json()
            .map_err(|e| AgentError::permanent(format!("the order is not JSON: {e}")))?;
        match order.get("sku").and_then(Value::as_str) {
            // `attempt` counts qt's retries of this message, starting at 1.
            Some("flaky-widget") if event.attempt == 1 => Err(AgentError::retryable("the warehouse is busy")),
            Some("discontinued-gadget") => Err(AgentError::permanent("the sku is discontinued")),
            _ => Ok(AgentRun {
                run_id: Some(format!("fulfil-{}", event.envelope.message_id)),
                llm_calls: 1,
                output: None,
            }),
        }
    }
}

/// What each message should end as: id, status, agent attempts, how the broker was told.
const EXPECTED: [(&str, LedgerStatus, u32, SettlementKind); 4] = [
    ("order-1", LedgerStatus::Succeeded, 1, SettlementKind::Ack),
    ("order-2", LedgerStatus::Succeeded, 2, SettlementKind::Ack),
    ("order-3", LedgerStatus::Failed, 1, SettlementKind::DeadLetter),
    ("order-1-resent", LedgerStatus::Duplicate, 0, SettlementKind::Ack),
];

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig {
        queue: "orders".into(),
        file: None,
        dlq_file: None,
    }));
    // Short delays so the example finishes at once: the retried order's backoff, and the
    // wait of the re-sent order when it arrives while its twin is still running.
    config.retry.backoff.initial = Duration::from_millis(10);
    config.processing.duplicate_in_flight_delay = Duration::from_millis(10);
    config.ledger = LedgerConfig::Memory;

    let queue = MockQueue::new("orders");
    let headers = [("x-event-name", "order.created"), ("x-tenant-id", "acme")];
    queue.enqueue_json(
        "order-1",
        &[headers[0], headers[1], ("x-dedup-key", "order-1")],
        &json!({"sku": "widget"}),
    );
    queue.enqueue_json("order-2", &headers, &json!({"sku": "flaky-widget"}));
    queue.enqueue_json("order-3", &headers, &json!({"sku": "discontinued-gadget"}));
    // The same order sent again: its dedup key is order-1's, so the agent is not called twice.
    queue.enqueue_json(
        "order-1-resent",
        &[headers[0], headers[1], ("x-dedup-key", "order-1")],
        &json!({"sku": "widget"}),
    );

    let ledger = Arc::new(MemoryLedger::new());
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(queue.adapter()))
        .agent("fulfilment", Arc::new(FulfilmentAgent))
        .ledger(ledger.clone())
        .build()?;
    trigger.start().await?;
    tokio::time::timeout(Duration::from_secs(30), queue.wait_idle())
        .await
        .map_err(|_| "the queue did not drain within 30s")?;
    trigger.stop().await?;

    let records = ledger.records();
    let mut unexpected = 0;
    for (id, status, attempts, settlement) in EXPECTED {
        // A message deferred on the way (a duplicate arriving while its twin runs) has
        // earlier records too; the last one is its outcome.
        let Some(record) = records.iter().rev().find(|r| r.message_id == id) else {
            eprintln!("{id}: no ledger record");
            unexpected += 1;
            continue;
        };
        println!(
            "{id:<15} {:<10} attempts={} settlement={:?}{}",
            record.status.as_str(),
            record.attempts,
            record.settlement,
            record
                .error
                .as_deref()
                .map(|e| format!(" error={e:?}"))
                .unwrap_or_default(),
        );
        if (record.status, record.attempts, record.settlement) != (status, attempts, settlement) {
            eprintln!(
                "{id}: expected {} attempts={attempts} settlement={settlement:?}",
                status.as_str()
            );
            unexpected += 1;
        }
    }
    if unexpected > 0 {
        eprintln!("{unexpected} unexpected outcome(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
