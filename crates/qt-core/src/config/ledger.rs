//! `ledger`: where audit records go.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::secret::SecretUrl;

/// `ledger` with `type: jsonl`: records appended to a local file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlLedgerConfig {
    /// File records are appended to, one JSON object per line; created if missing.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub path: PathBuf,
    /// Fsync each batch (with the batches written beside it) before acking, so records
    /// survive a machine crash, not just a process crash. `false` is faster and loses the last
    /// records on a machine crash or power loss.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
}

fn default_fsync() -> bool {
    true
}

/// How the PostgreSQL connection is encrypted. It is set here rather than with `sslmode`
/// in the URL (which is refused), so one field says it and `security.require_tls` can check
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresTls {
    /// Plaintext, for a database on the same host or a private network; refused under
    /// `security.require_tls`.
    #[default]
    Disable,
    /// Encrypted, but the server's certificate is not checked: protects against passive
    /// eavesdropping only, not against an impostor server (libpq's `sslmode=require`).
    Require,
    /// Encrypted, the certificate chains to `ca_file` (or the system roots) and names the
    /// URL's host (libpq's `sslmode=verify-full`).
    VerifyFull,
}

/// `ledger` with `type: postgres`: records are written to a PostgreSQL table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresLedgerConfig {
    /// `postgres://user:password@host:5432/database`. The password is masked whenever the
    /// URL is printed; prefer `${PG_PASSWORD}`-style substitution over writing it in the
    /// file. Encryption is set by `tls`, not by `sslmode` in the URL (which is refused).
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub url: SecretUrl,
    /// How the connection is encrypted.
    #[serde(default)]
    pub tls: PostgresTls,
    /// Connections in the pool. Each batch of records takes one connection for one
    /// transaction, so a few connections carry a high record rate. 1 to 64.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Schema holding the ledger table, created if missing. Letters, digits and `_`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Table the records go to; its migrations are tracked in `<table>_migrations` in the
    /// same schema. Letters, digits and `_`, at most 40 characters.
    #[serde(default = "default_table")]
    pub table: String,
    /// Bound on opening one connection (TCP, TLS handshake, authentication).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub connect_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every statement, and the bound on waiting for a
    /// pooled connection. A batch that takes longer fails (and is not acked).
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub statement_timeout: Duration,
    /// PEM CA bundle trusted with `tls: verify-full` instead of the system roots (a private
    /// CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that authenticate clients by certificate
    /// (`hostssl ... cert` in `pg_hba.conf`). Needs `client_key_file` and `tls` other than
    /// `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Records whose `finished_at` is older than this (at least `1m`, e.g. `90d`) are
    /// deleted by a background task. Unset: records are kept forever.
    ///
    /// The task runs at start and then once a minute, in chunks of at most 10000 rows per
    /// statement and 100000 rows per minute, so a large backlog is worked off gradually
    /// without long locks. Each chunk is an index range scan on `finished_at` plus the
    /// deletes (which leave dead rows for autovacuum).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>")]
    pub retention: Option<Duration>,
}

fn default_pool_size() -> usize {
    4
}
fn default_schema() -> String {
    "public".to_owned()
}
fn default_table() -> String {
    "qt_ledger".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Largest `pool_size`.
pub const POSTGRES_MAX_POOL_SIZE: usize = 64;
/// Longest `table` name: the index names derived from it must fit PostgreSQL's 63 bytes.
pub const POSTGRES_MAX_TABLE_LEN: usize = 40;
/// Longest `schema` name (PostgreSQL's identifier limit).
pub const POSTGRES_MAX_SCHEMA_LEN: usize = 63;

impl PostgresLedgerConfig {
    /// A ledger at `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            tls: PostgresTls::default(),
            pool_size: default_pool_size(),
            schema: default_schema(),
            table: default_table(),
            connect_timeout: default_connect_timeout(),
            statement_timeout: default_statement_timeout(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            retention: None,
        }
    }

    /// Whether the connection is encrypted (`tls` is not `disable`); `security.require_tls`
    /// refuses a ledger for which this is false.
    pub fn is_tls(&self) -> bool {
        self.tls != PostgresTls::Disable
    }
}

