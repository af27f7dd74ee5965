//! `agent`: the targets events are delivered to and the routes that pick one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::{HumanDuration, default_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate, join};
use crate::secret::{Secret, SecretUrl};

/// A program run once per message: the event as JSON on stdin; exit 0 is success (stdout
/// may carry `{"run_id": "...", "llm_calls": N}`), exit 75 (EX_TEMPFAIL) is a retryable
/// failure, any other exit is permanent; running past `timeout` counts as a timeout and ends
/// the program's process group (SIGTERM, then SIGKILL after a grace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandTarget {
    /// Program to run: a path, or a name looked up in `PATH`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub program: PathBuf,
    /// Arguments passed to the program, as given (no shell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// How long one run may take. Past it the run is a timeout and the program's process
    /// group is sent SIGTERM, then SIGKILL 2 s later.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// Extra environment variables, beside the `QT_*` ones qt sets. Values are secrets:
    /// never printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Secret>,
    /// Directory the program runs in. Unset: qt's own working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// An HTTP endpoint called once per message: the event as a JSON body (the document a
/// `command` target reads on stdin) with qt's headers. 2xx is success (the body may carry
/// `{"run_id": "...", "llm_calls": N}`); 408 is a timeout, 429 rate-limited, 425, 500, 502,
/// 503 and 504 retryable, all honouring `Retry-After`; connection errors are retryable,
/// running past `timeout` is a timeout; every other status (3xx included: redirects are not
/// followed) is permanent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// `http://` or `https://` URL to call; `http://` is refused under
    /// `security.require_tls`. Credentials in it are masked when printed and sent as basic
    /// auth.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub url: SecretUrl,
    /// `POST`, `PUT` or `PATCH`: the event goes in the body.
    #[serde(default = "default_method")]
    pub method: String,
    /// How long one call may take, from sending the request to the end of the response body
    /// (waiting for a `max_concurrency` slot is not counted). Past it the call is a timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    pub timeout: Duration,
    /// Extra request headers. Values are treated as secrets: never printed, and masked in
    /// errors. The headers qt sets itself (`content-type`, `idempotency-key`, `traceparent`,
    /// `tracestate`, `x-qt-*`) cannot be set here; `authorization` only when `auth` is not set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// The `authorization` header: `{bearer: TOKEN}` or `{basic: {username, password}}`;
    /// token and password are secrets. Unset: none is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// Custom CA and client certificate (mTLS) for an `https://` URL.
    #[serde(default, skip_serializing_if = "HttpTls::is_empty")]
    pub tls: HttpTls,
    /// Most calls in flight to this target at once, at least 1. `processing.concurrency`
    /// bounds every run, so a value above it has no effect. Unset: no bound of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// How much of a response body is read. A 2xx body longer than this is not parsed (the run
    /// still succeeds, with no run id, LLM call count or output); a failure's error shows at
    /// most the first 512 bytes. Bytes, at least 1.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Which HTTP version to speak. A server that does not speak a forced version fails
    /// every call (retryable).
    #[serde(default, skip_serializing_if = "HttpVersion::is_auto")]
    #[schemars(transform = default_of::<HttpVersion>)]
    pub http_version: HttpVersion,
}

/// The HTTP version an `http` target speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    /// HTTP/1.1, or HTTP/2 when an `https://` server offers it during the TLS handshake (ALPN).
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: negotiated by ALPN over `https://`; over `http://` spoken from the first
    /// byte (prior knowledge, "h2c"), which the server must support.
    Http2,
}

impl HttpVersion {
    /// Whether this is the default, [`HttpVersion::Auto`].
    pub fn is_auto(&self) -> bool {
        *self == HttpVersion::Auto
    }
}

/// How an `http` target authenticates: the `authorization` header it sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    /// `authorization: Bearer TOKEN`. The token is a secret.
    Bearer(Secret),
    /// `authorization: Basic base64(username:password)`.
    Basic(BasicAuth),
}

/// HTTP basic credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name; must not contain `:`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub username: String,
    /// Password; a secret, never printed.
    #[serde(default)]
    pub password: Secret,
}

/// TLS settings of an `http` target. The system's web PKI roots are trusted as well as `ca_file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// PEM file of CA certificates to trust besides the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one (mTLS). Needs
    /// `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl HttpTls {
    /// Whether none of the files is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }
}

impl HttpTarget {
    /// Whether the URL is plain `http://` (refused under `security.require_tls`).
    pub fn is_plaintext(&self) -> bool {
        self.url.scheme().as_deref() == Some("http")
    }

