//! Coalesced acks: one `basic.ack multiple` over a settled prefix of
//! delivery tags, never covering a delivery still in hand (BENCHMARKS.md,
//! "coalesced acks").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{mpsc, oneshot};

/// How long a settled delivery may wait for the ones delivered before it, so
/// that one `basic.ack` with `multiple` covers them all. Past that it is acked
/// on its own. See BENCHMARKS.md ("coalesced acks").
const ACK_COALESCE_WAIT: Duration = Duration::from_millis(2);
/// A settled prefix shorter than this waits up to [`ACK_LINGER`] for more:
/// fewer, larger acks cost the broker much less per message.
const ACK_BATCH: usize = 64;
const ACK_LINGER: Duration = Duration::from_micros(1000);

struct AckRequest {
    tag: u64,
    done: oneshot::Sender<Result<(), String>>,
}

/// Acks of one consuming channel, coalesced.
///
/// RabbitMQ's cost per ack (above all for quorum queues: one settle command
/// in the Raft log per `basic.ack`) dominates the broker's work per message.
/// Delivery tags of a channel are consecutive, so when every delivery from
/// the lowest unsettled tag up to `T` has been settled, one `basic.ack`
/// with `multiple=true` and tag `T` acks exactly those: a delivery that is
/// still being handled, or deliberately left unacked (its copy failed), is
/// never covered, because the prefix stops at it. Deliveries settled above
/// such a gap are acked one by one after [`ACK_COALESCE_WAIT`]. A task's
/// `ack` returns once its ack frame is written, as with a plain ack, so
/// shutdown drains acks with the tasks.
#[derive(Clone)]
pub struct AckBatcher {
    tx: mpsc::UnboundedSender<AckRequest>,
}

impl AckBatcher {
    /// `first_tag`: the channel's first delivery tag seen by this consumer.
    pub fn start(channel: Channel, first_tag: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(ack_loop(
            move |tag, multiple| {
                let channel = channel.clone();
                async move { send_ack(&channel, tag, multiple).await }
            },
            first_tag,
            rx,
        ));
        Self { tx }
    }

    /// Acks the delivery `tag`; returns once the ack (alone or with others) is written.
    pub async fn ack(&self, tag: u64) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.tx
            .send(AckRequest { tag, done })
            .map_err(|_| "the ack batcher stopped".to_owned())?;
        written
            .await
            .unwrap_or_else(|_| Err("the ack batcher stopped".to_owned()))
    }
}

async fn send_ack(channel: &Channel, tag: u64, multiple: bool) -> Result<(), String> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple })
        .await
        .map_err(|e| e.to_string())
}