/// Whether `name` is a plain SQL identifier: a letter or `_`, then letters, digits and `_`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_identifier(name: &str, max_len: usize, at: String, problems: &mut ConfigErrors) {
    if name.is_empty() {
        problems.push(at, "required");
    } else if !is_identifier(name) {
        problems.push(
            at,
            format!("{name:?} is not a plain identifier: use letters, digits and _, starting with a letter or _"),
        );
    } else if name.len() > max_len {
        problems.push(at, format!("{name:?} is longer than {max_len} characters"));
    }
}

impl Validate for PostgresLedgerConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        match url::Url::parse(self.url.expose()) {
            Ok(u) => {
                let scheme = u.scheme().to_ascii_lowercase();
                if scheme != "postgres" && scheme != "postgresql" {
                    problems.push(
                        join(path, "url"),
                        format!("scheme must be postgres:// or postgresql://, got {scheme}://"),
                    );
                } else if u.host_str().is_none_or(str::is_empty) {
                    problems.push(
                        join(path, "url"),
                        format!(
                            "{} names no host (postgres://user:password@host:5432/database)",
                            self.url
                        ),
                    );
                }
                if u.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("sslmode")) {
                    problems.push(
                        join(path, "url"),
                        "sslmode in the URL is not used; set ledger.tls (disable, require or verify-full) instead",
                    );
                }
            }
            Err(_) if self.url.expose().trim().is_empty() => problems.push(join(path, "url"), "required"),
            Err(_) => problems.push(join(path, "url"), format!("not a URL: {}", self.url)),
        }
        if self.pool_size == 0 || self.pool_size > POSTGRES_MAX_POOL_SIZE {
            problems.push(
                join(path, "pool_size"),
                format!("must be between 1 and {POSTGRES_MAX_POOL_SIZE}, got {}", self.pool_size),
            );
        }
        check_identifier(&self.schema, POSTGRES_MAX_SCHEMA_LEN, join(path, "schema"), problems);
        check_identifier(&self.table, POSTGRES_MAX_TABLE_LEN, join(path, "table"), problems);
        if self.connect_timeout.is_zero() {
            problems.push(join(path, "connect_timeout"), "must be longer than 0s");
        }
        if self.statement_timeout < Duration::from_millis(1) {
            problems.push(join(path, "statement_timeout"), "must be at least 1ms");
        }
        if self.retention.is_some_and(|r| r < Duration::from_secs(60)) {
            problems.push(
                join(path, "retention"),
                "must be at least 1m (records younger than that may not even be written yet)",
            );
        }
        if self.ca_file.is_some() && self.tls != PostgresTls::VerifyFull {
            problems.push(
                join(path, "ca_file"),
                "only used with tls: verify-full (tls: require does not check the server certificate)",
            );
        }
        if !self.is_tls() {
            for (field, value) in [
                ("client_cert_file", &self.client_cert_file),
                ("client_key_file", &self.client_key_file),
            ] {
                if value.is_some() {
                    problems.push(join(path, field), "only used with tls: require or verify-full");
                }
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => problems.push(join(path, "client_key_file"), "required with client_cert_file"),
            (None, Some(_)) => problems.push(join(path, "client_cert_file"), "required with client_key_file"),
            _ => {}
        }
    }
}

/// `ledger`: where audit records go; `type` picks the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerConfig {
    /// Kept in memory (tests, benchmarks); lost on exit.
    Memory,
    /// Appended to a local file and flushed before each ack.
    Jsonl(JsonlLedgerConfig),
    /// Written to a PostgreSQL table, committed before each ack.
    Postgres(PostgresLedgerConfig),
}

impl LedgerConfig {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerConfig::Memory => "memory",
            LedgerConfig::Jsonl(_) => "jsonl",
            LedgerConfig::Postgres(_) => "postgres",
        }
    }
}

impl Default for LedgerConfig {
    /// A JSONL file in the working directory, fsynced: durable by default.
    fn default() -> Self {
        LedgerConfig::Jsonl(JsonlLedgerConfig {
            path: PathBuf::from("qt-ledger.jsonl"),
            fsync: default_fsync(),
        })
    }
}

