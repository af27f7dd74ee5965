//! [`RedisStore`]: the [`IdempotencyStore`] shared by every qt process pointed at one Redis.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool::Runtime;
use deadpool::managed::{Object, Pool, QueueMode, Timeouts};
use qt_core::config::{ConfigErrors, RedisStoreConfig, Validate, join};
use qt_core::{Backoff, Claim, ClaimState, ClaimToken, Health, IdempotencyKey, IdempotencyStore, StoreError};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, RedisResult};

use crate::connection::{self, Manager};
use crate::debts::{Debt, Debts, PAID_AHEAD, PAID_IN_BACKGROUND, Paid, Repayment, Settle};
use crate::errors::{Operation, Phase, PoolTimeouts, Redactor, is_noscript, must_discard};
use crate::keys::redis_key;
use crate::scripts::{Call, ClaimReply, Codes, LuaScript, Scripts, calls, decode_held, millis};
use crate::token::{new_token, token_text};

/// Where `connect` reports configuration problems; the store is configured there in the
/// `qt` YAML file.
const CONFIG_PATH: &str = "idempotency.store";

/// Pauses of the background payer of debts: 200ms before it starts, doubled after each
/// failure up to 5s.
const REPAY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    multiplier: 2.0,
    max: Duration::from_secs(5),
    jitter: 0.0,
};

const FOREIGN_VALUE: &str = "holds a value qt did not write; delete the key or use another idempotency.key_prefix";

/// Claims in Redis, shared across processes. Cheap to share behind an `Arc`; every method
/// takes `&self`.
///
/// Every operation is bounded: getting a connection by `connect_timeout` (opening one) or
/// `command_timeout` (waiting for a free one), and its round trips together by
/// `command_timeout`. Running out of time yields [`StoreError::Timeout`] naming the
/// operation; any other failure [`StoreError::Unavailable`] saying what failed. Errors and
/// `Debug` show the URL with its password masked and never a configured password.
pub struct RedisStore {
    core: Arc<Core>,
    prefix: String,
}

