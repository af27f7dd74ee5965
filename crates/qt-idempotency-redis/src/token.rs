//! Fencing tokens: what makes one claim distinguishable from every other.
//!
//! A token is 128 random bits from the thread-local CSPRNG (seeded from the OS), so two
//! claims on any number of processes and machines share a token with negligible probability
//! and no coordination. A counter or a timestamp would need a shared source to stay unique.

/// A new token.
pub fn new_token() -> u128 {
    rand::random::<u128>()
}

/// How a token is written in Redis: 32 lower-case hex digits.
pub fn token_text(token: u128) -> String {
    format!("{token:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_128_bit_hex_and_do_not_repeat() {
        let tokens: HashSet<String> = (0..10_000).map(|_| token_text(new_token())).collect();
        assert_eq!(tokens.len(), 10_000);
        for t in tokens.iter().take(100) {
            assert_eq!(t.len(), 32);
            assert!(
                t.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{t}"
            );
        }
    }

    #[test]
    fn tokens_from_many_threads_do_not_repeat() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..2_000).map(|_| new_token()).collect::<Vec<u128>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for t in h.join().expect("thread finishes") {
                assert!(all.insert(t));
            }
        }
    }
}
