//! A bounded memory of Hawk nonces already used, so a request captured in flight cannot be
//! replayed (`hawk.nonce_cache_size`, off by default like upstream). A request is a replay when
//! the same token id, `ts` and nonce were seen before; the oldest entries are forgotten first,
//! so the protection covers the most recent `capacity` requests.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

type Key = [u8; 32];

/// The keys seen, and the order they came in (oldest first, for eviction).
#[derive(Default)]
struct Seen {
    set: HashSet<Key>,
    order: VecDeque<Key>,
}

pub struct NonceCache {
    capacity: usize,
    seen: Mutex<Seen>,
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        NonceCache {
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records the use; false when it was seen already (a replay).
    pub fn first_use(&self, id: &str, ts: u64, nonce: &str) -> bool {
        let mut h = Sha256::new();
        for part in [id.as_bytes(), &ts.to_be_bytes(), nonce.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let key: Key = h.finalize().into();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.set.insert(key) {
            return false;
        }
        seen.order.push_back(key);
        if seen.order.len() > self.capacity
            && let Some(old) = seen.order.pop_front()
        {
            seen.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_refused_within_capacity() {
        let c = NonceCache::new(3);
        assert!(c.first_use("id", 1, "n1"));
        assert!(!c.first_use("id", 1, "n1"));
        assert!(c.first_use("id", 2, "n1"), "another ts");
        assert!(c.first_use("other", 1, "n1"), "another token");
        // Capacity 3: the oldest is forgotten.
        assert!(c.first_use("id", 1, "n2"));
        assert!(c.first_use("id", 1, "n1"));
    }
}
