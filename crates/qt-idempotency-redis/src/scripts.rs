//! The three Lua scripts that make claims atomic, and what their replies mean.
//!
//! A claim key holds `inflight:<token>` while a worker runs the message (expiring with the
//! lease) and `done:<token>` once it completed (expiring with the idempotency window). Every
//! script compares the stored token with the caller's, so a worker whose lease ran out can
//! neither complete nor release a claim that another worker holds now.
//!
//! Each script answers the same way when sent twice with the same token (a claim that finds
//! its own `inflight:<token>` is acquired, a complete that finds its own `done:<token>` held),
//! so resending a command after `NOSCRIPT` can never turn one worker's claim against itself.

use redis::{Cmd, Script};

const CLAIM: &str = r"
-- KEYS[1]: claim key. ARGV[1]: fencing token. ARGV[2]: lease in milliseconds.
-- 1: acquired, 0: another claim holds it, 2: completed within the window.
local mine = 'inflight:' .. ARGV[1]
if redis.call('SET', KEYS[1], mine, 'NX', 'PX', ARGV[2]) then
  return 1
end
local held = redis.call('GET', KEYS[1])
if held == mine then
  return 1
end
if held == false or string.sub(held, 1, 9) == 'inflight:' then
  return 0
end
if string.sub(held, 1, 5) == 'done:' then
  return 2
end
return redis.error_reply('qt-idempotency: ' .. KEYS[1] ..
  ' holds a value qt did not write; delete the key or use another idempotency.key_prefix')
";

const COMPLETE: &str = r"
-- KEYS[1]: claim key. ARGV[1]: fencing token. ARGV[2]: idempotency window in milliseconds.
-- 1: the token held the claim, which is now done for the window. 0: it did not; untouched.
local held = redis.call('GET', KEYS[1])
if held == 'inflight:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == 'done:' .. ARGV[1] then
  return 1
end
return 0
";

const RELEASE: &str = r"
-- KEYS[1]: claim key. ARGV[1]: fencing token.
-- 1: the token held the claim, which is now deleted. 0: it did not; untouched.
if redis.call('GET', KEYS[1]) == 'inflight:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
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

    /// `EVALSHA <sha> 1 <key> <args...>`.
    pub fn call(&self, key: &str, args: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(1).arg(key);
        for a in args {
            cmd.arg(*a);
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

/// What the claim script answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimReply {
    Acquired,
    InFlight,
    Completed,
}

impl ClaimReply {
    pub fn decode(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Acquired),
            0 => Some(Self::InFlight),
            2 => Some(Self::Completed),
            _ => None,
        }
    }
}

/// Whether a complete or release script found the caller's token.
pub fn decode_held(code: i64) -> Option<bool> {
    match code {
        1 => Some(true),
        0 => Some(false),
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

    #[test]
    fn evalsha_carries_one_key_and_the_arguments() {
        let scripts = Scripts::new();
        let cmd = scripts.claim.call("p:t:k", &["tok", "1500"]);
        let packed = String::from_utf8(cmd.get_packed_command()).expect("ascii");
        let parts: Vec<&str> = packed.split("\r\n").filter(|p| !p.starts_with(['*', '$'])).collect();
        assert_eq!(
            parts[..6],
            ["EVALSHA", scripts.claim.sha.as_str(), "1", "p:t:k", "tok", "1500"]
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
        assert_eq!(ClaimReply::decode(1), Some(ClaimReply::Acquired));
        assert_eq!(ClaimReply::decode(0), Some(ClaimReply::InFlight));
        assert_eq!(ClaimReply::decode(2), Some(ClaimReply::Completed));
        assert_eq!(ClaimReply::decode(3), None);
        assert_eq!(decode_held(1), Some(true));
        assert_eq!(decode_held(0), Some(false));
        assert_eq!(decode_held(-1), None);
    }

    #[test]
    fn durations_become_positive_milliseconds() {
        assert_eq!(millis(Duration::ZERO), "1");
        assert_eq!(millis(Duration::from_micros(300)), "1");
        assert_eq!(millis(Duration::from_millis(1500)), "1500");
        assert_eq!(millis(Duration::from_secs(86_400)), "86400000");
    }
}
