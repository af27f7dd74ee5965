//! Where and how to connect: the parsed URL, TLS material and the connection handshake.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connect, Connection, ConnectionProperties};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AdapterError, AdapterSettings};

use qt_core::redact::Redactor;

/// Everything needed to open a connection, with the credentials kept out of `Debug`.
#[derive(Clone)]
pub(crate) struct Endpoint {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
    masked: String,
    connect_timeout: Duration,
    connection_name: String,
    pub(crate) redactor: Redactor,
}

impl Endpoint {
    /// Checks the URL and reads the TLS files. Fails on a plaintext URL when
    /// `settings.require_tls` is set.
    pub(crate) fn new(cfg: &RabbitMqSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        let redactor = crate::redact::for_url(cfg.url.expose());
        let masked = redactor.redact(cfg.url.masked());
        let uri: AMQPUri = cfg.url.expose().parse().map_err(|e: String| AdapterError::Config {
            field: "source.url".into(),
            reason: format!(
                "{} is not an AMQP URL ({}); expected amqp://user:pass@host:5672/vhost or amqps://",
                masked,
                redactor.redact(e)
            ),
        })?;
        let tls_url = matches!(uri.scheme, AMQPScheme::AMQPS);
        if settings.require_tls && !tls_url {
            return Err(AdapterError::Config {
                field: "source.url".into(),
                reason: format!("security.require_tls is set but {masked} is not TLS; use amqps://"),
            });
        }
        let mut tls = OwnedTLSConfig::default();
        if let Some(path) = &cfg.ca_file {
            tls.cert_chain = Some(read_text(path, "source.ca_file")?);
        }
        match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(cert), Some(key)) => {
                tls.identity = Some(OwnedIdentity::PKCS8 {
                    pem: read_text(cert, "source.client_cert_file")?.into_bytes(),
                    key: read_text(key, "source.client_key_file")?.into_bytes(),
                });
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(AdapterError::Config {
                    field: "source.client_key_file".into(),
                    reason: "required with client_cert_file".into(),
                });
            }
            (None, Some(_)) => {
                return Err(AdapterError::Config {
                    field: "source.client_cert_file".into(),
                    reason: "required with client_key_file".into(),
                });
            }
        }
        if !tls_url && (tls.cert_chain.is_some() || tls.identity.is_some()) {
            return Err(AdapterError::Config {
                field: "source.url".into(),
                reason: format!("TLS files are configured but {masked} is not amqps://"),
            });
        }
        Ok(Self {
            uri,
            tls,
            masked,
            connect_timeout: cfg.connect_timeout,
            connection_name: format!("qt {}", settings.trigger_name),
            redactor,
        })
    }

    /// The URL with its password masked, for messages.
    pub(crate) fn masked(&self) -> &str {
        &self.masked
    }

    /// Opens a connection within the connect timeout. `role` names it in the broker's
    /// connection list (`qt <trigger> consumer`).
    pub(crate) async fn connect(&self, role: &str) -> Result<Connection, AdapterError> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("{} {role}", self.connection_name).into());
        let runtime = lapin::runtime::default_runtime().map_err(|e| self.connect_error(&e))?;
        let attempt = self
            .uri
            .clone()
            .connect_with_config(properties, self.tls.clone(), runtime);
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(self.connect_error(&e)),
            Err(_) => Err(AdapterError::Connect {
                endpoint: self.masked.clone(),
                reason: format!("no answer within {:?} (source.connect_timeout)", self.connect_timeout),
            }),
        }
    }

    fn connect_error(&self, e: &lapin::Error) -> AdapterError {
        AdapterError::Connect {
            endpoint: self.masked.clone(),
            reason: self.redactor.redact(crate::describe::lapin_error(e)),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.masked)
            .field("tls", &matches!(self.uri.scheme, AMQPScheme::AMQPS))
            .field("extra_ca", &self.tls.cert_chain.is_some())
            .field("client_certificate", &self.tls.identity.is_some())
            .finish()
    }
}

fn read_text(path: &Path, field: &str) -> Result<String, AdapterError> {
    std::fs::read_to_string(path).map_err(|e| AdapterError::Config {
        field: field.into(),
        reason: format!("cannot read {}: {e}", path.display()),
    })
}
