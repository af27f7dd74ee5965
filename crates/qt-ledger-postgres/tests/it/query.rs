//! Reading: each filter narrows what `query` returns, newest first; `records_after` follows
//! the table in insertion order.

use qt_core::{Ledger, LedgerFilter, LedgerRecord, LedgerStatus, TraceId};

use crate::support::{TestSchema, at, full, minimal};

/// Six records that differ in every filtered field.
fn records() -> Vec<LedgerRecord> {
    let mut a = full("a", LedgerStatus::Succeeded, 1);
    a.tenant_id = Some("acme".into());
    a.event_name = Some("order.created".into());
    let mut b = full("b", LedgerStatus::Failed, 2);
    b.tenant_id = Some("acme".into());
    b.event_name = Some("order.deleted".into());
    let mut c = full("c", LedgerStatus::Succeeded, 3);
    c.tenant_id = Some("globex".into());
    c.event_name = Some("order.created".into());
    let d = minimal("d", LedgerStatus::Duplicate, 4);
    let e = minimal("e", LedgerStatus::Succeeded, 5);
    let mut f = minimal("f", LedgerStatus::Rejected, 6);
    f.dedup_key = Some("dedup-a".into());
    vec![a, b, c, d, e, f]
}

fn ids(records: &[LedgerRecord]) -> Vec<&str> {
    records.iter().map(|r| r.message_id.as_str()).collect()
}

#[tokio::test]
async fn each_filter_field_selects_the_matching_records_newest_first() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let written = records();
    ledger.record_batch(written.clone()).await.expect("write");
    let trace_of_c = written[2].trace_id;

    let cases: Vec<(LedgerFilter, Vec<&str>)> = vec![
        (LedgerFilter::default(), vec!["f", "e", "d", "c", "b", "a"]),
        (
            LedgerFilter {
                tenant_id: Some("acme".into()),
                ..Default::default()
            },
            vec!["b", "a"],
        ),
        (
            LedgerFilter {
                status: Some(LedgerStatus::Succeeded),
                ..Default::default()
            },
            vec!["e", "c", "a"],
        ),
        (
            LedgerFilter {
                event_name: Some("order.created".into()),
                ..Default::default()
            },
            vec!["c", "a"],
        ),
        (
            LedgerFilter {
                since: Some(at(5)),
                ..Default::default()
            },
            vec!["f", "e"],
        ),
        (
            LedgerFilter {
                until: Some(at(2)),
                ..Default::default()
            },
            vec!["a"],
        ),
        (
            LedgerFilter {
                since: Some(at(2)),
                until: Some(at(4)),
                ..Default::default()
            },
            vec!["c", "b"],
        ),
        (
            LedgerFilter {
                message_id: Some("d".into()),
                ..Default::default()
            },
            vec!["d"],
        ),
        (
            LedgerFilter {
                trace_id: Some(trace_of_c),
                ..Default::default()
            },
            vec!["c"],
        ),
        (
            LedgerFilter {
                trace_id: Some(TraceId::random()),
                ..Default::default()
            },
            vec![],
        ),
        (
            LedgerFilter {
                dedup_key: Some("dedup-a".into()),
                ..Default::default()
            },
            vec!["f", "a"],
        ),
        (
            LedgerFilter {
                limit: Some(2),
                ..Default::default()
            },
            vec!["f", "e"],
        ),
        (
            LedgerFilter {
                tenant_id: Some("acme".into()),
                status: Some(LedgerStatus::Succeeded),
                event_name: Some("order.created".into()),
                limit: Some(10),
                ..Default::default()
            },
            vec!["a"],
        ),
    ];
    for (filter, expected) in cases {
        let found = ledger.query(&filter).await.expect("query");
        assert_eq!(ids(&found), expected, "{filter:?}");
        // The database and LedgerFilter::matches (what file readers use) agree.
        let by_matches: Vec<_> = written.iter().rev().filter(|r| filter.matches(r)).cloned().collect();
        let by_matches = &by_matches[..by_matches.len().min(filter.limit.unwrap_or(usize::MAX))];
        assert_eq!(found, by_matches, "{filter:?}");
    }
}

#[tokio::test]
async fn a_filter_value_is_a_parameter_not_sql() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    ledger.record_batch(records()).await.expect("write");
    let hostile = LedgerFilter {
        tenant_id: Some("x' OR '1'='1".into()),
        ..Default::default()
    };
    assert_eq!(ledger.query(&hostile).await.expect("query"), Vec::new());
}

#[tokio::test]
async fn records_after_follows_the_table_in_insertion_order() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    let written = records();
    ledger.record_batch(written[..4].to_vec()).await.expect("write");

    let first = ledger.records_after(0, 3).await.expect("read");
    assert_eq!(
        first.iter().map(|s| &s.record).collect::<Vec<_>>(),
        written[..3].iter().collect::<Vec<_>>()
    );
    let last_seen = first.last().expect("three records").id;
    let rest = ledger.records_after(last_seen, 100).await.expect("read");
    assert_eq!(
        rest.iter().map(|s| s.record.message_id.as_str()).collect::<Vec<_>>(),
        ["d"]
    );

    ledger.record_batch(written[4..].to_vec()).await.expect("write more");
    let newer = ledger.records_after(rest[0].id, 100).await.expect("read");
    assert_eq!(
        newer.iter().map(|s| s.record.message_id.as_str()).collect::<Vec<_>>(),
        ["e", "f"]
    );
    assert!(newer[0].id > rest[0].id && newer[1].id > newer[0].id);
}

#[tokio::test]
async fn scan_reads_every_matching_record_in_insertion_order_page_by_page() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    ledger.record_batch(records()).await.expect("write");
    for page in [1, 2, 5, 100] {
        let mut seen = Vec::new();
        ledger
            .scan(&LedgerFilter::default(), page, |r| seen.push(r.message_id))
            .await
            .expect("scan");
        assert_eq!(seen, ["a", "b", "c", "d", "e", "f"], "page {page}");
    }
    let acme = LedgerFilter {
        tenant_id: Some("acme".into()),
        ..Default::default()
    };
    let mut seen = Vec::new();
    ledger.scan(&acme, 1, |r| seen.push(r.message_id)).await.expect("scan");
    assert_eq!(seen, ["a", "b"]);
}

#[tokio::test]
async fn last_id_is_zero_for_an_empty_table_and_then_the_newest_rows() {
    let schema = TestSchema::new();
    let ledger = schema.ledger().await;
    assert_eq!(ledger.last_id().await.expect("read"), 0);
    ledger.record_batch(records()).await.expect("write");
    let all = ledger.records_after(0, 100).await.expect("read");
    assert_eq!(ledger.last_id().await.expect("read"), all.last().expect("six").id);
}
