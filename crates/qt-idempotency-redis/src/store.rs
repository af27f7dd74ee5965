//! [`RedisStore`]: the [`IdempotencyStore`] shared by every qt process pointed at one Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool::Runtime;
use deadpool::managed::{Object, Pool, QueueMode, Timeouts};
use qt_core::config::{ConfigErrors, RedisStoreConfig, Validate, join};
use qt_core::{Claim, ClaimState, ClaimToken, Health, IdempotencyKey, IdempotencyStore, StoreError};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, RedisResult};

use crate::connection::{self, Manager};
use crate::errors::{Operation, Phase, PoolTimeouts, Redactor, is_noscript, must_discard};
use crate::keys::redis_key;
use crate::scripts::{ClaimReply, LuaScript, Scripts, decode_held, millis};
use crate::token::new_token;

/// Where `connect` reports configuration problems; the store is configured there in the
/// `qt` YAML file.
const CONFIG_PATH: &str = "idempotency.store";

/// Claims in Redis, shared across processes. Cheap to share behind an `Arc`; every method
/// takes `&self`.
///
/// Every operation is bounded: getting a connection by `connect_timeout` (opening one) or
/// `command_timeout` (waiting for a free one), and its round trips together by
/// `command_timeout`. Running out of time yields [`StoreError::Timeout`] naming the
/// operation; any other failure [`StoreError::Unavailable`] saying what failed. Errors and
/// `Debug` show the URL with its password masked and never a configured password.
pub struct RedisStore {
    pool: Pool<Manager>,
    scripts: Arc<Scripts>,
    prefix: String,
    redactor: Redactor,
    command_timeout: Duration,
    pool_timeouts: PoolTimeouts,
}

impl RedisStore {
    /// Checks the configuration, builds the pool and opens one connection (authenticating,
    /// selecting the database and loading the scripts) to prove the settings work.
    ///
    /// Fails fast: a Redis that cannot be reached at start is an error here, so that a wrong
    /// URL or password shows up when `qt` starts rather than on the first message. Once
    /// running, the store rides out Redis outages by itself: operations fail (bounded by the
    /// timeouts) while Redis is away and succeed again, on fresh connections, once it is back.
    ///
    /// `require_tls` (`security.require_tls`) rejects a plaintext `redis://` URL.
    /// `key_prefix` (`idempotency.key_prefix`) starts every key.
    pub async fn connect(cfg: &RedisStoreConfig, key_prefix: &str, require_tls: bool) -> Result<Self, StoreError> {
        let mut redactor = Redactor::new(&cfg.url);
        if let Some(password) = &cfg.password {
            redactor.add_secret(password.expose());
        }
        let mut problems = ConfigErrors::default();
        cfg.validate(CONFIG_PATH, &mut problems);
        if require_tls && !cfg.is_tls() {
            problems.push(
                join(CONFIG_PATH, "url"),
                format!(
                    "security.require_tls is set but {} is plaintext; use rediss://",
                    cfg.url
                ),
            );
        }
        if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
            problems.push(
                "idempotency.key_prefix",
                format!("must be non-empty without spaces, got {key_prefix:?}"),
            );
        }
        if !problems.is_empty() {
            return Err(redactor.unavailable(problems.to_string().trim_end()));
        }

        let info = connection::connection_info(cfg).map_err(|e| redactor.unavailable(e))?;
        if let Some(password) = info.redis_settings().password() {
            redactor.add_secret(password);
        }
        let client = connection::client(cfg, info)
            .await
            .map_err(|e| redactor.unavailable(e))?;

