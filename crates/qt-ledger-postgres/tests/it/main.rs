//! Tests against a real PostgreSQL: the shared one at `127.0.0.1:5432` (override with
//! `QT_TEST_POSTGRES_URL`), each test in a schema of its own, dropped at the end.

mod failures;
mod migrations;
mod outage;
mod private_pg;
mod query;
mod records;
mod support;
mod tls;
