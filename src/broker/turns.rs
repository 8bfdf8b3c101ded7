//! Per-visitor order inside one process: the events of one anonymous
//! identifier are finished one after the other, in delivery order, however
//! many are handled at once. A turn is taken synchronously in the consume
//! loop (so in delivery order) and waited for in the delivery's task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::domain::AnonymousId;

/// The last turn taken for each visitor with events in hand.
#[derive(Default)]
pub struct Turns {
    last: Mutex<HashMap<AnonymousId, (u64, oneshot::Receiver<()>)>>,
    serial: AtomicU64,
}

/// One event's place in its visitor's line; dropping it lets the next one go.
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    _done: Option<oneshot::Sender<()>>,
    mine: Option<(Arc<Turns>, AnonymousId, u64)>,
}

impl Turns {
    /// The next turn for `visitor`; `None` (an event that needs no call) waits for nobody.
    pub fn take(self: &Arc<Self>, visitor: Option<&AnonymousId>) -> Turn {
        let Some(visitor) = visitor else {
            return Turn {
                after: None,
                _done: None,
                mine: None,
            };
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let (done, next) = oneshot::channel();
        let after = lock(&self.last)
            .insert(visitor.clone(), (serial, next))
            .map(|(_, receiver)| receiver);
        Turn {
            after,
            _done: Some(done),
            mine: Some((Arc::clone(self), visitor.clone(), serial)),
        }
    }

    /// Visitors with an event in hand (for tests).
    pub fn len(&self) -> usize {
        lock(&self.last).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Turn {
    /// Waits until the visitor's earlier events are finished (or dropped).
    pub async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            // A dropped sender means the earlier event is finished too.
            let _ = after.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The last in line leaves no entry behind.
        if let Some((turns, visitor, serial)) = self.mine.take() {
            let mut last = lock(&turns.last);
            if last.get(&visitor).is_some_and(|(s, _)| *s == serial) {
                last.remove(&visitor);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_visitors_events_finish_in_the_order_taken() {
        let turns = Arc::new(Turns::default());
        let visitor = AnonymousId::parse("a-1").unwrap();
        let other = AnonymousId::parse("a-2").unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The first takes longest; the second must still wait for it.
        for (n, delay) in [(1, 30), (2, 0), (3, 10)] {
            let mut turn = turns.take(Some(&visitor));
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                turn.wait().await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                order.lock().unwrap().push(n);
            }));
        }
        // Another visitor does not wait.
        let mut free = turns.take(Some(&other));
        tokio::time::timeout(Duration::from_millis(5), free.wait())
            .await
            .expect("another visitor's turn is not held up");
        drop(free);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
        assert!(turns.is_empty(), "no entry left behind");
    }
}
