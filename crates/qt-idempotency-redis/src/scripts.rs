//! The three Lua scripts that make claims atomic, and what their replies mean.
//!
//! A claim key holds `inflight:<token>` while a worker runs the message (expiring with the
//! lease) and `done:<token>` once it completed (expiring with the idempotency window). Every
//! script compares the stored token with the caller's, so a worker whose lease ran out can
//! neither complete nor release a claim that another worker holds now.
//!
//! Each script takes a whole batch of keys (`KEYS[i]` with its token in `ARGV[i + 1]`) and
//! answers one code per key, in order: Redis's cost per script call is many times its cost
//! per key, so one call per batch is what lets a single Redis keep up with the engine. The
//! keys of one call are handled one after the other, atomically, so the same key twice in
//! a batch behaves as two claims in a row. The codes come back as one string of digits
//! rather than an array of integers: one bulk reply is far cheaper for both sides to encode
//! and parse than hundreds of integer replies.
//!
//! Each script answers the same way when sent twice with the same token (a claim that finds
//! its own `inflight:<token>` is acquired, a complete that finds its own `done:<token>` held,
//! a release that finds nothing lost), so resending a call whose answer never arrived (after
//! `NOSCRIPT`, or a connection lost mid-reply) can never turn one worker's claim against
//! itself.

use redis::{Cmd, Script};

const CLAIM: &str = r"
-- KEYS[i]: claim key. ARGV[1]: lease in milliseconds. ARGV[i + 1]: fencing token of KEYS[i].
-- Answers one character per key: 1 acquired, 0 another claim holds it, 2 completed within
-- the window, 3 the key holds a value qt did not write.
local lease = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local mine = 'inflight:' .. ARGV[i + 1]
  if redis.call('SET', key, mine, 'NX', 'PX', lease) then
    out[i] = '1'
  else
    -- pcall: a key of another type answers WRONGTYPE, which must not abort the batch.
    local held = redis.pcall('GET', key)
    if type(held) == 'table' then
      out[i] = '3'
    elseif held == mine then
      out[i] = '1'
    elseif held == false or string.sub(held, 1, 9) == 'inflight:' then
      out[i] = '0'
    elseif string.sub(held, 1, 5) == 'done:' then
      out[i] = '2'
    else
      out[i] = '3'
    end
  end
end
return table.concat(out)
";

const COMPLETE: &str = r"
-- KEYS[i]: claim key. ARGV[1]: idempotency window in milliseconds. ARGV[i + 1]: fencing
-- token of KEYS[i].
-- Answers one character per key: 1 the token held the claim, which is now done for the
-- window; 0 it did not (expired, another claim, or a value qt did not write): untouched.
local window = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local token = ARGV[i + 1]
  local held = redis.pcall('GET', key)
  if held == 'inflight:' .. token then
    redis.call('SET', key, 'done:' .. token, 'PX', window)
    out[i] = '1'
  elseif held == 'done:' .. token then
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
";

const RELEASE: &str = r"
-- KEYS[i]: claim key. ARGV[i]: fencing token of KEYS[i].
-- Answers one character per key: 1 the token held the claim, which is now deleted; 0 it did
-- not: untouched.
local out = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == 'inflight:' .. ARGV[i] then
    redis.call('DEL', key)
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
";

/// One of the scripts: its source (for `SCRIPT LOAD`) and its SHA-1 (for `EVALSHA`).
#[derive(Debug)]
pub struct LuaScript {
    name: &'static str,
    source: &'static str,
    sha: String,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            sha: Script::new(source).get_hash().to_owned(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `EVALSHA <sha> <n> <key 1..n> [<shared>] <token 1..n>`: one call for `pairs`
    /// (claim key, token), with `shared` (lease or window) first among the arguments.
    pub fn call<'a>(
        &self,
        shared: Option<&str>,
        pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(pairs.len());
        for (key, _) in pairs.clone() {
            cmd.arg(key);
        }
        if let Some(shared) = shared {
            cmd.arg(shared);
        }
        for (_, token) in pairs {
            cmd.arg(token);
        }
        cmd
    }

    /// `SCRIPT LOAD <source>`.
    pub fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(self.source);
        cmd
    }
}

/// Most keys in one script call. One call runs atomically and holds Redis for its whole
/// duration, so very large batches are split to keep other clients' latency low.
pub const KEYS_PER_CALL: usize = 256;

/// One script call of an exchange with Redis.
#[derive(Debug)]
pub struct Call<'s> {
    pub script: &'s LuaScript,
    pub cmd: Cmd,
    /// Keys in the call: the codes its reply must hold.
    pub keys: usize,
}