impl Validate for LedgerConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        match self {
            LedgerConfig::Memory => {}
            LedgerConfig::Jsonl(j) => {
                if j.path.as_os_str().is_empty() {
                    problems.push(join(path, "path"), "required");
                }
            }
            LedgerConfig::Postgres(p) => p.validate(path, problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::problems_found;

    #[test]
    fn defaults_are_valid() {
        assert!(problems_found(&PostgresLedgerConfig::new("postgres://qt@127.0.0.1:5432/qt"), "ledger").is_empty());
        let mut tls = PostgresLedgerConfig::new("postgresql://qt:pw@db.example.com/qt");
        tls.tls = PostgresTls::VerifyFull;
        tls.ca_file = Some("ca.pem".into());
        tls.client_cert_file = Some("client.pem".into());
        tls.client_key_file = Some("client.key".into());
        tls.retention = Some(Duration::from_secs(30 * 86400));
        assert!(
            problems_found(&tls, "ledger").is_empty(),
            "{:?}",
            problems_found(&tls, "ledger")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut cfg = PostgresLedgerConfig::new("postgres://qt@127.0.0.1/qt?sslmode=require");
        cfg.pool_size = 0;
        cfg.schema = "audit-log".into();
        cfg.table = "x".repeat(41);
        cfg.connect_timeout = Duration::ZERO;
        cfg.statement_timeout = Duration::ZERO;
        cfg.retention = Some(Duration::from_secs(1));
        cfg.ca_file = Some("ca.pem".into());
        cfg.client_cert_file = Some("client.pem".into());
        let found = problems_found(&cfg, "ledger");
        for expected in [
            "ledger.url: sslmode in the URL is not used; set ledger.tls",
            "ledger.pool_size: must be between 1 and 64, got 0",
            "ledger.schema: \"audit-log\" is not a plain identifier",
            "ledger.table: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" is longer than 40 characters",
            "ledger.connect_timeout: must be longer than 0s",
            "ledger.statement_timeout: must be at least 1ms",
            "ledger.retention: must be at least 1m",
            "ledger.ca_file: only used with tls: verify-full",
            "ledger.client_cert_file: only used with tls: require or verify-full",
            "ledger.client_key_file: required with client_cert_file",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), 10, "{found:#?}");
    }

    #[test]
    fn url_problems_are_named_without_the_password() {
        assert_eq!(
            problems_found(&PostgresLedgerConfig::new(""), "ledger"),
            ["ledger.url: required"]
        );
        assert_eq!(
            problems_found(&PostgresLedgerConfig::new("mysql://u:hunter2@h/db"), "ledger"),
            ["ledger.url: scheme must be postgres:// or postgresql://, got mysql://"]
        );
        let no_host = problems_found(&PostgresLedgerConfig::new("postgres:///db"), "ledger");
        assert_eq!(
            no_host,
            ["ledger.url: postgres:///db names no host (postgres://user:password@host:5432/database)"]
        );
        let no_host = problems_found(&PostgresLedgerConfig::new("postgres://u:hunter2@/db"), "ledger");
        assert_eq!(no_host.len(), 1, "{no_host:?}");
        assert!(no_host[0].starts_with("ledger.url: not a URL"), "{no_host:?}");
        assert!(!no_host[0].contains("hunter2"), "{no_host:?}");
    }

    #[test]
    fn identifiers_allow_letters_digits_and_underscores_only() {
        for good in ["public", "_audit", "Ledger_2026"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "2fast", "a b", "a;drop", "\"q\"", "a.b", "é"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn password_never_prints() {
        let cfg = PostgresLedgerConfig::new("postgres://qt:pgpass4711@127.0.0.1:5432/qt");
        for out in [format!("{cfg:?}"), serde_json::to_string(&cfg).expect("serializes")] {
            assert!(!out.contains("pgpass4711"), "{out}");
            assert!(out.contains("127.0.0.1:5432"), "{out}");
        }
    }

    #[test]
    fn yaml_reads_tls_modes_and_durations() {
        let cfg: LedgerConfig = serde_yaml_ng::from_str(
            "type: postgres\nurl: postgres://qt@db/qt\ntls: verify-full\nstatement_timeout: 3s\nretention: 30d\n",
        )
        .expect("parses");
        let LedgerConfig::Postgres(p) = cfg else {
            panic!("not postgres: {cfg:?}")
        };
        assert_eq!(p.tls, PostgresTls::VerifyFull);
        assert!(p.is_tls());
        assert_eq!(p.statement_timeout, Duration::from_secs(3));
        assert_eq!(p.retention, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(
            (p.pool_size, p.schema.as_str(), p.table.as_str()),
            (4, "public", "qt_ledger")
        );
        let unknown = serde_yaml_ng::from_str::<LedgerConfig>("type: postgres\nurl: postgres://db/qt\nsslmode: x\n");
        assert!(unknown.is_err());
    }
}
