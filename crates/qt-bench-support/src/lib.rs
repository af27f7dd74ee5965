//! Pieces every benchmark in the workspace needs, kept in one place so that the engine,
//! store and adapter benchmarks measure the same way. A development dependency only.

mod agent;
mod drain;
mod ledger;
mod stats;
mod workload;

pub use agent::NoOpAgent;
pub use drain::run_until_succeeded;
pub use ledger::LatencyLedger;
pub use stats::{env_or, median, percentile, process_cpu_seconds, process_cpu_time};
pub use workload::{BODY_BYTES, TENANTS, dedup_key, is_duplicate, mock_messages, order_body, order_of, tenant_of};
