//! Pairs seen linked, so repeated logins make no call (contract section 3).
//!
//! Bounded by capacity and TTL. Keys are 128-bit keyed hashes of the pair:
//! 24 bytes per entry instead of two strings, and with random keys per
//! process a false hit needs a 128-bit collision.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::LinkEvent;

type Key = u128;

pub struct LinkedCache {
    ttl: Duration,
    capacity: usize,
    hashers: (RandomState, RandomState),
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    expiry: HashMap<Key, Instant>,
    /// Insertion order, for eviction; an entry refreshed later leaves a stale
    /// record here, recognised by its expiry not matching the map.
    order: VecDeque<(Key, Instant)>,
}

impl LinkedCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            capacity,
            hashers: (RandomState::new(), RandomState::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn key(&self, event: &LinkEvent) -> Key {
        let half = |state: &RandomState| {
            let mut h = state.build_hasher();
            event.anonymous.as_str().hash(&mut h);
            event.user.as_str().hash(&mut h);
            h.finish()
        };
        (u128::from(half(&self.hashers.0)) << 64) | u128::from(half(&self.hashers.1))
    }

    pub fn contains(&self, event: &LinkEvent) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = self.key(event);
        let now = Instant::now();
        let inner = self.lock();
        inner.expiry.get(&key).is_some_and(|expires| *expires > now)
    }

    pub fn insert(&self, event: &LinkEvent) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let key = self.key(event);
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut inner = self.lock();
        inner.expiry.insert(key, expires);
        inner.order.push_back((key, expires));
        // Evict expired entries from the front, then the oldest beyond capacity.
        while let Some(&(old_key, old_expires)) = inner.order.front() {
            let over_capacity = inner.expiry.len() > self.capacity;
            if old_expires > now && !over_capacity {
                break;
            }
            inner.order.pop_front();
            if inner.expiry.get(&old_key) == Some(&old_expires) {
                inner.expiry.remove(&old_key);
            }
        }
        // Stale records pile up only when the same pairs are refreshed often.
        if inner.order.len() > self.capacity.saturating_mul(2) + 16 {
            let Inner { expiry, order } = &mut *inner;
            order.retain(|(k, e)| expiry.get(k) == Some(e));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // in a way that matters (worst case a missed hit), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AnonymousId, UserId};

    fn pair(a: &str, u: &str) -> LinkEvent {
        LinkEvent {
            anonymous: AnonymousId::parse(a).unwrap(),
            user: UserId::parse(u).unwrap(),
        }
    }

    #[test]
    fn remembers_pairs_not_halves() {
        let cache = LinkedCache::new(10, Duration::from_secs(60));
        cache.insert(&pair("a", "u"));
        assert!(cache.contains(&pair("a", "u")));
        assert!(!cache.contains(&pair("a", "v")));
        assert!(!cache.contains(&pair("b", "u")));
    }

    #[test]
    fn bounded_by_capacity() {
        let cache = LinkedCache::new(100, Duration::from_secs(60));
        for i in 0..1000 {
            cache.insert(&pair(&format!("a{i}"), "u"));
        }
        assert_eq!(cache.len(), 100);
        assert!(cache.contains(&pair("a999", "u")));
        assert!(!cache.contains(&pair("a0", "u")));
    }

    #[test]
    fn refreshing_does_not_grow_without_bound() {
        let cache = LinkedCache::new(10, Duration::from_secs(60));
        for _ in 0..10_000 {
            cache.insert(&pair("a", "u"));
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.lock().order.len() <= 2 * 10 + 16 + 1);
    }

    #[test]
    fn entries_expire() {
        let cache = LinkedCache::new(10, Duration::from_millis(20));
        cache.insert(&pair("a", "u"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.contains(&pair("a", "u")));
    }
}
