//! Which records a `qt ledger` command reads.

use qt_core::LedgerRecord;

use crate::cli::RecordFilter;

impl RecordFilter {
    /// Whether `record` passes every option given.
    pub fn matches(&self, record: &LedgerRecord) -> bool {
        fn same(wanted: Option<&String>, value: Option<&str>) -> bool {
            wanted.is_none_or(|w| value == Some(w.as_str()))
        }
        same(self.tenant.as_ref(), record.tenant_id.as_deref())
            && same(self.event.as_ref(), record.event_name.as_deref())
            && same(self.message_id.as_ref(), Some(&record.message_id))
            && same(self.dedup_key.as_ref(), record.dedup_key.as_deref())
            && self.status.is_none_or(|s| s == record.status)
            && self.trace_id.is_none_or(|t| t == record.trace_id)
            && self.since.is_none_or(|t| record.finished_at >= t)
            && self.until.is_none_or(|t| record.finished_at < t)
    }
}

#[cfg(test)]
mod tests {
    use qt_core::LedgerStatus;

    use super::*;
    use crate::commands::ledger::test_record;

    #[test]
    fn an_empty_filter_matches_every_record() {
        assert!(RecordFilter::default().matches(&test_record("m-1", LedgerStatus::Failed)));
    }

    #[test]
    fn each_option_must_hold() {
        let r = test_record("m-1", LedgerStatus::Succeeded);
        let at = r.finished_at;
        let pass = [
            RecordFilter {
                tenant: Some("tenant-a".into()),
                ..Default::default()
            },
            RecordFilter {
                status: Some(LedgerStatus::Succeeded),
                ..Default::default()
            },
            RecordFilter {
                event: Some("order.created".into()),
                ..Default::default()
            },
            RecordFilter {
                message_id: Some("m-1".into()),
                ..Default::default()
            },
            RecordFilter {
                dedup_key: Some("order-1".into()),
                ..Default::default()
            },
            RecordFilter {
                trace_id: Some(r.trace_id),
                ..Default::default()
            },
            RecordFilter {
                since: Some(at),
                until: Some(at + chrono::Duration::milliseconds(1)),
                ..Default::default()
            },
        ];
        for f in &pass {
            assert!(f.matches(&r), "{f:?}");
        }
        let fail = [
            RecordFilter {
                tenant: Some("tenant-b".into()),
                ..Default::default()
            },
            RecordFilter {
                status: Some(LedgerStatus::Failed),
                ..Default::default()
            },
            RecordFilter {
                event: Some("order.paid".into()),
                ..Default::default()
            },
            RecordFilter {
                message_id: Some("m-2".into()),
                ..Default::default()
            },
            RecordFilter {
                dedup_key: Some("order-2".into()),
                ..Default::default()
            },
            RecordFilter {
                trace_id: Some(qt_core::TraceId::random()),
                ..Default::default()
            },
            RecordFilter {
                since: Some(at + chrono::Duration::milliseconds(1)),
                ..Default::default()
            },
            RecordFilter {
                until: Some(at),
                ..Default::default()
            },
        ];
        for f in &fail {
            assert!(!f.matches(&r), "{f:?}");
        }
    }

    #[test]
    fn a_record_without_a_tenant_never_matches_a_tenant_option() {
        let mut r = test_record("m-1", LedgerStatus::ParseFailed);
        r.tenant_id = None;
        assert!(
            !RecordFilter {
                tenant: Some("tenant-a".into()),
                ..Default::default()
            }
            .matches(&r)
        );
    }
}