        let scripts = Arc::new(Scripts::new());
        let pool_timeouts = PoolTimeouts {
            wait: cfg.command_timeout,
            create: cfg.connect_timeout,
            recycle: cfg.command_timeout,
        };
        let manager = Manager::new(client, cfg.connect_timeout, cfg.command_timeout, scripts.clone());
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(pool_timeouts.wait),
                create: Some(pool_timeouts.create),
                recycle: Some(pool_timeouts.recycle),
            })
            // The most recently used connection first: under light load the others stay
            // idle and are pinged before reuse, while the busy one skips the ping.
            .queue_mode(QueueMode::Lifo)
            .build()
            .map_err(|e| redactor.unavailable(format!("cannot build the connection pool: {e}")))?;

        let store = Self {
            pool,
            scripts,
            prefix: key_prefix.to_owned(),
            redactor,
            command_timeout: cfg.command_timeout,
            pool_timeouts,
        };
        // Boxed: opening a connection is a large future, and `connect` is awaited inline.
        Box::pin(store.ping(Operation::Connect)).await?;
        tracing::debug!(store = %store.redactor.endpoint(), prefix = %store.prefix, "connected to Redis");
        Ok(store)
    }

    /// The Redis key that holds the claim of `key` (see [`crate::keys`]).
    pub fn redis_key(&self, key: &IdempotencyKey) -> String {
        redis_key(key, &self.prefix)
    }

    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The URL with its password masked.
    pub fn endpoint(&self) -> &str {
        self.redactor.endpoint()
    }

    /// Connections currently open (idle or in use), at most `pool_size`.
    pub fn open_connections(&self) -> usize {
        self.pool.status().size
    }

    /// Closes the pool: later operations fail with `Unavailable`, open connections close as
    /// they are returned.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn checkout(&self, op: Operation) -> Result<Object<Manager>, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| self.redactor.pool(op, e, &self.pool_timeouts))
    }

    async fn ping(&self, op: Operation) -> Result<(), StoreError> {
        let mut conn = self.checkout(op).await?;
        let reply = tokio::time::timeout(
            self.command_timeout,
            redis::cmd("PING").query_async::<String>(&mut *conn),
        )
        .await;
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if must_discard(&e) {
                    discard(conn);
                }
                Err(self.redactor.redis(op, &e, self.command_timeout))
            }
            Err(_) => {
                discard(conn);
                Err(self.redactor.timeout(op, Phase::Command, self.command_timeout))
            }
        }
    }

    /// Runs `calls` (invocations of `script`) in one pipeline and returns one reply per call.
    /// An error of the whole exchange (connection, timeout) is a `StoreError`; an error reply
    /// to one call stays in its slot.
    async fn run(
        &self,
        op: Operation,
        script: &LuaScript,
        calls: Vec<Cmd>,
    ) -> Result<Vec<RedisResult<i64>>, StoreError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let expected = calls.len();
        let mut conn = self.checkout(op).await?;
        let outcome = tokio::time::timeout(self.command_timeout, eval_all(&mut conn, script, calls)).await;
        match outcome {
            Err(_) => {
                // The replies may still arrive on this connection; never reuse it.
                discard(conn);
                Err(self.redactor.timeout(op, Phase::Command, self.command_timeout))
            }
            Ok(Err(e)) => {
                if must_discard(&e) {
                    discard(conn);
                }
                Err(self.redactor.redis(op, &e, self.command_timeout))
            }
            Ok(Ok(replies)) => {
                if replies.iter().any(|r| r.as_ref().is_err_and(must_discard)) {
                    discard(conn);
                }
                if replies.len() != expected {
                    return Err(self.redactor.unavailable(format!(
                        "{}: Redis sent {} replies to {expected} commands",
                        op.name(),
                        replies.len()
                    )));
                }
                Ok(replies)
            }
        }
    }

    async fn claim_many(
        &self,
        op: Operation,
        keys: &[IdempotencyKey],
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let lease_ms = millis(lease);
        let planned: Vec<(String, String)> = keys.iter().map(|k| (self.redis_key(k), new_token())).collect();
        let calls = planned
            .iter()
            .map(|(rk, token)| self.scripts.claim.call(rk, &[token, &lease_ms]))
            .collect();
        let replies = self.run(op, &self.scripts.claim, calls).await?;

        let mut claims = Vec::with_capacity(keys.len());
        let mut failures = Failures::default();
        for ((key, (rk, token)), reply) in keys.iter().zip(planned).zip(replies) {
            let decoded = reply.map_err(|e| e.to_string()).and_then(|code| {
                ClaimReply::decode(code).ok_or_else(|| format!("unexpected reply {code} from the claim script"))
            });
            match decoded {
                Ok(ClaimReply::Acquired) => claims.push(Claim::Acquired(ClaimToken {
                    key: key.clone(),
                    token,
                })),
                Ok(ClaimReply::InFlight) => claims.push(Claim::InFlight),
                Ok(ClaimReply::Completed) => claims.push(Claim::Completed),
                Err(reason) => failures.add(&rk, &reason),
            }
        }
        if failures.is_empty() {
            return Ok(claims);
        }
        // The caller gets no tokens from a failed batch, so give back what this batch took
        // rather than leaving those keys blocked until their leases run out.
        let acquired: Vec<ClaimToken> = claims
            .into_iter()
            .filter_map(|c| match c {
                Claim::Acquired(t) => Some(t),
                _ => None,
            })
            .collect();
        if let Err(e) = self.settle_many(Operation::ReleaseBatch, &acquired, None).await {
            tracing::warn!(
                store = %self.redactor.endpoint(),
                error = %e,
                claims = acquired.len(),
                "could not release the claims of a failed batch; they expire with their lease"
            );
        }
        Err(self.redactor.unavailable(failures.describe(op, keys.len())))
    }

    /// Completes (`window` given) or releases (`None`) every token in one round trip.
    async fn settle_many(
        &self,
        op: Operation,
        tokens: &[ClaimToken],
        window: Option<Duration>,
    ) -> Result<Vec<ClaimState>, StoreError> {
        let (script, window_ms) = match window {
            Some(w) => (&self.scripts.complete, Some(millis(w))),
            None => (&self.scripts.release, None),
        };
        let keys: Vec<String> = tokens.iter().map(|t| self.redis_key(&t.key)).collect();
        let calls = keys
            .iter()
            .zip(tokens)
            .map(|(rk, t)| match &window_ms {
                Some(ms) => script.call(rk, &[&t.token, ms]),
                None => script.call(rk, &[&t.token]),
            })
            .collect();
        let replies = self.run(op, script, calls).await?;

        let mut states = Vec::with_capacity(tokens.len());
        let mut failures = Failures::default();
        for (rk, reply) in keys.iter().zip(replies) {
            let decoded = reply.map_err(|e| e.to_string()).and_then(|code| {
                decode_held(code).ok_or_else(|| format!("unexpected reply {code} from the {} script", script.name()))
            });
            match decoded {
                Ok(true) => states.push(ClaimState::Held),
                Ok(false) => states.push(ClaimState::Lost),
                Err(reason) => failures.add(rk, &reason),
            }
        }
        if failures.is_empty() {
            Ok(states)
        } else {
            Err(self.redactor.unavailable(failures.describe(op, tokens.len())))
        }
    }
}

