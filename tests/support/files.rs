//! Reading the JSONL files `qt` writes: ledgers and dead-letter files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// The ledger's records while `qt` may still be writing it: a missing file is empty, and a
/// line still being written (or cut short by a SIGKILL) is left out.
pub fn ledger(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every record of a JSONL file whose writer has finished: a missing file or a line that is
/// not JSON fails the test.
pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display())))
        .collect()
}

/// Every record of each message id, in ledger order.
pub fn by_message(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        out.entry(r["message_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.clone());
    }
    out
}

pub fn status_of(record: &Value) -> &str {
    record["status"].as_str().unwrap_or_default()
}
