//! `observability` and `security`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::HumanDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::agent::is_header_name;
use super::problems::{ConfigErrors, Validate, join};
use crate::secret::{Secret, SecretUrl};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `observability.admin`: the HTTP server for metrics, health, status and control.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/status`, `POST /pause` and
    /// `POST /resume` (what `qt pause` and `qt resume` use), and `POST /send` for the mock
    /// source.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address and port the admin server listens on; the default is loopback only. An
    /// outside address (e.g. `0.0.0.0:9464`, for a scraper on another host) needs `token`,
    /// or `allow_unauthenticated: true`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A bearer token the admin server requires, as `Authorization: Bearer <token>`, on
    /// `/status`, `/pause`, `/resume` and `/send` (on every endpoint with `protect_all`).
    /// `qt pause`, `qt resume` and `qt send` read it from the same configuration and send
    /// it. Give it through an environment variable (`${QT_ADMIN_TOKEN}`); it is never
    /// printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Require the token on `/metrics`, `/healthz` and `/readyz` too. Off, they stay open
    /// for probes and scrapers that cannot send a token.
    #[serde(default)]
    pub protect_all: bool,
    /// Serve on an address other than loopback without a token. Anyone who can reach the
    /// address can then pause and resume the trigger and read its status: set it only where
    /// the network itself keeps others out.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: default_true(),
            listen: default_listen(),
            token: None,
            protect_all: false,
            allow_unauthenticated: false,
        }
    }
}

impl Validate for AdminConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if !self.enabled {
            return;
        }
        match &self.token {
            Some(token) if token.expose().trim().is_empty() => {
                problems.push(join(path, "token"), "is empty; set a token, or remove the field");
            }
            // An Authorization header holds visible ASCII only (RFC 9110 field values, as
            // every client sends them).
            Some(token) if !token.expose().bytes().all(|b| b.is_ascii_graphic()) => {
                problems.push(
                    join(path, "token"),
                    "holds a space, a control character or a non-ASCII character; a bearer token is visible ASCII only",
                );
            }
            Some(_) => {}
            None if self.protect_all => problems.push(
                join(path, "protect_all"),
                "needs observability.admin.token: without a token there is nothing to require",
            ),
            None if !self.allow_unauthenticated && !self.listen.ip().to_canonical().is_loopback() => {
                problems.push(
                    join(path, "listen"),
                    format!(
                        "{} is not a loopback address and the admin server has no token: anyone who can reach it could pause the trigger and read its status. Set observability.admin.token (from an environment variable, e.g. \"${{QT_ADMIN_TOKEN}}\"), listen on 127.0.0.1, or set observability.admin.allow_unauthenticated: true if the network keeps others out",
                        self.listen
                    ),
                );
            }
            None => {}
        }
    }
}

/// `observability.log`: what is logged, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// How each line is written.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `qt_engine=debug,info`; the `RUST_LOG`
    /// environment variable overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_level(),
        }
    }
}

/// `observability`: the admin server, logs and traces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// The HTTP server for `/metrics`, `/healthz`, `/readyz`, `/status`, and `/pause` and
    /// `/resume`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// OpenTelemetry traces: a span per message, exported over OTLP.
    #[serde(default)]
    pub tracing: TracingConfig,
}

impl Validate for ObservabilityConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        self.admin.validate(&join(path, "admin"), problems);
        self.tracing.validate(&join(path, "tracing"), problems);
    }
}

/// How spans are sent to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP over HTTP with protobuf bodies, POSTed to `endpoint`.
    #[default]
    Http,
    /// OTLP over gRPC, to the collector at `endpoint`.
    Grpc,
}

/// `observability.tracing`: a span per message (and per step of it), continuing the producer's
/// W3C trace context, exported over OTLP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Make and export spans (see operations.md, *Traces*). Off, no span is made at all.
    #[serde(default)]
    pub enabled: bool,
    /// Where spans go, `http://` or `https://`. `http`: the URL spans are POSTed to, path
    /// included; `grpc`: the collector's address. Credentials in it are masked when printed.
    /// Unset: `http://127.0.0.1:4318/v1/traces` (`http`), `http://127.0.0.1:4317` (`grpc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SecretUrl>,
    /// How spans are sent to the collector.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, such as a collector's API key. Values
    /// are secrets: never printed. With `http`, `OTEL_EXPORTER_OTLP_HEADERS` in the
    /// environment overrides a header of the same name; with `grpc`, names ending in `-bin`
    /// are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Share of traces kept, from 0 to 1, for messages that arrive without a sampling
    /// decision; a message whose producer sent a `traceparent` follows its sampled flag
    /// (parent-based sampling).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` resource attribute spans carry.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Further resource attributes, such as `deployment.environment: prod`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
    /// How long one export to the collector may take.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// Most finished spans waiting for export. When the collector is slow or down, new
    /// messages stop being traced once the queue is three quarters full (counted in
    /// `qt_trace_messages_shed_total`), and spans that do not fit are dropped (counted in
    /// `qt_trace_spans_dropped_total`), rather than slowing the pipeline.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// PEM CA certificates to trust for an `https://` endpoint besides the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "qt".to_owned()
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_queue_size() -> usize {
    65_536
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: None,
            protocol: OtlpProtocol::default(),
            headers: BTreeMap::new(),
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
            resource_attributes: BTreeMap::new(),
            timeout: default_export_timeout(),
            max_queue_size: default_max_queue_size(),
            ca_file: None,
        }
    }
}

