//! A session's outbound queue: what the hub (through the worker's mailbox) hands the session,
//! waiting for the session task to write it.
//!
//! Why not a `tokio::sync::mpsc` channel: an idle session's queue is empty almost all the time,
//! and tokio's bounded channel allocates its shared state and a first block of 32 slots up
//! front — ~2.8 KB per connection (measured with heaptrack: the largest allocation of a session
//! after actix's connection buffers). This queue allocates nothing while empty, and gives all
//! its memory back whenever it drains: an idle session then holds none (keeping what the last
//! burst grew it to cost an idle connection ~720 bytes, heaptrack of 5,000 idle sessions), and a
//! busy one pays an allocator fast-path call when a push finds it empty.
//!
//! One consumer (the session task), any number of producers, bounded: a push beyond the bound
//! is refused and the caller closes the session as a slow consumer.
//!
//! The consumer is woken through an `AtomicWaker`, not a `tokio::sync::Notify`: with one
//! consumer there is no list of waiters to keep, and registering costs an atomic swap instead
//! of a lock and a list insertion (then a removal) for every turn of the session's loop.

use crate::hub::Outbound;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::Poll;

/// What an empty queue allocates on its first push (it gives it back when it drains).
const FIRST_CAPACITY: usize = 8;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its maximum: the session is not keeping up.
    Full,
}

/// A bounded multi-producer, single-consumer queue of [`Outbound`]s (see the module docs).
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    ready: AtomicWaker,
    max: usize,
    /// Set when the session ended: pushes are then dropped (nobody will read them).
    closed: AtomicBool,
}

impl Outbox {
    /// An empty queue that holds at most `max` items (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            ready: AtomicWaker::new(),
            max: max.max(1),
            closed: AtomicBool::new(false),
        }
    }

    /// Queue without waiting. Once [`Outbox::close`]d, items are dropped silently.
    pub fn try_push(&self, out: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.max {
            return Err(PushError::Full);
        }
        let was_empty = q.is_empty();
        if q.capacity() == 0 {
            // Room for a small burst at once: growing from the default of 4 one doubling at a
            // time was a realloc per burst (0.7 % of gateway samples at 90k deliveries/s).
            q.reserve(FIRST_CAPACITY);
        }
        q.push_back(out);
        drop(q);
        // The consumer registers, then looks at the queue once more before it sleeps, so only
        // the push that finds the queue empty needs to wake it: a push after that look wakes
        // the registered waker, a push before it is seen by the look.
        if was_empty {
            self.ready.wake();
        }
        Ok(())
    }

    /// The next item, waiting for one. Cancel-safe: an item is only taken in the poll that
    /// returns it, so dropping this future (a `select!` branch that lost) loses nothing.
    pub async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            if let Some(out) = self.pop() {
                return Poll::Ready(out);
            }
            self.ready.register(cx.waker());
            match self.pop() {
                Some(out) => Poll::Ready(out),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Wait until something is queued, without taking it (the flush window of
    /// `session.write_delay_ms` opens on it). Pushes into a queue that is not empty wake nobody,
    /// so a session waiting out its window is not woken by each frame that joins it.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if !self.is_empty() {
                return Poll::Ready(());
            }
            self.ready.register(cx.waker());
            if self.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Whether `n` more items fit (or, for more than the queue holds, whether it is empty).
    pub fn has_room(&self, n: usize) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.max - q.len() >= n.min(self.max)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Outbound> {
        self.pop()
    }

    fn pop(&self) -> Option<Outbound> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let out = q.pop_front();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        out
    }

    /// The session ended: drop what is queued and whatever comes later.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        *q = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;
    use std::sync::Arc;
    use std::time::Duration;

    fn item(i: usize) -> Outbound {
        Outbound::Direct(ByteString::from(i.to_string()))
    }

    fn queued(q: &Outbox) -> usize {
        q.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn text(out: Outbound) -> String {
        match out {
            Outbound::Direct(f) => f.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What a gap's next page asks before it is handed out (the hub's pacing).
    #[test]
    fn room_counts_what_still_fits_and_more_than_the_queue_holds_asks_for_empty() {
        let q = Outbox::new(4);
        assert!(q.has_room(3) && q.has_room(4) && q.has_room(10));
        assert_eq!(q.try_push(item(0)), Ok(()));
        assert!(q.has_room(3));
        assert!(!q.has_room(4) && !q.has_room(10));
        assert_eq!(q.try_push(item(1)), Ok(()));
        assert!(!q.has_room(3) && q.has_room(2));
        assert!(q.try_recv().is_some() && q.try_recv().is_some());
        assert!(q.has_room(10));
    }

    #[tokio::test]
    async fn items_from_another_thread_arrive_in_order_and_the_bound_holds() {
        let q = Arc::new(Outbox::new(100_000));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    assert_eq!(q.try_push(item(i)), Ok(()));
                }
            })
        };
        for i in 0..20_000 {
            let got = tokio::time::timeout(Duration::from_secs(5), q.recv()).await;
            let Ok(got) = got else {
                panic!("item {i} did not arrive");
            };
            assert_eq!(text(got), i.to_string());
        }
        assert!(producer.join().is_ok(), "the producer panicked");

        let small = Outbox::new(2);
        assert_eq!(small.try_push(item(0)), Ok(()));
        assert_eq!(small.try_push(item(1)), Ok(()));
        assert_eq!(small.try_push(item(2)), Err(PushError::Full));
        assert_eq!(queued(&small), 2);
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing_and_a_closed_queue_drops_pushes() {
        let q = Outbox::new(10);
        // A recv that loses a race (as a select! branch does) takes nothing.
        let lost = tokio::time::timeout(Duration::from_millis(20), q.recv()).await;
        assert!(lost.is_err());
        assert_eq!(q.try_push(item(7)), Ok(()));
        let got = tokio::time::timeout(Duration::from_secs(1), q.recv()).await;
        assert_eq!(got.map(text).ok().as_deref(), Some("7"));

        q.close();
        assert_eq!(q.try_push(item(8)), Ok(()));
        assert_eq!(queued(&q), 0);
    }

    #[tokio::test]
    async fn ready_waits_for_a_push_and_takes_nothing() {
        let q = Arc::new(Outbox::new(10));
        let waiting = tokio::time::timeout(Duration::from_millis(20), q.ready()).await;
        assert!(waiting.is_err(), "ready on an empty queue");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.try_push(item(1)), Ok(()));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(woke, Ok(Ok(()))), "the push did not wake ready");
        // Still queued, and ready again at once.
        assert!(!q.is_empty());
        let again = tokio::time::timeout(Duration::from_secs(1), q.ready()).await;
        assert!(again.is_ok());
        assert_eq!(q.try_recv().map(text).as_deref(), Some("1"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let q = Outbox::new(10_000);
        for i in 0..5_000 {
            assert_eq!(q.try_push(item(i)), Ok(()));
        }
        for _ in 0..5_000 {
            q.recv().await;
        }
        let capacity = || q.queue.lock().unwrap_or_else(|p| p.into_inner()).capacity();
        assert_eq!(capacity(), 0, "capacity kept after draining a burst");
        // A single item (an idle session's occasional presence event) is given back too.
        assert_eq!(q.try_push(item(1)), Ok(()));
        assert!(capacity() > 0);
        q.recv().await;
        assert_eq!(capacity(), 0, "capacity kept after draining one item");
    }
}