    /// Every secret value this target holds, for masking them in text it produces.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out: Vec<String> = self.headers.values().map(|v| v.expose().to_owned()).collect();
        match &self.auth {
            Some(HttpAuth::Bearer(t)) => out.push(t.expose().to_owned()),
            Some(HttpAuth::Basic(b)) => out.push(b.password.expose().to_owned()),
            None => {}
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_max_response_bytes() -> usize {
    64 * 1024
}

/// The methods an `http` target may use: each carries the event as its body.
pub const HTTP_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

/// Header names qt sets on every call to an `http` target.
fn set_by_qt(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "content-type" | "idempotency-key" | "traceparent" | "tracestate"
    ) || name.starts_with("x-qt-")
}

/// An HTTP header name: one or more token characters (RFC 9110).
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Validate for HttpTarget {
    fn validate(&self, at: &str, problems: &mut ConfigErrors) {
        let url_at = join(at, "url");
        if self.url.expose().is_empty() {
            problems.push(url_at, "required (e.g. https://agents.internal/run)");
        } else {
            match url::Url::parse(self.url.expose()) {
                Err(e) => problems.push(url_at, format!("not a URL ({e}): {}", self.url)),
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    problems.push(url_at, format!("must be http:// or https://, not {}://", u.scheme()));
                }
                Ok(u) if u.host().is_none() => problems.push(url_at, format!("has no host: {}", self.url)),
                Ok(_) => {}
            }
        }
        if !HTTP_METHODS.contains(&self.method.as_str()) {
            problems.push(
                join(at, "method"),
                format!(
                    "{:?} is not one of {} (the event is sent as the body)",
                    self.method,
                    HTTP_METHODS.join(", ")
                ),
            );
        }
        if self.timeout.is_zero() {
            problems.push(join(at, "timeout"), "must be longer than 0s");
        }
        for name in self.headers.keys() {
            let h = join(&join(at, "headers"), name);
            if !is_header_name(name) {
                problems.push(h, "not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)");
            } else if set_by_qt(name) {
                problems.push(
                    h,
                    "set by qt on every call (content-type, idempotency-key, traceparent, tracestate, x-qt-*); remove it",
                );
            } else if name.eq_ignore_ascii_case("authorization") && self.auth.is_some() {
                problems.push(h, "conflicts with auth, which sets authorization; keep one of them");
            }
        }
        match &self.auth {
            Some(HttpAuth::Bearer(t)) if t.is_empty() => {
                problems.push(join(at, "auth.bearer"), "must not be empty");
            }
            Some(HttpAuth::Basic(b)) => {
                if b.username.is_empty() {
                    problems.push(join(at, "auth.basic.username"), "required");
                } else if b.username.contains(':') {
                    problems.push(
                        join(at, "auth.basic.username"),
                        "must not contain ':' (basic auth separates it from the password with ':')",
                    );
                }
            }
            _ => {}
        }
        let tls = &self.tls;
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            let missing = if tls.client_cert_file.is_some() {
                "client_key_file"
            } else {
                "client_cert_file"
            };
            problems.push(
                join(at, &format!("tls.{missing}")),
                "required: client_cert_file and client_key_file go together",
            );
        }
        if !tls.is_empty() && self.is_plaintext() {
            problems.push(
                join(at, "tls"),
                format!("set, but the url is plain http:// ({}); use https://", self.url),
            );
        }
        if self.max_concurrency == Some(0) {
            problems.push(
                join(at, "max_concurrency"),
                "must be at least 1 (leave it out for no bound of its own)",
            );
        }
        if self.max_response_bytes == 0 {
            problems.push(join(at, "max_response_bytes"), "must be at least 1");
        }
    }
}

/// Where events go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TargetConfig {
    /// A program run once per message.
    Command(CommandTarget),
    /// An HTTP endpoint called once per message.
    Http(HttpTarget),
    /// Logs the event and succeeds: for trying configurations out.
    Log,
}

/// Sends events whose name matches `event` to `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob on the event name, e.g. `order.*`, or `*` for every event.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub event: String,
    /// Name of a target in `agent.targets`.
    #[serde(default)]
    #[schemars(extend("x-required" = true))]
    pub target: String,
    /// Narrows what the agent may use (requirement 4.4), passed as `QT_FOCUS` / the event's
    /// `focus`. Unset: `agent.focus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
}

/// `agent`: where events are delivered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Targets by name, at least one; `type` picks `command`, `http` or `log` (logs the
    /// event and succeeds).
    #[serde(default)]
    #[schemars(extend("x-required" = true, "minProperties" = 1))]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Routes tried in order; the first whose glob matches the event name picks the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Target for events no route matches. Unset: the only target when there is exactly one
    /// and no routes; otherwise none, and such events are unrouted (`processing.on_unrouted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target: Option<String>,
    /// Focus for events whose route sets none (the seed spec's `focus`). Unset: no focus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
}

impl AgentConfig {
    /// The target unrouted events go to, applying the single-target default.
    pub fn effective_default_target(&self) -> Option<&str> {
        if let Some(t) = &self.default_target {
            return Some(t);
        }
        if self.routes.is_empty() && self.targets.len() == 1 {
            return self.targets.keys().next().map(String::as_str);
        }
        None
    }
}

impl Validate for AgentConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        if self.targets.is_empty() {
            problems.push(
                join(path, "targets"),
                "at least one target is required (e.g. `default: {type: log}`)",
            );
        }
        for (name, t) in &self.targets {
            let at = join(&join(path, "targets"), name);
            if let TargetConfig::Http(h) = t {
                h.validate(&at, problems);
            }
            if let TargetConfig::Command(c) = t {
                if c.program.as_os_str().is_empty() {
                    problems.push(join(&at, "program"), "required");
                }
                if c.timeout.is_zero() {
                    problems.push(join(&at, "timeout"), "must be longer than 0s");
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = join(path, &format!("routes[{i}]"));
            if !self.targets.contains_key(&r.target) {
                problems.push(
                    join(&at, "target"),
                    format!("no target named {:?} in {}", r.target, join(path, "targets")),
                );
            }
            if r.event.is_empty() {
                problems.push(join(&at, "event"), "required (a glob such as `order.*` or `*`)");
            } else if let Err(e) = globset::Glob::new(&r.event) {
                problems.push(join(&at, "event"), format!("invalid glob {:?}: {}", r.event, e.kind()));
            }
        }
        if let Some(t) = &self.default_target
            && !self.targets.contains_key(t)
        {
            problems.push(
                join(path, "default_target"),
                format!("no target named {t:?} in {}", join(path, "targets")),
            );
        }
    }
}
