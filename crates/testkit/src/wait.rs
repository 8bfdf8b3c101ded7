//! Polling for a condition with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

async fn poll<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after
/// `limit`, so a test that waits in vain fails instead of hanging.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        poll(limit, Duration::from_millis(20), check).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `check` every 10 ms; whether it held within `limit` (for callers
/// that report a failure themselves, like the benchmark).
pub async fn wait_until<F, Fut>(limit: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(limit, Duration::from_millis(10), check).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_or_times_out() {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(5), || {
                n += 1;
                async move { n >= 3 }
            })
            .await
        );
        assert!(!wait_until(Duration::from_millis(30), || async { false }).await);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn wait_for_panics_after_the_limit() {
        wait_for("nothing", Duration::from_millis(30), || async { false }).await;
    }
}
