//! The in-memory identity-link store.
//!
//! Sharded by anonymous id so concurrent requests for different visitors do
//! not contend on one lock. Each method takes and releases its shard lock
//! itself: the check and the create are separate calls on purpose, which is
//! what leaves the race window open.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SHARDS: usize = 32;

/// One stored link, as served by `GET /_sim/links`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SimLink {
    pub anonymous_identifier: String,
    pub user_identifier: String,
    /// Always `copy_once`.
    #[serde(rename = "type")]
    pub link_type: String,
    /// Always `conversion`.
    pub reason: String,
    /// RFC 3339.
    pub created_at: String,
}

struct Link {
    user: String,
    created_at: SystemTime,
    /// Global creation order, so listings are stable across shards.
    seq: u64,
}

/// Links by anonymous id, for the ids that hash to one shard.
type Shard = HashMap<String, Vec<Link>>;

pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    seq: AtomicU64,
}

impl Store {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            seq: AtomicU64::new(0),
        }
    }

    fn shard(&self, anonymous: &str) -> MutexGuard<'_, Shard> {
        // Truncation is fine: only the low bits pick the shard.
        let index = self.hasher.hash_one(anonymous) as usize % self.shards.len();
        // A panic elsewhere must not take the simulator down with it.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The "list links for this anonymous id" step of the workflow.
    pub fn is_linked(&self, anonymous: &str, user: &str) -> bool {
        self.shard(anonymous)
            .get(anonymous)
            .is_some_and(|links| links.iter().any(|l| l.user == user))
    }

    /// The "create link" step. Always creates; returns true when the pair
    /// was already linked, i.e. this link is a duplicate.
    pub fn create(&self, anonymous: &str, user: &str) -> bool {
        let link = Link {
            user: user.to_owned(),
            created_at: SystemTime::now(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        let mut shard = self.shard(anonymous);
        match shard.get_mut(anonymous) {
            Some(links) => {
                let duplicate = links.iter().any(|l| l.user == user);
                links.push(link);
                duplicate
            }
            None => {
                shard.insert(anonymous.to_owned(), vec![link]);
                false
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(PoisonError::into_inner);
                shard.values().map(|links| links.len() as u64).sum::<u64>()
            })
            .sum()
    }

    /// All links, oldest first.
    pub fn snapshot(&self) -> Vec<SimLink> {
        let mut all: Vec<(u64, SimLink)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (anonymous, links) in shard.iter() {
                all.extend(links.iter().map(|l| {
                    (
                        l.seq,
                        SimLink {
                            anonymous_identifier: anonymous.clone(),
                            user_identifier: l.user.clone(),
                            link_type: "copy_once".to_owned(),
                            reason: "conversion".to_owned(),
                            created_at: rfc3339(l.created_at),
                        },
                    )
                }));
            }
        }
        all.sort_unstable_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, link)| link).collect()
    }

    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    // Formatting a UTC time as RFC 3339 only fails for years past 9999.
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
