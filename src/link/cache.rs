//! Pairs seen linked, so repeated logins make no call (docs/interface.md, "Outcomes").
//!
//! Bounded by capacity and TTL. Keys are 128-bit keyed hashes of the pair:
//! 24 bytes per entry (key and expiry) instead of two strings, and with random
//! keys per process a false hit needs a 128-bit collision.
//!
//! Memory is fixed from the start: the map is allocated for twice the
//! capacity, so the churn of evictions (deleted slots) never makes it double
//! in size, and peak memory does not depend on how long the worker runs.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::LinkEvent;

/// A 128-bit keyed hash of the pair, as two halves (8-byte aligned, so an
/// entry with its expiry takes 24 bytes, not 32 as with `u128` and `Instant`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 ^ self.1);
    }
}

/// Milliseconds since the cache was created.
type Expiry = u64;

/// Keys are already keyed hashes: the map needs no second SipHash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for `Key`; FNV-1a keeps it correct for anything else.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type KeyMap = HashMap<Key, Expiry, BuildHasherDefault<KeyHasher>>;

/// Up to this capacity the map and the order queue are allocated up front.
const PREALLOCATE_UP_TO: usize = 1 << 20;

pub struct LinkedCache {
    ttl: Duration,
    /// `ttl` in whole milliseconds, rounded up.
    ttl_ms: u64,
    epoch: Instant,
    capacity: usize,
    hashers: (RandomState, RandomState),
    inner: Mutex<Inner>,
}

struct Inner {
    expiry: KeyMap,
    /// Insertion order, for eviction; an entry refreshed later leaves a stale
    /// record here, recognised by its expiry not matching the map.
    order: VecDeque<(Key, Expiry)>,
}

impl LinkedCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let reserve = capacity.min(PREALLOCATE_UP_TO);
        Self {
            ttl,
            ttl_ms: u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            capacity,
            hashers: (RandomState::new(), RandomState::new()),
            inner: Mutex::new(Inner {
                expiry: KeyMap::with_capacity_and_hasher(
                    reserve.saturating_mul(2),
                    Default::default(),
                ),
                order: VecDeque::with_capacity(reserve.saturating_add(1)),
            }),
        }
    }

    fn now_ms(&self) -> Expiry {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn key(&self, event: &LinkEvent) -> Key {
        let half = |state: &RandomState| {
            let mut h = state.build_hasher();
            event.anonymous.as_str().hash(&mut h);
            event.user.as_str().hash(&mut h);
            h.finish()
        };
        Key(half(&self.hashers.0), half(&self.hashers.1))
    }

    pub fn contains(&self, event: &LinkEvent) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = self.key(event);
        let now = self.now_ms();
        let inner = self.lock();
        inner.expiry.get(&key).is_some_and(|expires| *expires > now)
    }

    pub fn insert(&self, event: &LinkEvent) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let key = self.key(event);
        let now = self.now_ms();
        let expires = now.saturating_add(self.ttl_ms);
        let mut inner = self.lock();
        // Refreshed within the same millisecond: its record is already queued.
        if inner.expiry.insert(key, expires) != Some(expires) {
            inner.order.push_back((key, expires));
        }
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
    fn memory_is_allocated_once() {
        let cache = LinkedCache::new(1000, Duration::from_secs(60));
        let (map, order) = {
            let inner = cache.lock();
            (inner.expiry.capacity(), inner.order.capacity())
        };
        // Many times the capacity in distinct pairs: evictions leave deleted
        // slots behind, which must not make the table grow.
        for i in 0..20_000 {
            cache.insert(&pair(&format!("a{i}"), "u"));
        }
        let inner = cache.lock();
        assert_eq!(inner.expiry.len(), 1000);
        // `capacity()` is items + free slots; deleted slots lower it a little,
        // a reallocation would about double it.
        assert!(
            inner.expiry.capacity() <= map,
            "{} > {map}",
            inner.expiry.capacity()
        );
        assert_eq!(inner.order.capacity(), order);
    }

    #[test]
    fn entries_expire() {
        let cache = LinkedCache::new(10, Duration::from_millis(20));
        cache.insert(&pair("a", "u"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.contains(&pair("a", "u")));
    }
}
