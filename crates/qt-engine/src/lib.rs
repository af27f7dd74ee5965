//! The qt processing engine: lifecycle, bounded concurrency, ordering, the pipeline, retries, ack policy, metrics; built-in idempotency store, governance and ledgers.