impl TracingConfig {
    /// The endpoint spans are exported to: the configured one or the protocol's default.
    pub fn effective_endpoint(&self) -> SecretUrl {
        self.endpoint.clone().unwrap_or_else(|| {
            SecretUrl::new(match self.protocol {
                OtlpProtocol::Http => "http://127.0.0.1:4318/v1/traces",
                OtlpProtocol::Grpc => "http://127.0.0.1:4317",
            })
        })
    }

    /// Whether spans would leave the machine unencrypted (refused under
    /// `security.require_tls`).
    pub fn is_plaintext(&self) -> bool {
        self.enabled && self.effective_endpoint().scheme().as_deref() == Some("http")
    }
}

impl Validate for TracingConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if let Some(endpoint) = &self.endpoint {
            let at = join(path, "endpoint");
            match url::Url::parse(endpoint.expose()) {
                Err(e) => problems.push(at, format!("not a URL ({e}): {endpoint}")),
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    problems.push(at, format!("must be http:// or https://, not {}://", u.scheme()));
                }
                Ok(u) if u.host().is_none() => problems.push(at, format!("has no host: {endpoint}")),
                Ok(u) if self.protocol == OtlpProtocol::Http && matches!(u.path(), "" | "/") => problems.push(
                    at,
                    format!("has no path: OTLP/HTTP spans are POSTed to the full URL, usually ending in /v1/traces ({endpoint})"),
                ),
                Ok(_) => {}
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(
                join(path, "sample_ratio"),
                format!(
                    "{} is not between 0 and 1 (the share of traces kept)",
                    self.sample_ratio
                ),
            );
        }
        if self.service_name.trim().is_empty() {
            problems.push(join(path, "service_name"), "must not be empty");
        }
        for (name, value) in &self.headers {
            let at = join(&join(path, "headers"), name);
            if !is_header_name(name) {
                problems.push(at, "not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)");
            } else if self.protocol == OtlpProtocol::Grpc && name.to_ascii_lowercase().ends_with("-bin") {
                problems.push(
                    at,
                    "gRPC metadata ending in -bin is binary; only text metadata can be set here",
                );
            } else if value.expose().bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                problems.push(at, "the value holds control characters");
            }
        }
        if self.timeout.is_zero() {
            problems.push(join(path, "timeout"), "must be longer than 0s");
        }
        if self.max_queue_size == 0 {
            problems.push(join(path, "max_queue_size"), "must be at least 1");
        }
        if self.ca_file.is_some() && self.effective_endpoint().scheme().as_deref() != Some("https") {
            problems.push(join(path, "ca_file"), "set, but the endpoint is not https://");
        }
    }
}

/// `security`: settings that hold across every connection qt makes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Refuse every plaintext endpoint: broker, Redis store, PostgreSQL ledger, trace
    /// collector and `http` agent targets must all use TLS.
    #[serde(default)]
    pub require_tls: bool,
}