/// Calls of `script` for `items`, each giving a (claim key, token) pair, at most
/// [`KEYS_PER_CALL`] keys per call.
pub fn calls<'s, T>(
    script: &'s LuaScript,
    shared: Option<&str>,
    items: &[T],
    pair: impl Fn(&T) -> (&str, &str),
) -> Vec<Call<'s>> {
    items
        .chunks(KEYS_PER_CALL)
        .map(|chunk| Call {
            script,
            cmd: script.call(shared, chunk.iter().map(&pair)),
            keys: chunk.len(),
        })
        .collect()
}

/// All three, hashed once per store.
#[derive(Debug)]
pub struct Scripts {
    pub claim: LuaScript,
    pub complete: LuaScript,
    pub release: LuaScript,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            claim: LuaScript::new("claim", CLAIM),
            complete: LuaScript::new("complete", COMPLETE),
            release: LuaScript::new("release", RELEASE),
        }
    }

    pub fn all(&self) -> [&LuaScript; 3] {
        [&self.claim, &self.complete, &self.release]
    }
}

/// A script's answer: one ASCII digit per key, in order.
pub type Codes = Vec<u8>;

/// What the claim script answered for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimReply {
    Acquired,
    InFlight,
    Completed,
    /// The key holds something qt did not write.
    Foreign,
}

impl ClaimReply {
    pub fn decode(code: u8) -> Option<Self> {
        match code {
            b'1' => Some(Self::Acquired),
            b'0' => Some(Self::InFlight),
            b'2' => Some(Self::Completed),
            b'3' => Some(Self::Foreign),
            _ => None,
        }
    }
}

/// Whether a complete or release script found the caller's token.
pub fn decode_held(code: u8) -> Option<bool> {
    match code {
        b'1' => Some(true),
        b'0' => Some(false),
        _ => None,
    }
}

/// Milliseconds for `PX`, at least 1 (Redis rejects 0).
pub fn millis(d: std::time::Duration) -> String {
    d.as_millis().clamp(1, i64::MAX as u128).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parts(cmd: &Cmd) -> Vec<String> {
        let packed = String::from_utf8(cmd.get_packed_command()).expect("ascii");
        packed
            .split("\r\n")
            .filter(|p| !p.is_empty() && !p.starts_with(['*', '$']))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn evalsha_carries_the_keys_then_the_shared_argument_then_the_tokens() {
        let scripts = Scripts::new();
        let pairs = [("p:t:a", "tok-a"), ("p:t:b", "tok-b")];
        let cmd = scripts.claim.call(Some("1500"), pairs.iter().copied());
        assert_eq!(
            parts(&cmd),
            [
                "EVALSHA",
                scripts.claim.sha.as_str(),
                "2",
                "p:t:a",
                "p:t:b",
                "1500",
                "tok-a",
                "tok-b"
            ]
        );
        let cmd = scripts.release.call(None, pairs[..1].iter().copied());
        assert_eq!(
            parts(&cmd),
            ["EVALSHA", scripts.release.sha.as_str(), "1", "p:t:a", "tok-a"]
        );
        assert_eq!(scripts.claim.sha, Script::new(CLAIM).get_hash());
        assert_eq!(scripts.claim.sha.len(), 40);
    }

    #[test]
    fn scripts_have_distinct_hashes() {
        let s = Scripts::new();
        let [a, b, c] = s.all();
        assert!(a.sha != b.sha && b.sha != c.sha && a.sha != c.sha);
    }

    #[test]
    fn replies_decode_and_unknown_codes_do_not() {
        assert_eq!(ClaimReply::decode(b'1'), Some(ClaimReply::Acquired));
        assert_eq!(ClaimReply::decode(b'0'), Some(ClaimReply::InFlight));
        assert_eq!(ClaimReply::decode(b'2'), Some(ClaimReply::Completed));
        assert_eq!(ClaimReply::decode(b'3'), Some(ClaimReply::Foreign));
        assert_eq!(ClaimReply::decode(b'4'), None);
        assert_eq!(ClaimReply::decode(1), None, "digits, not numbers");
        assert_eq!(decode_held(b'1'), Some(true));
        assert_eq!(decode_held(b'0'), Some(false));
        assert_eq!(decode_held(b'-'), None);
    }

    #[test]
    fn durations_become_positive_milliseconds() {
        assert_eq!(millis(Duration::ZERO), "1");
        assert_eq!(millis(Duration::from_micros(300)), "1");
        assert_eq!(millis(Duration::from_millis(1500)), "1500");
        assert_eq!(millis(Duration::from_secs(86_400)), "86400000");
    }
}
