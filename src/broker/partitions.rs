//! Partitions across replicas: which replica claims each partition first
//! (consumer priorities by rendezvous hashing), and which partitions this
//! replica is actually working (the broker keeps one active consumer each).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

/// A partition counts as this replica's while it delivered within this window.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

/// The `x-priority` of this replica's consumer on `partition`: rendezvous
/// (highest-random-weight) hashing of replica × partition. Every replica
/// computes the same weights with no coordination, each partition is claimed
/// by the replica with the highest weight, and a joining or leaving replica
/// moves only the partitions it wins or held. RabbitMQ 4.0+ hands a single
/// active consumer over to a higher-priority one once the outgoing consumer's
/// unacked deliveries are settled; 3.10 keeps the first consumer.
pub fn consumer_priority(replica_id: &str, partition: u16) -> i32 {
    let mut hasher = Sha256::new();
    hasher.update(replica_id.as_bytes());
    hasher.update(partition.to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 4];
    first.copy_from_slice(&digest[..4]);
    // 1..=1_000_000: positive, and far from the limits of the broker's integer.
    i32::try_from(u32::from_be_bytes(first) % 1_000_000).unwrap_or(0) + 1
}

/// When each partition last delivered to this replica.
pub struct PartitionActivity {
    started: Instant,
    /// Milliseconds since `started` of the last delivery, plus 1 (0: never).
    last: Vec<AtomicU64>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl PartitionActivity {
    pub fn new(partitions: usize, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        Self {
            started: Instant::now(),
            last: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            metrics,
            readiness,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn delivered(&self, partition: u16) {
        if let Some(slot) = self.last.get(usize::from(partition)) {
            slot.store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// The partitions that delivered within [`ACTIVE_WINDOW`].
    pub fn active(&self) -> Vec<u16> {
        let now = self.now_ms();
        let window = u64::try_from(ACTIVE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        (0u16..)
            .zip(&self.last)
            .filter(|(_, slot)| {
                let at = slot.load(Ordering::Relaxed);
                at != 0 && now.saturating_add(1).saturating_sub(at) <= window
            })
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Publishes [`PartitionActivity::active`] to the gauge and `/readyz`.
    pub fn refresh(&self) {
        if self.last.is_empty() {
            return;
        }
        let active = self.active();
        self.metrics
            .partitions_active
            .set(i64::try_from(active.len()).unwrap_or(i64::MAX));
        self.readiness.set_partitions_active(Some(active));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_partitions_and_moves_few_on_a_join() {
        fn owner(replicas: &[&'static str], partition: u16) -> &'static str {
            replicas
                .iter()
                .copied()
                .max_by_key(|r| consumer_priority(r, partition))
                .unwrap()
        }
        let three = ["pod-a", "pod-b", "pod-c"];
        let mut counts = std::collections::HashMap::new();
        for p in 0..64 {
            *counts.entry(owner(&three, p)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "every replica owns some: {counts:?}");
        assert!(counts.values().all(|&n| n >= 10), "{counts:?}");
        // A fourth replica takes partitions only for itself: none move between the others.
        let four = ["pod-a", "pod-b", "pod-c", "pod-d"];
        for p in 0..64 {
            let after = owner(&four, p);
            assert!(after == owner(&three, p) || after == "pod-d");
        }
        assert!((1..=1_000_000).contains(&consumer_priority("x", 0)));
    }

    #[test]
    fn only_recent_deliveries_count_as_active() {
        let metrics = Arc::new(Metrics::new(&[]));
        let activity =
            PartitionActivity::new(4, metrics.clone(), Arc::new(Readiness::new(metrics)));
        assert!(activity.active().is_empty());
        activity.delivered(2);
        activity.delivered(9); // out of range: ignored
        assert_eq!(activity.active(), [2]);
    }
}