/// Runs the calls in one pipeline. Calls answered `NOSCRIPT` (Redis restarted, failed over
/// or flushed its script cache since the connection loaded the scripts) did not run; the
/// script is loaded again and just those calls are resent.
async fn eval_all(
    conn: &mut MultiplexedConnection,
    script: &LuaScript,
    calls: Vec<Cmd>,
) -> RedisResult<Vec<RedisResult<i64>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command(call);
    }
    let mut replies: Vec<RedisResult<i64>> = pipe.query_async(conn).await?;
    let missing: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().is_err_and(is_noscript))
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(replies);
    }
    tracing::info!(
        script = script.name(),
        calls = missing.len(),
        "Redis no longer has the script (restart, failover or SCRIPT FLUSH); loading it again"
    );
    script.load().query_async::<()>(conn).await?;
    let mut again = redis::pipe();
    again.ignore_errors();
    let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
    for &i in &missing {
        again.add_command(sent[i].clone());
    }
    let retried: Vec<RedisResult<i64>> = again.query_async(conn).await?;
    for (i, reply) in missing.into_iter().zip(retried) {
        replies[i] = reply;
    }
    Ok(replies)
}

/// Takes a connection out of the pool for good; the pool opens a new one when needed.
fn discard(conn: Object<Manager>) {
    drop(Object::take(conn));
}

/// Per-key failures of one batch, summarised into one error.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, redis_key: &str, reason: &str) {
        self.count += 1;
        self.first.get_or_insert_with(|| format!("{redis_key}: {reason}"));
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn describe(&self, op: Operation, total: usize) -> String {
        let first = self.first.as_deref().unwrap_or_default();
        if total == 1 {
            format!("{} failed for {first}", op.name())
        } else {
            format!(
                "{} failed for {} of {total} keys; first: {first}",
                op.name(),
                self.count
            )
        }
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        let mut claims = self
            .claim_many(Operation::Claim, std::slice::from_ref(key), lease)
            .await?;
        Ok(claims.remove(0))
    }

    async fn claim_batch(&self, keys: &[IdempotencyKey], lease: Duration) -> Result<Vec<Claim>, StoreError> {
        self.claim_many(Operation::ClaimBatch, keys, lease).await
    }

    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        let mut states = self
            .settle_many(Operation::Complete, std::slice::from_ref(token), Some(window))
            .await?;
        Ok(states.remove(0))
    }

    async fn complete_batch(&self, tokens: &[ClaimToken], window: Duration) -> Result<Vec<ClaimState>, StoreError> {
        self.settle_many(Operation::CompleteBatch, tokens, Some(window)).await
    }

    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        let mut states = self
            .settle_many(Operation::Release, std::slice::from_ref(token), None)
            .await?;
        Ok(states.remove(0))
    }

    async fn release_batch(&self, tokens: &[ClaimToken]) -> Result<Vec<ClaimState>, StoreError> {
        self.settle_many(Operation::ReleaseBatch, tokens, None).await
    }

    /// `PING` on a pooled connection, bounded like every operation: `Unhealthy` with the
    /// reason while Redis cannot be reached.
    async fn health(&self) -> Health {
        match self.ping(Operation::Health).await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("RedisStore")
            .field("endpoint", &self.redactor.endpoint())
            .field("prefix", &self.prefix)
            .field("connections", &status.size)
            .field("idle", &status.available)
            .field("max_connections", &status.max_size)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}
