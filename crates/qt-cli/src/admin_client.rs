//! The admin server's client: how `qt pause`, `qt resume` and (for the mock source) `qt send`
//! reach the running `qt run` of the same configuration, with its token.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use qt_core::Secret;
use qt_core::config::Config;
use reqwest::StatusCode;

/// Longer than any admin request takes: a pause waits for the source to pause, and a
/// `/send` body is at most a few MiB on loopback.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin server of the `qt run` a configuration describes.
pub struct AdminClient {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl AdminClient {
    /// The client for `config`'s admin server; `command` (`qt pause`...) names the command
    /// in the errors for a configuration it cannot reach.
    pub fn for_config(config: &Config, command: &str) -> anyhow::Result<Self> {
        let admin = &config.observability.admin;
        if !admin.enabled {
            bail!(
                "{command} reaches the running `qt run` through its admin server, which this configuration disables (observability.admin.enabled: false)"
            );
        }
        if admin.listen.port() == 0 {
            bail!(
                "observability.admin.listen is {}: with port 0 `qt run` listens on a free port chosen at start, which {command} cannot know; give a fixed port",
                admin.listen
            );
        }
        // A server on every address is reached on this host's loopback.
        let ip = match admin.listen.ip() {
            ip if !ip.is_unspecified() => ip,
            ip if ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
            _ => Ipv6Addr::LOCALHOST.into(),
        };
        Ok(Self {
            base: format!("http://{}", SocketAddr::new(ip, admin.listen.port())),
            token: admin.token.clone(),
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .context("cannot set up an HTTP client")?,
        })
    }

    /// `POST path`, with `body` as JSON if given; the answer's JSON on success.
    pub async fn post(&self, path: &str, body: Option<&serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => bail!(
                "nothing answers at {url}: is `qt run` running with this configuration (observability.admin.listen)?"
            ),
            Err(e) if e.is_timeout() => bail!("{url} did not answer within {REQUEST_TIMEOUT:?}"),
            Err(e) => return Err(e).with_context(|| format!("cannot reach the running `qt run` at {url}")),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        match status {
            s if s.is_success() => serde_json::from_str(text)
                .with_context(|| format!("{url} answered with something other than JSON: {text}")),
            StatusCode::UNAUTHORIZED => bail!(
                "{url} refused the request: {text}. Run this command with the configuration of that `qt run`, and the same value for its token's variable"
            ),
            StatusCode::NOT_FOUND => bail!("{url} is not a qt admin endpoint (404); is it a `qt run` of this version?"),
            _ => bail!("{url} refused the request ({status}): {text}"),
        }
    }
}
