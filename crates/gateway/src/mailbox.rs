//! Hand-off of deliveries from the broker's thread to the worker threads that run the sessions.
//!
//! Why it exists: the broker's reader runs on one thread and the sessions on the actix workers.
//! Queueing into a session's queue straight from the reader wakes that session's task *across
//! threads* — a syscall to wake the worker and a context switch per delivery, which profiles
//! showed as about half of a node's CPU under fan-out load. Instead, everything for the sessions
//! of one worker goes into that worker's mailbox, and only the post that finds the mailbox empty
//! wakes the worker. The worker's own task then queues each delivery into its session's queue,
//! where waking the session is a same-thread operation. Under load one wake-up carries hundreds
//! of deliveries; when idle, latency is one wake-up, as before.
//!
//! Order is kept: every push to a session goes through its worker's mailbox, first in, first out.
//!
//! A node serving on one thread (`server.single_thread`) has no worker threads, and its sessions
//! take no mailbox: the broker's reader runs on their thread and queues to them itself.

use crate::hub::{Outbound, SessionShared};
use crate::outbox::Outbox;
use prometheus::IntCounter;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A session's queue as the hub sees it: where its frames go and how to close it.
#[derive(Debug)]
pub struct Port {
    outbox: Arc<Outbox>,
    shared: Arc<SessionShared>,
    slow_consumers: IntCounter,
    /// The mailbox of the worker running the session; `None` queues directly (a session not
    /// on an actix worker, as in unit tests of the hub).
    mailbox: Option<Arc<Mailbox>>,
}

impl Port {
    /// A port over a session's queue; `mailbox` is its worker's (see [`Mailbox::current`]).
    pub fn new(
        outbox: Arc<Outbox>,
        shared: Arc<SessionShared>,
        slow_consumers: IntCounter,
        mailbox: Option<Arc<Mailbox>>,
    ) -> Self {
        Self {
            outbox,
            shared,
            slow_consumers,
            mailbox,
        }
    }

    /// The session's shared state (to close it).
    pub fn shared(&self) -> &Arc<SessionShared> {
        &self.shared
    }

    /// Whether `n` more frames would fit in the session's queue now: its worker's mailbox holds
    /// nothing for anyone (it may be busy with other sessions' deliveries: a hint for pacing,
    /// erring on "not yet") and the queue has room for `n` (or is empty, if it holds fewer).
    pub fn has_room(&self, n: usize) -> bool {
        self.mailbox.as_ref().is_none_or(|m| m.is_empty()) && self.outbox.has_room(n)
    }

    /// Hand a frame to the session: through its worker's mailbox, or directly.
    pub fn push(self: &Arc<Self>, out: Outbound) {
        match &self.mailbox {
            Some(mb) => mb.post(self.clone(), out),
            None => self.push_now(out),
        }
    }

    /// Queue without waiting; a full queue closes the session as a slow consumer (it resumes
    /// from its last `seq`, so nothing is silently lost).
    fn push_now(&self, out: Outbound) {
        if self.outbox.try_push(out).is_err() {
            self.overflow();
        }
    }

    fn overflow(&self) {
        self.shared.close_slow_consumer(&self.slow_consumers);
    }
}

/// One worker thread's inbox of deliveries (see the module docs).
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Vec<(Arc<Port>, Outbound)>>,
    wake: Notify,
    /// Most deliveries waiting; beyond it the worker is not keeping up and the sessions that
    /// would grow the backlog are closed as slow consumers (they resume).
    max: usize,
    /// Set while the worker hands a batch taken from the queue to its sessions: the queue is
    /// empty then, but the batch has not reached the sessions' queues yet.
    handing: AtomicBool,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
}

impl Mailbox {
    /// The mailbox of the worker this runs on, created (with its draining task) on first use;
    /// the bound given by that first call stays. Must be called on a thread with a tokio
    /// `LocalSet` (an actix worker).
    pub fn current(max: usize) -> Arc<Mailbox> {
        CURRENT.with(|cell| {
            cell.borrow_mut()
                .get_or_insert_with(|| {
                    let mb = Arc::new(Mailbox {
                        queue: Mutex::new(Vec::new()),
                        wake: Notify::new(),
                        max: max.max(1),
                        handing: AtomicBool::new(false),
                    });
                    tokio::task::spawn_local(mb.clone().drain());
                    mb
                })
                .clone()
        })
    }

    /// Whether every delivery posted here has reached its session's queue.
    fn is_empty(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.is_empty() && !self.handing.load(Ordering::Acquire)
    }

    fn post(&self, port: Arc<Port>, out: Outbound) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.max {
            drop(q);
            port.overflow();
            return;
        }
        let was_empty = q.is_empty();
        q.push((port, out));
        drop(q);
        // Only the first post after a drain wakes the worker; later ones ride along. A wake
        // while the task is busy is stored as a permit, so none is lost.
        if was_empty {
            self.wake.notify_one();
        }
    }

    async fn drain(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut batch, &mut *q);
                self.handing.store(true, Ordering::Release);
            }
            for (port, out) in batch.drain(..) {
                port.push_now(out);
            }
            self.handing.store(false, Ordering::Release);
            // A burst can leave a large buffer behind; do not keep it forever.
            if batch.capacity() > 4096 {
                batch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;
    use confab_protocol::CloseReason;

    fn port(queue: usize, mailbox: &Arc<Mailbox>) -> (Arc<Port>, Arc<Outbox>) {
        let rx = Arc::new(Outbox::new(queue));
        let counter = IntCounter::new("t", "t").unwrap_or_else(|e| panic!("{e}"));
        let p = Port::new(
            rx.clone(),
            Arc::new(SessionShared::default()),
            counter,
            Some(mailbox.clone()),
        );
        (Arc::new(p), rx)
    }

    /// Run `f` on a current-thread runtime with a `LocalSet`, as an actix worker does.
    fn on_a_worker(f: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    fn text(out: Outbound) -> String {
        match out {
            Outbound::Direct(f) => f.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn posts_from_another_thread_arrive_in_order() {
        on_a_worker(async {
            let mb = Mailbox::current(1_000_000);
            let (p, rx) = port(10_000, &mb);
            let poster = std::thread::spawn(move || {
                for i in 0..5_000 {
                    p.push(Outbound::Direct(ByteString::from(i.to_string())));
                }
            });
            for i in 0..5_000 {
                let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
                let Ok(got) = got else {
                    panic!("delivery {i} did not arrive");
                };
                assert_eq!(text(got), i.to_string());
            }
            assert!(poster.join().is_ok(), "the posting thread panicked");
        });
    }

    #[test]
    fn a_full_mailbox_or_queue_closes_the_session_as_slow_consumer() {
        on_a_worker(async {
            let mb = Mailbox::current(2);
            // The worker is busy (this task does not yield): the third post finds it full.
            let (a, _rx_a) = port(10, &mb);
            for i in 0..3 {
                a.push(Outbound::Direct(ByteString::from(i.to_string())));
            }
            assert_eq!(a.shared().reason(), Some(CloseReason::SlowConsumer));
            // A session whose own queue is full is closed when the worker hands over.
            let (b, _rx_b) = port(1, &mb);
            tokio::task::yield_now().await;
            for i in 0..2 {
                b.push(Outbound::Direct(ByteString::from(i.to_string())));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(b.shared().reason(), Some(CloseReason::SlowConsumer));
            assert_eq!(b.slow_consumers.get(), 1);
        });
    }
}
