//! Renders the engine's metrics snapshot as Prometheus text.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use qt_engine::MetricsSnapshot;
use qt_engine::metrics::HistogramSnapshot;

#[derive(Debug)]
struct Snapshot(MetricsSnapshot);

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)
}

fn labelled_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        family
            .encode_family(&labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(n, None)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn histogram(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, h: &HistogramSnapshot) -> std::fmt::Result {
    // The encoder wants per-bucket counts ending with +Inf; the snapshot is cumulative.
    let mut buckets = Vec::with_capacity(h.buckets.len() + 1);
    let mut previous = 0;
    for (le, cumulative) in &h.buckets {
        buckets.push((*le, cumulative - previous));
        previous = *cumulative;
    }
    buckets.push((f64::MAX, h.count.saturating_sub(previous)));
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.0;
        counter(
            &mut e,
            "qt_messages_received",
            "Messages taken from the source.",
            m.received,
        )?;
        labelled_counter(
            &mut e,
            "qt_messages_processed",
            "Messages settled, by outcome.",
            "outcome",
            &m.processed,
        )?;
        labelled_counter(
            &mut e,
            "qt_retries",
            "Agent retries, by error class.",
            "class",
            &m.retries,
        )?;
        counter(
            &mut e,
            "qt_dedup_hits",
            "Messages skipped as already processed.",
            m.dedup_hits,
        )?;
        labelled_counter(&mut e, "qt_dlq", "Messages dead-lettered, by reason.", "reason", &m.dlq)?;
        counter(
            &mut e,
            "qt_panics",
            "Panics caught while processing messages (each a bug; the message that panicked is dead-lettered).",
            m.panics,
        )?;
        counter(
            &mut e,
            "qt_idempotency_errors",
            "Idempotency store operations that failed.",
            m.idempotency_errors,
        )?;
        counter(
            &mut e,
            "qt_settle_errors",
            "Broker settlements that failed (left for redelivery).",
            m.settle_errors,
        )?;
        counter(
            &mut e,
            "qt_ledger_errors",
            "Ledger batch writes that failed.",
            m.ledger_errors,
        )?;
        counter(
            &mut e,
            "qt_agent_attempts",
            "Agent runs started, retries included.",
            m.agent_attempts,
        )?;
        histogram(
            &mut e,
            "qt_processing_seconds",
            "Receive to outcome, per message.",
            &m.processing_seconds,
        )?;
        histogram(
            &mut e,
            "qt_consume_lag_seconds",
            "Broker timestamp to receive, per message.",
            &m.consume_lag_seconds,
        )?;
        gauge(
            &mut e,
            "qt_backlog_messages",
            "Messages waiting at the broker (-1 when the adapter cannot tell).",
            m.backlog.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        )?;
        gauge(
            &mut e,
            "qt_inflight",
            "Messages taken from the source and not yet settled.",
            m.inflight as i64,
        )?;
        gauge(
            &mut e,
            "qt_agent_runs_active",
            "Agent runs in progress.",
            m.running as i64,
        )?;
        counter(
            &mut e,
            "qt_trace_messages_shed",
            "Messages the sampler kept but that were not traced, because the span export queue was nearly full.",
            m.traces_shed,
        )?;
        let (dropped, exported, failed) = qt_telemetry::span_counts();
        counter(
            &mut e,
            "qt_trace_spans_dropped",
            "Spans dropped because the export queue (observability.tracing.max_queue_size) was full.",
            dropped,
        )?;
        counter(
            &mut e,
            "qt_trace_spans_exported",
            "Spans the collector accepted.",
            exported,
        )?;
        counter(
            &mut e,
            "qt_trace_spans_export_failed",
            "Spans whose export failed (collector down, refusing or too slow); they are not retried later.",
            failed,
        )?;
        Ok(())
    }
}

/// The Prometheus text exposition of a snapshot.
pub fn render(snapshot: MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(snapshot)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_histograms() {
        let mut s = MetricsSnapshot {
            received: 5,
            processed: vec![("succeeded", 3), ("failed", 2)],
            ..Default::default()
        };
        s.processing_seconds = HistogramSnapshot {
            buckets: vec![(0.1, 2), (1.0, 4)],
            count: 5,
            sum_seconds: 2.5,
        };
        let text = render(s);
        assert!(text.contains("qt_messages_received_total 5"), "{text}");
        assert!(
            text.contains("qt_messages_processed_total{outcome=\"succeeded\"} 3"),
            "{text}"
        );
        assert!(text.contains("qt_processing_seconds_bucket{le=\"0.1\"} 2"), "{text}");
        assert!(text.contains("qt_processing_seconds_bucket{le=\"1.0\"} 4"), "{text}");
        assert!(text.contains("qt_processing_seconds_bucket{le=\"+Inf\"} 5"), "{text}");
        assert!(text.contains("qt_backlog_messages -1"), "{text}");
    }
}
