//! Concurrent lookups of the same kind answered by one query.
//!
//! Why: every WebSocket connect reads its token, then the user's threads, then the heads of the
//! threads new to the node — three database round trips per connect, each also paying sqlx's
//! check of the connection when it goes back to the pool. When connects arrive together (a
//! reconnect storm, a deploy), their lookups queue here and go out as one `… IN (…)` query per
//! batch. Nothing waits for a batch to fill: whatever is queued when a query slot is free goes
//! out, so a lone lookup costs what it did (one query), and a crowd shares round trips.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Queries of one batch size bound (keeps statements small).
pub const MAX_BATCH: usize = 256;
/// Batch queries in flight at once per kind of lookup. One: while it runs, the crowd gathers
/// into the next batch, and fewer, larger queries cost the database and the node less per
/// lookup. A lone lookup still goes out at once. Measured with `confab-bench idle` (19,000
/// connects, 2 rounds each pair): 4 → 2 took the machine's CPU per connect down 7-8% and 2 → 1
/// another 11-14% (connects/s +5-12% each step, within this machine's noise on its own).
const MAX_INFLIGHT: usize = 1;

/// The lookup failed as a batch; the caller retries alone (and gets its own, typed error).
#[derive(Debug, PartialEq, Eq)]
pub struct BatchFailed;

type Waiter<K, V> = (K, oneshot::Sender<Result<Option<V>, BatchFailed>>);

/// A queue of lookups by key, answered in batches by one function (see the module docs).
pub struct Coalescer<K, V> {
    tx: mpsc::UnboundedSender<Waiter<K, V>>,
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Start the batching task on the current tokio runtime. `lookup` gets distinct keys (at
    /// most [`MAX_BATCH`]) and returns what it found; a key it leaves out is answered `None`.
    pub fn new<F, Fut, E>(lookup: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, Arc::new(lookup)));
        Self { tx }
    }

    /// Look `key` up together with whatever else is queued.
    pub async fn get(&self, key: K) -> Result<Option<V>, BatchFailed> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((key, tx)).map_err(|_| BatchFailed)?;
        rx.await.unwrap_or(Err(BatchFailed))
    }
}

async fn run<K, V, F, Fut, E>(mut rx: mpsc::UnboundedReceiver<Waiter<K, V>>, lookup: Arc<F>)
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    loop {
        // Take a query slot first: while all are busy, lookups pile up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut waiters = Vec::new();
        if rx.recv_many(&mut waiters, MAX_BATCH).await == 0 {
            return;
        }
        let mut keys: Vec<K> = waiters.iter().map(|(k, _)| k.clone()).collect();
        dedup(&mut keys);
        let query = lookup(keys);
        tokio::spawn(async move {
            let found = query.await;
            if let Err(e) = &found {
                tracing::debug!(error = %e, n = waiters.len(), "batched lookup failed");
            }
            for (key, tx) in waiters {
                let answer = match &found {
                    Ok(map) => Ok(map.get(&key).cloned()),
                    Err(_) => Err(BatchFailed),
                };
                let _ = tx.send(answer);
            }
            drop(slot);
        });
    }
}

fn dedup<K: Eq + Hash + Clone>(keys: &mut Vec<K>) {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    keys.retain(|k| seen.insert(k.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_crowd_shares_queries_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let c: Arc<Coalescer<u32, String>> = Arc::new(Coalescer::new(move |keys: Vec<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the crowd queues behind the first queries.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), keys.len(), "keys of a batch are distinct");
                Ok::<_, String>(
                    keys.into_iter()
                        .filter(|k| k % 7 != 0)
                        .map(|k| (k, format!("v{k}")))
                        .collect(),
                )
            }
        }));
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let c = c.clone();
            // Some keys asked twice at once.
            let key = i % 400;
            tasks.push(tokio::spawn(async move { (key, c.get(key).await) }));
        }
        for t in tasks {
            let (key, got) = t.await.unwrap_or_else(|e| panic!("{e}"));
            let want = (key % 7 != 0).then(|| format!("v{key}"));
            assert_eq!(got, Ok(want), "key {key}");
        }
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 50, "500 lookups took {n} queries");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_lookup_in_it() {
        let c: Coalescer<u32, u32> =
            Coalescer::new(|_keys: Vec<u32>| async { Err::<HashMap<u32, u32>, _>("down") });
        assert_eq!(c.get(1).await, Err(BatchFailed));
    }
}
