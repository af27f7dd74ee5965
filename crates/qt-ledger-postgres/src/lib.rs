//! The PostgreSQL audit ledger for qt (`ledger: {type: postgres}`).
//!
//! Every record becomes one row of a table (`public.qt_ledger` by default) with one column
//! per [`LedgerRecord`](qt_core::LedgerRecord) field, indexed for the questions operators
//! ask: by tenant, by status, by message id, by dedup key and by trace id, each over time.
//! Several `qt` processes can share one table.
//!
//! # Durability
//!
//! [`record_batch`](qt_core::Ledger::record_batch) writes the whole batch in **one
//! transaction and commits before it returns**; the engine acks the batch's messages only
//! after that. A batch is stored entirely or not at all: when PostgreSQL fails, the write
//! returns an error naming the ledger and the reason, the messages are not acked (the broker
//! redelivers them), and [`health`](qt_core::Ledger::health) reports the ledger unhealthy
//! until a write succeeds again. The pool replaces dead connections by itself, so a
//! restarted PostgreSQL is used again without restarting `qt`.
//!
//! # Why tokio-postgres and binary COPY
//!
//! The ledger is on every message's path, so it is built for throughput:
//!
//! - A batch goes in with **`COPY ... FROM STDIN (FORMAT binary)`**
//!   ([`BinaryCopyInWriter`](tokio_postgres::binary_copy::BinaryCopyInWriter)): rows stream
//!   in PostgreSQL's binary format, with no SQL text to build or parse per row and one
//!   statement for the whole batch, where a multi-row `INSERT` pays parsing and a parameter
//!   limit (65535) and row-by-row `INSERT`s pay a round trip each.
//! - **tokio-postgres** speaks the protocol asynchronously and **pipelines**: `BEGIN`, the
//!   COPY and `COMMIT` are sent without waiting for replies where the protocol allows, and
//!   prepared statements are cached per connection, so a batch costs a few round trips
//!   whatever its size. It supports binary COPY (sqlx does not expose binary COPY in), and
//!   needs no C library (unlike libpq-based clients).
//! - **deadpool-postgres** pools the connections: each batch borrows one for its
//!   transaction; `pool_size` (default 4) bounds the connections a process holds.
//! - TLS is **rustls** (the workspace's TLS stack) through tokio-postgres-rustls.
//!
//! # Schema and migrations
//!
//! The table's schema is versioned SQL embedded in this crate (`migrations/0001_ledger.sql`
//! ...), applied at start by [`PostgresLedger::connect`] or on demand by
//! [`PostgresLedger::migrate`], and tracked in `<schema>.<table>_migrations`. Migrations
//! run in one transaction under a PostgreSQL advisory lock, so processes starting together
//! are safe. The schema is created if missing (which needs `CREATE` on the database); the
//! database user needs `CREATE` on the schema for the first run, and `INSERT`, `SELECT` (and
//! `DELETE` with retention) on the table afterwards.
//!
//! # Retention
//!
//! With `ledger.retention` set, a background task deletes older records once a minute in
//! bounded chunks: see [`retention`] for the cost.
//!
//! # TLS
//!
//! `ledger.tls` is `disable` (the default), `require` (encrypted, server not verified) or
//! `verify-full` (encrypted, the certificate chains to `ca_file` or the system roots and
//! names the host). `sslmode` in the URL is refused so that one field says it;
//! `security.require_tls` refuses `disable`. A client certificate
//! (`client_cert_file`/`client_key_file`) can be presented with either TLS mode.
//!
//! # Credentials
//!
//! The URL's password never appears in `Debug`, `Display`, errors or logs: the URL prints
//! masked and driver messages are scrubbed of the password before they are wrapped.

mod connection;
mod errors;
mod ledger;
pub mod migrations;
pub mod retention;
mod row;

pub use errors::PostgresLedgerError;
pub use ledger::{PostgresLedger, StoredRecord};
