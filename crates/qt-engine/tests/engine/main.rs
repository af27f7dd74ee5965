//! Engine behaviour against the mock adapter: the outcome table, retries, dedup,
//! governance, ordering, lifecycle, observability. One test binary, one module per theme.

mod support;

mod dedup;
mod lifecycle;
mod observability;
mod outcomes;
mod panics;
mod routing;
mod settling;
