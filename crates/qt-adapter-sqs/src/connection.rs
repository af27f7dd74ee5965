//! The SDK client: configuration checks, credentials, region, endpoint and timeouts; queue
//! name resolution; and SDK errors turned into text that names the failure but never a
//! credential.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, Region, RuntimeComponents, SharedCredentialsProvider};
use aws_sdk_sqs::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use qt_core::AdapterError;
use qt_core::config::{ConfigErrors, SqsSourceConfig, Validate};
use qt_core::secret::mask_url_credentials;

/// How long a TCP/TLS connection may take before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Beyond the long-poll wait, how long a response may take before the attempt is given up.
const RESPONSE_GRACE: Duration = Duration::from_secs(10);

/// Checks `cfg` (every problem, with its path) and, under `require_tls`, that no endpoint
/// is plaintext. Nothing touches the network.
pub fn check_config(cfg: &SqsSourceConfig, require_tls: bool) -> Result<(), AdapterError> {
    let mut problems = ConfigErrors::default();
    cfg.validate("source", &mut problems);
    if require_tls {
        for (at, endpoint) in cfg.plaintext_endpoints("source") {
            problems.push(
                at,
                format!("security.require_tls is set but {endpoint} is not TLS (use https://)"),
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let field = problems
        .problems
        .iter()
        .map(|p| p.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let reason = problems
        .problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Err(AdapterError::Config { field, reason })
}

/// Builds an SQS client for `cfg`.
///
/// Credentials come from `credentials` when given (library users with their own provider,
/// tests), otherwise from the standard AWS provider chain: environment variables, the
/// shared config/credentials files (`cfg.profile` picks the profile), web identity
/// (EKS/IRSA), SSO, `credential_process`, and container or instance metadata. The client
/// never logs or prints them.
pub async fn sdk_client(
    cfg: &SqsSourceConfig,
    require_tls: bool,
    credentials: Option<SharedCredentialsProvider>,
) -> Result<Client, AdapterError> {
    check_config(cfg, require_tls)?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(cfg.wait_time + RESPONSE_GRACE)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.trim().to_owned()))
        .timeout_config(timeouts);
    if let Some(profile) = &cfg.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &cfg.endpoint_url {
        loader = loader.endpoint_url(endpoint.trim());
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let sdk = loader.load().await;
    if require_tls
        && cfg.endpoint_url.is_none()
        && let Some(endpoint) = sdk.endpoint_url()
        && !is_https(endpoint)
    {
        return Err(AdapterError::Config {
            field: "AWS_ENDPOINT_URL or the AWS profile's endpoint_url".to_owned(),
            reason: format!(
                "security.require_tls is set but {} is not TLS (use https://)",
                mask_url_credentials(endpoint)
            ),
        });
    }
    Ok(client_for(&sdk, require_tls))
}

fn client_for(sdk: &SdkConfig, require_tls: bool) -> Client {
    let mut conf = aws_sdk_sqs::config::Builder::from(sdk);
    if require_tls {
        conf = conf.interceptor(RequireTls);
    }
    Client::from_conf(conf.build())
}

fn is_https(url: &str) -> bool {
    url.trim().get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// Fails any request about to go out over plain HTTP.
#[derive(Debug)]
struct RequireTls;

impl Intercept for RequireTls {
    fn name(&self) -> &'static str {
        "qt-require-tls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let uri = context.request().uri();
        if is_https(uri) {
            return Ok(());
        }
        Err(format!(
            "security.require_tls is set but the SQS endpoint {} is not TLS; check AWS_ENDPOINT_URL, \
             AWS_ENDPOINT_URL_SQS and the AWS profile's endpoint_url",
            mask_url_credentials(uri)
        )
        .into())
    }
}

/// The queue URL for a configured URL or bare queue name.
pub async fn resolve_queue_url(client: &Client, url_or_name: &str, field: &str) -> Result<String, AdapterError> {
    let value = url_or_name.trim();
    if value.contains("://") {
        return Ok(value.to_owned());
    }
    let out = client
        .get_queue_url()
        .queue_name(value)
        .send()
        .await
        .map_err(|e| match classify(&e) {
            Failure::Unreachable => AdapterError::Connect {
                endpoint: "SQS".to_owned(),
                reason: describe(&e),
            },
            _ => AdapterError::MissingResource {
                queue: format!("queue {value:?} ({field})"),
                reason: describe(&e),
            },
        })?;
    out.queue_url.ok_or_else(|| AdapterError::MissingResource {
        queue: format!("queue {value:?} ({field})"),
        reason: "GetQueueUrl returned no URL".to_owned(),
    })
}

/// What kind of failure an SDK error is, as far as qt acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint could not be reached or did not answer in time.
    Unreachable,
    /// The queue does not exist (or this principal may not see it).
    MissingQueue,
    /// The request cannot succeed by trying again: the receipt handle is no longer valid
    /// (the message was redelivered or deleted) or a parameter is out of range.
    NotRetryable,
    /// Anything else: throttling, permissions, service errors.
    Other,
}

pub fn classify<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Failure {
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Failure::Unreachable,
        _ => classify_code(err.code()),
    }
}

pub fn classify_code(code: Option<&str>) -> Failure {
    match code {
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => Failure::MissingQueue,
        Some(
            "ReceiptHandleIsInvalid"
            | "InvalidParameterValue"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight",
        ) => Failure::NotRetryable,
        _ => Failure::Other,
    }
}

/// The whole error chain on one line, URL credentials masked.
pub fn describe<E: StdError + 'static, R: std::fmt::Debug>(err: &SdkError<E, R>) -> String {
    mask_url_credentials(&DisplayErrorContext(err).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tls_names_every_plaintext_field() {
        let cfg = SqsSourceConfig {
            queue_url: "http://127.0.0.1:4566/000000000000/q".into(),
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:4566".into()),
            ..SqsSourceConfig::default()
        };
        check_config(&cfg, false).unwrap();
        let err = check_config(&cfg, true).unwrap_err().to_string();
        assert!(err.contains("source.endpoint_url"), "{err}");
        assert!(err.contains("source.queue_url"), "{err}");
        assert!(err.contains("require_tls"), "{err}");
    }

    #[tokio::test]
    async fn require_tls_stops_plaintext_requests_from_any_endpoint_source() {
        // As if the endpoint came from AWS_ENDPOINT_URL or a profile rather than qt's config.
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("a", "b", None, None, "test"))
            .load()
            .await;
        let err = client_for(&sdk, true)
            .get_queue_url()
            .queue_name("q")
            .send()
            .await
            .expect_err("plain HTTP under require_tls");
        let text = describe(&err);
        assert!(text.contains("require_tls"), "{text}");
    }

    #[test]
    fn invalid_config_is_refused_with_all_paths() {
        let cfg = SqsSourceConfig {
            max_messages: 0,
            ..SqsSourceConfig::default()
        };
        let err = check_config(&cfg, false).unwrap_err().to_string();
        for path in ["source.queue_url", "source.region", "source.max_messages"] {
            assert!(err.contains(path), "{path} missing in {err}");
        }
    }
}
