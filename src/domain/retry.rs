//! The delayed-retry ladder: which step a message that failed transiently
//! takes next, or none when the ladder is used up.

use std::time::Duration;

/// `LINKER_RETRY_DELAYS`: one delay per step, each step its own retry queue.
/// Built only from distinct delays (the configuration refuses duplicates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryLadder(Vec<Duration>);

/// One step of the ladder: the message waits `delay`, then comes back with
/// `x-linker-attempts` = `attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStep {
    pub attempt: u32,
    pub delay: Duration,
}

impl RetryLadder {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self(delays)
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// The step after `attempts` delayed attempts; `None` once the ladder is
    /// used up. The only place that decides when retries are exhausted.
    pub fn next(&self, attempts: u32) -> Option<RetryStep> {
        let delay = *self.0.get(usize::try_from(attempts).ok()?)?;
        Some(RetryStep {
            attempt: attempts.checked_add(1)?,
            delay,
        })
    }
}

/// Canonical short form of a delay, used in queue names: `250ms`, `10s`, `1m`, `1h`.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_ends_after_its_last_step() {
        let ladder = RetryLadder::new(vec![Duration::from_secs(10), Duration::from_secs(60)]);
        assert_eq!(
            ladder.next(0),
            Some(RetryStep {
                attempt: 1,
                delay: Duration::from_secs(10)
            })
        );
        assert_eq!(
            ladder.next(1).map(|s| s.delay),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ladder.next(2), None);
        assert_eq!(ladder.next(u32::MAX), None);
        assert_eq!(RetryLadder::new(vec![]).next(0), None);
    }

    #[test]
    fn delay_labels_are_short() {
        assert_eq!(delay_label(Duration::from_millis(250)), "250ms");
        assert_eq!(delay_label(Duration::from_secs(90)), "90s");
        assert_eq!(delay_label(Duration::from_secs(3600)), "1h");
    }
}