/// What the store shares with its background payer of debts ([`crate::debts`]).
struct Core {
    pool: Pool<Manager>,
    scripts: Arc<Scripts>,
    redactor: Redactor,
    command_timeout: Duration,
    pool_timeouts: PoolTimeouts,
    debts: Debts,
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
            core: Arc::new(Core {
                pool,
                scripts,
                redactor,
                command_timeout: cfg.command_timeout,
                pool_timeouts,
                debts: Debts::default(),
            }),
            prefix: key_prefix.to_owned(),
        };
        // Boxed: opening a connection is a large future, and `connect` is awaited inline.
        Box::pin(store.core.ping(Operation::Connect)).await?;
        tracing::debug!(store = %store.endpoint(), prefix = %store.prefix, "connected to Redis");
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
        self.core.redactor.endpoint()
    }

    /// Connections currently open (idle or in use), at most `pool_size`.
    pub fn open_connections(&self) -> usize {
        self.core.pool.status().size
    }

    /// Completions and releases Redis has not confirmed yet (kept in the store's ledger of debts): non-zero
    /// while Redis is unreachable after operations failed, zero again once it is back.
    pub fn owed(&self) -> usize {
        self.core.debts.len()
    }

    /// Closes the pool: later operations fail with `Unavailable`, open connections close as
    /// they are returned.
    pub fn close(&self) {
        self.core.pool.close();
    }

    /// Runs `calls` in one pipeline, preceded by (the oldest) debts owed to Redis so that
    /// what follows sees them settled, and returns one reply per call of `calls`. When the
    /// whole exchange fails (connection, timeout) the debts stay owed; an error reply to one
    /// call stays in its slot.
    async fn run(&self, op: Operation, calls: Vec<Call<'_>>) -> Result<Vec<RedisResult<Codes>>, Failed> {
        let core = &*self.core;
        if core.debts.is_empty() {
            return core.exchange(op, calls).await;
        }
        let mut repayment = Repayment::new(&core.scripts, core.debts.oldest(PAID_AHEAD));
        let mut all = repayment.take_calls();
        let owed_calls = all.len();
        all.extend(calls);
        let mut replies = core.exchange(op, all).await?;
        let mine = replies.split_off(owed_calls);
        core.settled(&repayment.settle(replies));
        Ok(mine)
    }

    /// Records work Redis may not have done and makes sure a background task pays it.
    fn owe(&self, op: Operation, debts: Vec<Debt>) {
        if debts.is_empty() {
            return;
        }
        let keys = debts.len();
        let added = self.core.debts.add(debts);
        let owed = self.core.debts.len();
        // One warning per outage; the engine logs each failed operation already.
        if added.first {
            tracing::warn!(
                store = %self.endpoint(),
                operation = op.name(),
                keys,
                "Redis did not confirm completions or releases; they are kept and sent again until Redis answers, so the keys do not stay claimed until their lease ends"
            );
        } else {
            tracing::debug!(store = %self.endpoint(), operation = op.name(), keys, owed, "more work kept for Redis");
        }
        if added.dropped > 0 {
            tracing::warn!(
                store = %self.endpoint(),
                dropped = added.dropped,
                "too many unconfirmed completions and releases; the oldest are dropped and their keys stay claimed until their lease ends"
            );
        }
        Core::ensure_repaying(&self.core);
    }

    async fn claim_many(
        &self,
        op: Operation,
        keys: Vec<IdempotencyKey>,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let asked = keys.len();
        let lease_ms = millis(lease);
        let planned: Vec<(String, u128, String)> = keys
            .iter()
            .map(|k| {
                let token = new_token();
                (self.redis_key(k), token, token_text(token))
            })
            .collect();
        let calls = calls(&self.core.scripts.claim, Some(&lease_ms), &planned, |(k, _, t)| (k, t));
        let sizes: Vec<usize> = calls.iter().map(|c| c.keys).collect();
        let replies = match self.run(op, calls).await {
            Ok(r) => r,
            Err(failed) => {
                if failed.sent {
                    // Redis may have taken some of these claims before the exchange failed,
                    // and nobody will ever hold their tokens: release them once it answers.
                    self.owe(op, release_debts(planned.into_iter().map(|(k, _, t)| (k, t)).collect()));
                }
                return Err(failed.error);
            }
        };

        let mut claims = Vec::with_capacity(keys.len());
        let mut failures = Failures::default();
        let mut unknown = Vec::new();
        for ((key, (rk, token, text)), reply) in keys.into_iter().zip(planned).zip(per_key(replies, &sizes)) {
            match reply.map(ClaimReply::decode) {
                Ok(Some(ClaimReply::Acquired)) => claims.push(Claim::Acquired(ClaimToken { key, token })),
                Ok(Some(ClaimReply::InFlight)) => claims.push(Claim::InFlight),
                Ok(Some(ClaimReply::Completed)) => claims.push(Claim::Completed),
                Ok(Some(ClaimReply::Foreign)) => failures.add(&rk, FOREIGN_VALUE),
                Ok(None) => failures.add(&rk, "unexpected reply from the claim script"),
                Err(reason) => {
                    failures.add(&rk, &reason);
                    unknown.push((rk, text));
                }
            }
        }
        if failures.is_empty() {
            return Ok(claims);
        }
        self.owe(op, release_debts(unknown));
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
                store = %self.endpoint(),
                error = %e,
                claims = acquired.len(),
                "could not release the claims of a failed batch yet; retrying in the background"
            );
        }
        Err(self.core.redactor.unavailable(failures.describe(op, asked)))
    }

    /// Completes (`window` given) or releases (`None`) every token, one script call per
    /// [`crate::scripts::KEYS_PER_CALL`] keys, all in one round trip. Whatever Redis did not
    /// confirm is owed ([`crate::debts`]).
    async fn settle_many(
        &self,
        op: Operation,
        tokens: &[ClaimToken],
        window: Option<Duration>,
    ) -> Result<Vec<ClaimState>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let (script, settle) = match window {
            Some(w) => (&self.core.scripts.complete, Settle::Complete { window_ms: millis(w) }),
            None => (&self.core.scripts.release, Settle::Release),
        };
        let shared = match &settle {
            Settle::Complete { window_ms } => Some(window_ms.as_str()),
            Settle::Release => None,
        };
        let keys: Vec<(String, String)> = tokens
            .iter()
            .map(|t| (self.redis_key(&t.key), token_text(t.token)))
            .collect();
        let debt = |(redis_key, token): (String, String)| Debt {
            redis_key,
            token,
            settle: settle.clone(),
        };
        let calls = calls(script, shared, &keys, |(k, t)| (k, t));
        let sizes: Vec<usize> = calls.iter().map(|c| c.keys).collect();
        let replies = match self.run(op, calls).await {
            Ok(r) => r,
            Err(failed) => {
                self.owe(op, keys.into_iter().map(debt).collect());
                return Err(failed.error);
            }
        };

        let mut states = Vec::with_capacity(tokens.len());
        let mut failures = Failures::default();
        let mut unknown = Vec::new();
        for (key, reply) in keys.into_iter().zip(per_key(replies, &sizes)) {
            match reply.map(decode_held) {
                Ok(Some(true)) => states.push(ClaimState::Held),
                Ok(Some(false)) => states.push(ClaimState::Lost),
                Ok(None) => failures.add(&key.0, &format!("unexpected reply from the {} script", script.name())),
                Err(reason) => {
                    failures.add(&key.0, &reason);
                    unknown.push(debt(key));
                }
            }
        }
        self.owe(op, unknown);
        if failures.is_empty() {
            Ok(states)
        } else {
            Err(self.core.redactor.unavailable(failures.describe(op, tokens.len())))
        }
    }
}

