//! Components that ship with the engine: an in-memory idempotency store, policy governance,
//! and memory / JSONL ledgers.

pub mod jsonl_ledger;
pub mod memory_ledger;
pub mod memory_store;
pub mod policy_governance;
