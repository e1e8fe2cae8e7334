//! What protects the tokenserver from a slow or hostile FxA and from clients that send bogus
//! tokens: a circuit breaker for FxA's `/v1/verify` (after repeated failures, fail fast for a
//! while instead of every request waiting out the timeout) and a short negative cache of tokens
//! FxA refused (a client retrying a bad token does not cause a call each time). Pure state
//! machines over explicit instants, so they are tested without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Consecutive transport failures (timeouts, 5xx, unreachable) that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit fails fast before one request may try FxA again.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
/// How long a token FxA refused is refused without asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Refused tokens remembered at most (a flood of distinct bogus tokens cannot grow it).
pub const NEGATIVE_CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether a request may call FxA now. After the open period, calls are let through again;
    /// one more failure re-opens the circuit at once.
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// FxA answered (whatever it said): it is reachable.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let was_open = self.open_until.is_some();
        if self.failures >= BREAKER_THRESHOLD || was_open {
            self.open_until = Some(now + BREAKER_OPEN_FOR);
        }
    }
}

/// Tokens FxA refused, by their SHA-256 (the tokens themselves are not kept).
#[derive(Debug, Default)]
pub struct NegativeCache {
    refused: HashMap<[u8; 32], Instant>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl NegativeCache {
    pub fn is_refused(&self, token: &str, now: Instant) -> bool {
        self.refused
            .get(&key(token))
            .is_some_and(|at| now.duration_since(*at) < NEGATIVE_TTL)
    }

    pub fn refuse(&mut self, token: &str, now: Instant) {
        if self.refused.len() >= NEGATIVE_CAPACITY {
            self.refused
                .retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
            if self.refused.len() >= NEGATIVE_CAPACITY {
                // Still full of fresh entries (a flood): forget them rather than grow.
                self.refused.clear();
            }
        }
        self.refused.insert(key(token), now);
    }

    pub fn len(&self) -> usize {
        self.refused.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
    }
}

/// Whether a bearer token has the shape of a JWT (three base64url parts): such tokens are
/// verified with FxA's public keys and never sent to `/v1/verify`.
pub fn is_jwt_shaped(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// Whether a non-JWT token could be an FxA opaque access token (FxA issues 64 hex digits);
/// anything else is refused without a call to FxA.
pub fn is_opaque_token_shaped(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_repeated_failures_and_half_opens_later() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            b.failed(t0);
            assert!(b.allows(t0));
        }
        b.failed(t0);
        assert!(!b.allows(t0));
        assert!(!b.allows(t0 + BREAKER_OPEN_FOR - Duration::from_millis(1)));
        let later = t0 + BREAKER_OPEN_FOR;
        assert!(b.allows(later));
        // The probe fails: open again at once.
        b.failed(later);
        assert!(!b.allows(later + Duration::from_secs(1)));
        // A probe that reaches FxA closes it.
        b.succeeded();
        assert!(b.allows(later + Duration::from_secs(1)));
        b.failed(later);
        assert!(
            b.allows(later),
            "one failure after success does not open it"
        );
    }

    #[test]
    fn negative_cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = NegativeCache::default();
        c.refuse("bad", t0);
        assert!(c.is_refused("bad", t0 + Duration::from_secs(59)));
        assert!(!c.is_refused("bad", t0 + NEGATIVE_TTL));
        assert!(!c.is_refused("other", t0));
        for i in 0..NEGATIVE_CAPACITY + 5 {
            c.refuse(&format!("t{i}"), t0);
        }
        assert!(c.len() <= NEGATIVE_CAPACITY);
    }

    #[test]
    fn token_shapes() {
        assert!(is_jwt_shaped("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a..c"));
        assert!(!is_jwt_shaped("a.b c.d"));
        assert!(is_opaque_token_shaped(&"0123456789abcdef".repeat(4)));
        assert!(!is_opaque_token_shaped("short"));
        assert!(!is_opaque_token_shaped(&"a".repeat(257)));
        assert!(!is_opaque_token_shaped("has space in it 123"));
    }
}