impl Core {
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

    /// Sends `calls` in one pipeline on one pooled connection, bounded by the command
    /// timeout, and returns one reply per call.
    async fn exchange(&self, op: Operation, calls: Vec<Call<'_>>) -> Result<Vec<RedisResult<Codes>>, Failed> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let expected = calls.len();
        let mut conn = self.checkout(op).await.map_err(Failed::unsent)?;
        let outcome = tokio::time::timeout(self.command_timeout, eval_all(&mut conn, calls)).await;
        match outcome {
            Err(_) => {
                // The replies may still arrive on this connection; never reuse it.
                discard(conn);
                Err(Failed::sent(self.redactor.timeout(
                    op,
                    Phase::Command,
                    self.command_timeout,
                )))
            }
            Ok(Err(e)) => {
                if must_discard(&e) {
                    discard(conn);
                }
                Err(Failed::sent(self.redactor.redis(op, &e, self.command_timeout)))
            }
            Ok(Ok(replies)) => {
                if replies.iter().any(|r| r.as_ref().is_err_and(must_discard)) {
                    discard(conn);
                }
                if replies.len() != expected {
                    return Err(Failed::sent(self.redactor.unavailable(format!(
                        "{}: Redis sent {} replies to {expected} commands",
                        op.name(),
                        replies.len()
                    ))));
                }
                Ok(replies)
            }
        }
    }

    /// Pays the oldest debts in one exchange; returns how many Redis resolved.
    async fn repay(&self) -> Result<usize, Failed> {
        let mut repayment = Repayment::new(&self.scripts, self.debts.oldest(PAID_IN_BACKGROUND));
        if repayment.is_empty() {
            return Ok(0);
        }
        let calls = repayment.take_calls();
        let replies = self.exchange(Operation::Repay, calls).await?;
        Ok(self.settled(&repayment.settle(replies)))
    }

    /// Forgets the debts Redis answered and says what came of them; returns how many
    /// were still owed (another sender may have paid the same ones meanwhile).
    fn settled(&self, paid: &Paid) -> usize {
        let settled = self.debts.forget(paid.settled.iter().map(String::as_str));
        let already_free = self.debts.forget(paid.nothing_to_release.iter().map(String::as_str));
        let expired = self.debts.forget(paid.expired_completions.iter().map(String::as_str));
        if settled > 0 || already_free > 0 {
            tracing::info!(
                store = %self.redactor.endpoint(),
                settled,
                already_free,
                owed = self.debts.len(),
                "Redis confirmed completions and releases owed since it stopped answering"
            );
        }
        if expired > 0 {
            tracing::warn!(
                store = %self.redactor.endpoint(),
                keys = expired,
                "completions owed since Redis stopped answering came too late: the claims had expired (or Redis lost them in a restart without persistence), so these keys may run again"
            );
        }
        if paid.unpaid > 0 {
            tracing::debug!(
                store = %self.redactor.endpoint(),
                keys = paid.unpaid,
                "Redis refused to settle some owed completions and releases; they stay owed"
            );
        }
        settled + already_free + expired
    }

    /// Starts the background payer unless one runs. It holds only a weak reference, so a
    /// dropped store stops it.
    fn ensure_repaying(core: &Arc<Core>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Without a runtime the debts are still paid ahead of the next operation.
            return;
        };
        if core.debts.start_repaying() {
            runtime.spawn(repay_in_background(Arc::downgrade(core)));
        }
    }
}