/// Runs until every [`AckBatcher`] handle is dropped and every ack is written.
/// `send(tag, multiple)` writes one `basic.ack`.
async fn ack_loop<F, Fut>(send: F, first_tag: u64, mut rx: mpsc::UnboundedReceiver<AckRequest>)
where
    F: Fn(u64, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // Lowest tag not known to be settled.
    let mut low = first_tag;
    // Settled by the handler, ack not written yet, with when it arrived.
    type Done = oneshot::Sender<Result<(), String>>;
    let mut waiting: BTreeMap<u64, (tokio::time::Instant, Done)> = BTreeMap::new();
    // When each waiting tag arrived (oldest first); entries acked meanwhile are skipped.
    let mut arrivals: VecDeque<(tokio::time::Instant, u64)> = VecDeque::new();
    // Above `low`, already acked on their own.
    let mut acked_alone: BTreeSet<u64> = BTreeSet::new();
    let mut open = true;
    // When a short settled prefix is to be acked anyway.
    let mut linger_until: Option<tokio::time::Instant> = None;
    while open || !waiting.is_empty() {
        let due = arrivals
            .front()
            .map(|(at, _)| *at + ACK_COALESCE_WAIT)
            .into_iter()
            .chain(linger_until)
            .min();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            request = rx.recv(), if open => match request {
                Some(AckRequest { tag, done }) => {
                    let now = tokio::time::Instant::now();
                    arrivals.push_back((now, tag));
                    waiting.insert(tag, (now, done));
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {}
        }
        // Everything that queued up meanwhile joins this batch.
        while let Ok(AckRequest { tag, done }) = rx.try_recv() {
            let now = tokio::time::Instant::now();
            arrivals.push_back((now, tag));
            waiting.insert(tag, (now, done));
        }
        // The settled prefix: one ack with `multiple`, once it is long enough
        // or its oldest delivery has lingered long enough.
        let mut end = low;
        let mut count = 0;
        let mut oldest: Option<tokio::time::Instant> = None;
        loop {
            if let Some((at, _)) = waiting.get(&end) {
                count += 1;
                oldest = Some(oldest.map_or(*at, |o: tokio::time::Instant| o.min(*at)));
            } else if !acked_alone.contains(&end) {
                break;
            }
            end += 1;
        }
        let now = tokio::time::Instant::now();
        let ready = !open || count >= ACK_BATCH || oldest.is_some_and(|at| at + ACK_LINGER <= now);
        linger_until = match oldest {
            Some(at) if !ready => Some(at + ACK_LINGER),
            _ => None,
        };
        let mut top = None;
        let mut covered = Vec::new();
        while ready && low < end {
            if let Some((_, done)) = waiting.remove(&low) {
                top = Some(low);
                covered.push(done);
            } else {
                acked_alone.remove(&low);
            }
            low += 1;
        }
        if let Some(tag) = top {
            let written = send(tag, true).await;
            for done in covered {
                let _ = done.send(written.clone());
            }
        }
        // Past the wait (or at the end): one by one, written together.
        let now = tokio::time::Instant::now();
        let mut alone = Vec::new();
        while let Some(&(at, tag)) = arrivals.front() {
            if !waiting.contains_key(&tag) {
                arrivals.pop_front();
                continue;
            }
            if open && at + ACK_COALESCE_WAIT > now {
                break;
            }
            arrivals.pop_front();
            if let Some((_, done)) = waiting.remove(&tag) {
                acked_alone.insert(tag);
                alone.push((done, send(tag, false)));
            }
        }
        if !alone.is_empty() {
            let (dones, writes): (Vec<_>, Vec<_>) = alone.into_iter().unzip();
            let results = futures_util::future::join_all(writes).await;
            for (done, written) in dones.into_iter().zip(results) {
                let _ = done.send(written);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<(u64, bool)>>>;

    fn batcher() -> (AckBatcher, Log, tokio::task::JoinHandle<()>) {
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = log.clone();
        let task = tokio::spawn(ack_loop(
            move |tag, multiple| {
                sent.lock().unwrap().push((tag, multiple));
                async { Ok(()) }
            },
            1,
            rx,
        ));
        (AckBatcher { tx }, log, task)
    }

    /// Which tags a sequence of basic.ack frames acknowledges, as the broker sees it.
    fn acked(log: &[(u64, bool)], delivered: u64) -> Vec<u64> {
        let mut outstanding: BTreeSet<u64> = (1..=delivered).collect();
        let mut out = Vec::new();
        for &(tag, multiple) in log {
            assert!(outstanding.contains(&tag), "ack of unknown tag {tag}");
            if multiple {
                let covered: Vec<u64> = outstanding.range(..=tag).copied().collect();
                for t in covered {
                    outstanding.remove(&t);
                    out.push(t);
                }
            } else {
                outstanding.remove(&tag);
                out.push(tag);
            }
        }
        out.sort_unstable();
        out
    }

    #[tokio::test]
    async fn a_settled_prefix_is_one_ack() {
        let (acks, log, task) = batcher();
        let mut waits = Vec::new();
        for tag in [3, 1, 2, 4] {
            let acks = acks.clone();
            waits.push(tokio::spawn(async move { acks.ack(tag).await }));
            tokio::task::yield_now().await;
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        drop(acks);
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(acked(&log, 4), vec![1, 2, 3, 4]);
        assert!(log.len() < 4, "expected coalesced acks, got {log:?}");
    }

    #[tokio::test]
    async fn an_unsettled_delivery_is_never_covered() {
        let (acks, log, task) = batcher();
        // Tag 2 is still being handled (or left unacked on purpose): 1 and 3..=5 settle.
        let mut waits = Vec::new();
        for tag in [1, 3, 4, 5] {
            let acks = acks.clone();
            waits.push(tokio::spawn(async move { acks.ack(tag).await }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let sent = log.lock().unwrap().clone();
        assert_eq!(acked(&sent, 5), vec![1, 3, 4, 5]);
        // 2 settles late: acked alone; nothing is acked twice.
        acks.ack(2).await.unwrap();
        // Then 6: the prefix has moved past the tags acked alone.
        acks.ack(6).await.unwrap();
        drop(acks);
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(acked(&log, 6), vec![1, 2, 3, 4, 5, 6]);
    }
}
