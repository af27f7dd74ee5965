//! The table's schema, as versioned SQL embedded in the crate and applied in order.
//!
//! Applied versions are recorded in `<schema>.<table>_migrations`. Every run takes a
//! transaction-scoped advisory lock keyed by schema and table first, so several `qt`
//! processes starting at once apply each migration exactly once: the others wait for the
//! lock, then find nothing left to do. Each run is one transaction, so a failed migration
//! leaves nothing half applied.

use deadpool_postgres::GenericClient;

/// One schema change. Never edit a released one: add the next version.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    /// SQL with `{schema}` and `{table}` where the configured identifiers go.
    pub sql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "ledger",
    sql: include_str!("../migrations/0001_ledger.sql"),
}];

/// Where a ledger lives. Both names are plain identifiers (checked by the configuration),
/// so they are safe to put between double quotes in SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub schema: String,
    pub table: String,
}

impl Target {
    /// `"schema"."table"`.
    pub fn table(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }

    /// `"schema"."table_migrations"`.
    pub fn migrations_table(&self) -> String {
        format!("\"{}\".\"{}_migrations\"", self.schema, self.table)
    }

    /// The advisory lock key: a stable 64-bit FNV-1a hash of the qualified name, so
    /// ledgers in other tables migrate without waiting for each other.
    pub fn lock_key(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("qt-ledger-postgres:{}.{}", self.schema, self.table).bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }

    fn render(&self, sql: &str) -> String {
        sql.replace("{schema}", &self.schema).replace("{table}", &self.table)
    }
}

/// Brings the schema up to date on `client`; returns the versions applied now (empty when
/// it already was). `client` must not be inside a transaction.
pub async fn migrate(client: &mut deadpool_postgres::Client, target: &Target) -> Result<Vec<i32>, String> {
    let step =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", crate::errors::describe_pg(&e));
    let tx = client
        .transaction()
        .await
        .map_err(step("cannot begin the migration transaction"))?;
    let result = apply(&tx, target).await;
    match result {
        Ok(applied) => {
            tx.commit().await.map_err(step("cannot commit the migrations"))?;
            Ok(applied)
        }
        Err(e) => {
            // Ended here rather than left to the drop, which would hold the lock until the
            // connection is next used.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The migration run inside `tx`: lock, schema, bookkeeping table, missing migrations.
async fn apply(tx: &deadpool_postgres::Transaction<'_>, target: &Target) -> Result<Vec<i32>, String> {
    let step =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", crate::errors::describe_pg(&e));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&target.lock_key()])
        .await
        .map_err(step("cannot take the migration lock"))?;
    // Checked rather than `CREATE SCHEMA IF NOT EXISTS`, which needs CREATE on the database
    // even when the schema exists.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&target.schema])
        .await
        .map_err(step("cannot look up the schema"))?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{}\"", target.schema))
            .await
            .map_err(step(
                "cannot create the schema (create it, or grant CREATE on the database)",
            ))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
        target.migrations_table()
    ))
    .await
    .map_err(step("cannot create the migrations table"))?;
    let done: Vec<i32> = tx
        .query(&format!("SELECT version FROM {}", target.migrations_table()), &[])
        .await
        .map_err(step("cannot read the applied migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(newer) = done
        .iter()
        .copied()
        .filter(|v| !MIGRATIONS.iter().any(|m| m.version == *v))
        .max()
    {
        return Err(format!(
            "{} has migration {newer}, which this qt does not know: the table was set up by a newer qt; run that \
             version (or a newer one)",
            target.migrations_table()
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(&target.render(m.sql)).await.map_err(|e| {
            format!(
                "migration {:04}_{} failed: {}",
                m.version,
                m.name,
                crate::errors::describe_pg(&e)
            )
        })?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version, name) VALUES ($1, $2)",
                target.migrations_table()
            ),
            &[&m.version, &m.name],
        )
        .await
        .map_err(step("cannot record the migration"))?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i + 1).unwrap(), "{m:?}");
        }
    }

    #[test]
    fn rendering_puts_the_identifiers_in_place_of_every_placeholder() {
        let t = Target {
            schema: "audit".into(),
            table: "events".into(),
        };
        let sql = t.render(MIGRATIONS[0].sql);
        assert!(!sql.contains("{schema}") && !sql.contains("{table}"));
        assert!(sql.contains("CREATE TABLE \"audit\".\"events\""), "{sql}");
        assert!(sql.contains("\"events_trace_id_idx\" ON \"audit\".\"events\""), "{sql}");
    }

    #[test]
    fn lock_keys_are_fixed_per_table_and_differ_between_tables() {
        let a = Target {
            schema: "public".into(),
            table: "qt_ledger".into(),
        };
        let b = Target {
            schema: "public".into(),
            table: "qt_ledger2".into(),
        };
        assert_ne!(a.lock_key(), b.lock_key());
        // Every qt version and process must agree on it: it is a fixed function of the name.
        assert_eq!(a.lock_key(), 4539088202582106212);
    }
}