/// Pays debts while there are any, backing off while Redis stays away.
async fn repay_in_background(core: Weak<Core>) {
    // Which pause comes next; none while a backlog is paid bite by bite.
    let mut pause = Some(0u32);
    loop {
        if let Some(n) = pause {
            tokio::time::sleep(REPAY_BACKOFF.base(n)).await;
        }
        let Some(core) = core.upgrade() else { return };
        if core.pool.is_closed() {
            core.debts.stop_repaying();
            return;
        }
        match core.repay().await {
            Ok(resolved) if resolved > 0 => pause = None,
            // Redis answers but refuses (an error reply): do not hammer it.
            Ok(_) => pause = Some(pause.map_or(0, |n| n.saturating_add(1))),
            Err(failed) => {
                tracing::debug!(error = %failed.error, owed = core.debts.len(), "Redis still does not answer; debts kept");
                pause = Some(pause.map_or(0, |n| n.saturating_add(1)));
            }
        }
        if core.debts.is_empty() && !core.debts.stop_repaying() {
            return;
        }
    }
}

/// An exchange that failed as a whole.
struct Failed {
    error: StoreError,
    /// Whether the commands went out, so that Redis may have run some of them.
    sent: bool,
}

impl Failed {
    fn unsent(error: StoreError) -> Self {
        Self { error, sent: false }
    }

    fn sent(error: StoreError) -> Self {
        Self { error, sent: true }
    }
}

fn release_debts(pairs: Vec<(String, String)>) -> Vec<Debt> {
    pairs
        .into_iter()
        .map(|(redis_key, token)| Debt {
            redis_key,
            token,
            settle: Settle::Release,
        })
        .collect()
}

/// One code per key from the replies to calls of `sizes` keys each, or why there is none.
/// A call's error reply applies to each of its keys.
fn per_key(replies: Vec<RedisResult<Codes>>, sizes: &[usize]) -> Vec<Result<u8, String>> {
    let mut out = Vec::with_capacity(sizes.iter().sum());
    for (reply, &keys) in replies.into_iter().zip(sizes) {
        match reply {
            Ok(codes) if codes.len() == keys => out.extend(codes.into_iter().map(Ok)),
            Ok(codes) => {
                let reason = format!("Redis answered {} codes for {keys} keys", codes.len());
                out.extend(std::iter::repeat_n(Err(reason), keys));
            }
            Err(e) => out.extend(std::iter::repeat_n(Err(e.to_string()), keys)),
        }
    }
    out
}

/// Runs the calls in one pipeline. Calls answered `NOSCRIPT` (Redis restarted, failed over
/// or flushed its script cache since the connection loaded the scripts) did not run; their
/// scripts are loaded again and just those calls are resent.
async fn eval_all(conn: &mut MultiplexedConnection, calls: Vec<Call<'_>>) -> RedisResult<Vec<RedisResult<Codes>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let scripts: Vec<&LuaScript> = calls.iter().map(|c| c.script).collect();
    for call in calls {
        pipe.add_command(call.cmd);
    }
    let mut replies: Vec<RedisResult<Codes>> = pipe.query_async(conn).await?;
    let missing: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().is_err_and(is_noscript))
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(replies);
    }
    let mut reload: Vec<&LuaScript> = missing.iter().map(|&i| scripts[i]).collect();
    reload.sort_by_key(|s| s.name());
    reload.dedup_by_key(|s| s.name());
    tracing::info!(
        scripts = ?reload.iter().map(|s| s.name()).collect::<Vec<_>>(),
        calls = missing.len(),
        "Redis no longer has the scripts (restart, failover or SCRIPT FLUSH); loading them again"
    );
    let mut load = redis::pipe();
    for script in reload {
        load.add_command(script.load()).ignore();
    }
    load.query_async::<()>(conn).await?;
    let mut again = redis::pipe();
    again.ignore_errors();
    let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
    for &i in &missing {
        again.add_command(sent[i].clone());
    }
    let retried: Vec<RedisResult<Codes>> = again.query_async(conn).await?;
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
        let mut claims = self.claim_many(Operation::Claim, vec![key.clone()], lease).await?;
        Ok(claims.remove(0))
    }

    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
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
        match self.core.ping(Operation::Health).await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.core.pool.status();
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint())
            .field("prefix", &self.prefix)
            .field("connections", &status.size)
            .field("idle", &status.available)
            .field("max_connections", &status.max_size)
            .field("command_timeout", &self.core.command_timeout)
            .field("owed", &self.core.debts.len())
            .finish()
    }
}
