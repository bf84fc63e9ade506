//! The hub: this node's registry of which local sessions are in which threads, and the fan-out
//! of everything the broker delivers to them.
//!
//! It owns `thread → sessions` and `session → threads` behind one std mutex that is never held
//! across an `.await`. It never awaits a socket: it hands a shared, already-serialized frame to
//! each session's port — through the mailbox of the worker thread running the session (see
//! [`crate::mailbox`]) into the session's bounded queue — and a full queue closes that session
//! as a slow consumer (the client resumes from its last `seq`, so nothing is silently lost).
//!
//! Per subscribed thread it also tracks the last `seq` handed to sessions, so the node delivers
//! every thread as a hole-free, ordered stream: a `seq` ahead of the next expected one is held
//! while the gap is read back from the database; after a pub/sub reconnect, and on a periodic
//! sweep, heads are compared with the database and gaps repaired.

use crate::broker::{Broker, Inbound};
use crate::config::DeliverySettings;
use crate::envelope::{ControlEvent, Envelope};
use crate::keys::Keys;
use crate::lookups::Lookups;
use crate::mailbox::Port;
use crate::metrics::Metrics;
use bytestring::ByteString;
use confab_persistence::Store;
use confab_protocol::{CloseReason, ServerFrame, SessionId, ThreadId, UserId};
use futures_util::task::AtomicWaker;
// foldhash, not SipHash, for the maps keyed by ids, here and in sessions: every delivery looks
// its thread up in several of them (SipHash's functions were 0.8 % of gateway samples at 90k
// deliveries/s; 0.3 % with this, the rest from maps elsewhere).
// Their keys are ids the server made, or a session's own bounded few, so there is nothing a
// client could flood them with; the seed is still random per process.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the hub hands a session. Frames are shared (`ByteString` clones are reference counts):
/// a message is serialized once per node, not once per recipient.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A message of a thread, with its `seq` (sessions drop duplicates and fill holes by it).
    Seq {
        /// The thread.
        thread: ThreadId,
        /// Its `seq`.
        seq: i64,
        /// The serialized `message` frame.
        frame: ByteString,
        /// Its sender, when the envelope named it (see [`crate::envelope`]).
        sender: Option<UserId>,
    },
    /// Any other event of a thread (edits, reactions, typing, receipts).
    Thread {
        /// The thread.
        thread: ThreadId,
        /// A user whose own sessions should not get it (the typist), if any.
        exclude: Option<UserId>,
        /// The serialized frame.
        frame: ByteString,
    },
    /// A frame for this session whatever its threads (thread_created, presence).
    Direct(ByteString),
    /// The session's user joined a thread: deliver what comes after `last_seq`.
    Joined {
        /// The thread.
        thread: ThreadId,
        /// Its head when they joined.
        last_seq: i64,
        /// The last `seq` this node had handed to the thread's sessions when this one was
        /// added. Above `last_seq` when a message sent after the join reached the node before
        /// the join's announcement did: those went past this session, which reads them back.
        handed: i64,
    },
    /// The session's user left a thread: deliver nothing more of it.
    Left {
        /// The thread.
        thread: ThreadId,
    },
}

/// State a session shares with whoever may need to close it.
///
/// Only the session's own task waits on it, so an `AtomicWaker` wakes it: its loop asks
/// "closed?" on every turn, and with a `Notify` each turn took a lock to join the list of
/// waiters and another to leave it.
#[derive(Debug, Default)]
pub struct SessionShared {
    kill: AtomicWaker,
    /// A close request not yet taken by a `closed()` (what `Notify::notify_one` kept as a permit).
    signalled: AtomicBool,
    reason: AtomicU16,
}

impl SessionShared {
    /// Ask the session to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        self.signalled.store(true, Ordering::Release);
        self.kill.wake();
    }

    /// Resolves when someone asked the session to close. Each request is taken once, by the
    /// first `closed()` to see it (so the clean-up after the loop can still write its last
    /// answers). For the session's own task only: a second task waiting on it could miss the
    /// wake.
    pub async fn closed(&self) -> CloseReason {
        let taken = || {
            self.signalled
                .swap(false, Ordering::AcqRel)
                .then(|| self.reason().unwrap_or(CloseReason::InternalError))
        };
        std::future::poll_fn(|cx| {
            if let Some(reason) = taken() {
                return std::task::Poll::Ready(reason);
            }
            self.kill.register(cx.waker());
            match taken() {
                Some(reason) => std::task::Poll::Ready(reason),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// Ask the session to close as a slow consumer, counting it once in `slow_consumers`.
    pub fn close_slow_consumer(&self, slow_consumers: &prometheus::IntCounter) {
        if self.reason().is_none() {
            slow_consumers.inc();
        }
        self.close(CloseReason::SlowConsumer);
    }

    /// The reason given, if any.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.reason.load(Ordering::Acquire))
    }
}

/// The hub's handle on one session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// The session.
    pub id: SessionId,
    /// Its user.
    pub user: UserId,
    /// First 8 bytes of its token's hash (to close it on logout).
    pub token_tag: u64,
    port: Arc<Port>,
}

impl SessionHandle {
    /// A handle over a session's port (its queue, seen from outside).
    pub fn new(id: SessionId, user: UserId, token_tag: u64, port: Port) -> Self {
        Self {
            id,
            user,
            token_tag,
            port: Arc::new(port),
        }
    }

    /// Hand a frame to the session without waiting (see [`Port::push`]).
    fn push(&self, out: Outbound) {
        self.port.push(out);
    }

    fn close(&self, reason: CloseReason) {
        self.port.shared().close(reason);
    }

    fn has_room(&self, n: usize) -> bool {
        self.port.has_room(n)
    }
}

struct ThreadSlot {
    sessions: Vec<SessionHandle>,
    /// Last `seq` handed to sessions; `None` until the head is known after subscribing.
    last: Option<i64>,
    /// Messages (frame, sender) that arrived ahead of `last + 1`, waiting for a repair.
    pending: BTreeMap<i64, (ByteString, Option<UserId>)>,
    /// Other events of the thread (edits, deletions, reactions…) that arrived while messages
    /// were held, each behind the highest `seq` held then: an event about a held message must
    /// not reach a client before the message does (a deletion first, then the message as it
    /// was published, would leave the message showing). `(after seq, exclude, frame)`.
    waiting: Vec<(i64, Option<UserId>, ByteString)>,
    repairing: bool,
}

impl ThreadSlot {
    fn new() -> Self {
        Self {
            sessions: Vec::new(),
            last: None,
            pending: BTreeMap::new(),
            waiting: Vec::new(),
            repairing: false,
        }
    }
}

struct SessionSlot {
    handle: SessionHandle,
    threads: HashSet<ThreadId>,
}

#[derive(Default)]
struct Inner {
    threads: HashMap<ThreadId, ThreadSlot>,
    sessions: HashMap<SessionId, SessionSlot>,
    users: HashMap<UserId, Vec<SessionId>>,
    /// Users leaving threads: announced (`leaving`), the removal maybe not stored yet. A
    /// session of theirs that starts now may have read the thread from the database before the
    /// removal; it is kept out of it (see [`Hub::join`]). Cleared by `left`, a re-join or a
    /// resync, else after [`LEAVING_TTL`] (the leaving node died mid-leave).
    leaving: HashMap<(UserId, ThreadId), Instant>,
}

/// How long a `leaving` announcement keeps new sessions of the leaver out of the thread when no
/// `left` (or re-join) follows: far longer than a leave takes, short enough that a leave cut
/// short by a crash does not keep a member's new sessions out of their thread for long.
const LEAVING_TTL: Duration = Duration::from_secs(30);

impl Inner {
    fn is_leaving(&self, user: UserId, thread: ThreadId) -> bool {
        self.leaving
            .get(&(user, thread))
            .is_some_and(|at| at.elapsed() < LEAVING_TTL)
    }
}

/// A repair to run once the lock is released: read `(after, before)` of `thread`.
type Repair = (ThreadId, i64, i64);

/// How often a gap's next page, waiting for room in the thread's sessions' queues, looks at
/// them.
const PAGE_ROOM_POLL: Duration = Duration::from_millis(5);

/// The node-local fan-out registry.
pub struct Hub {
    inner: Mutex<Inner>,
    broker: OnceLock<Arc<dyn Broker>>,
    store: Store,
    lookups: Arc<Lookups>,
    keys: Keys,
    /// Cached channel names: the reader compares every arriving channel against them.
    control_channel: String,
    thread_prefix: String,
    metrics: Metrics,
    max_pending: usize,
    /// How long a gap may stay open before it is read from the database.
    gap_grace: Duration,
    /// Most messages one repair reads (`delivery.repair_page_max`).
    repair_page: u64,
    /// Repairs reading the database at once (`delivery.repair_concurrency`).
    repair_permits: Semaphore,
    /// Longest a gap's next page waits for room (`delivery.repair_page_wait_ms`).
    page_wait: Duration,
    me: Weak<Hub>,
}

impl Hub {
    /// A hub with no broker yet (see [`Hub::set_broker`]); `delivery` bounds what it holds
    /// and how it repairs gaps.
    pub fn new(
        store: Store,
        lookups: Arc<Lookups>,
        keys: Keys,
        metrics: Metrics,
        delivery: &DeliverySettings,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            inner: Mutex::new(Inner::default()),
            broker: OnceLock::new(),
            store,
            lookups,
            control_channel: keys.control_channel(),
            thread_prefix: keys.thread_channel_prefix(),
            keys,
            metrics,
            max_pending: delivery.max_pending_per_thread,
            gap_grace: Duration::from_millis(delivery.gap_grace_ms),
            repair_page: delivery.repair_page_max.max(1),
            repair_permits: Semaphore::new(delivery.repair_concurrency.max(1)),
            page_wait: Duration::from_millis(delivery.repair_page_wait_ms),
            me: me.clone(),
        })
    }

    /// Attach the broker (once; it needs the hub as its receiver, hence two steps).
    pub fn set_broker(&self, broker: Arc<dyn Broker>) {
        let _ = self.broker.set(broker);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; keep serving rather than cascading.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.get()
    }

    /// Register a session (before it joins threads), unless its user already holds
    /// `max_per_user` sessions here (0: no limit); then nothing is registered and this returns
    /// how many the user holds. Checked and registered under one lock, so concurrent upgrades of
    /// one user on different workers cannot overshoot the limit.
    pub fn register(&self, handle: SessionHandle, max_per_user: usize) -> Result<(), usize> {
        let mut g = self.lock();
        let mine = g.users.entry(handle.user).or_default();
        if max_per_user > 0 && mine.len() >= max_per_user {
            return Err(mine.len());
        }
        mine.push(handle.id);
        g.sessions.insert(
            handle.id,
            SessionSlot {
                handle,
                threads: HashSet::new(),
            },
        );
        Ok(())
    }

    /// Add a session to threads, subscribing the node to the threads that had no local session.
    /// Returns once the subscription is confirmed (or failed), with every thread's head: for a
    /// thread the node already followed, the last `seq` it handed to sessions; for the others,
    /// read from the database *after* that point — either way, every later message arrives live.
    pub async fn join(
        &self,
        session: SessionId,
        threads: &[ThreadId],
    ) -> confab_persistence::Result<HashMap<ThreadId, i64>> {
        let (confirm, mut heads, threads) = {
            let mut g = self.lock();
            let Some(handle) = g.sessions.get(&session).map(|s| s.handle.clone()) else {
                return Ok(HashMap::new());
            };
            // A thread its user is leaving may come from a read made before the removal was
            // stored: joined now, the session could get a message stored after it before the
            // `left` announcement reaches this node.
            let threads: Vec<ThreadId> = threads
                .iter()
                .filter(|t| !g.is_leaving(handle.user, **t))
                .copied()
                .collect();
            let new = add_to_threads(&mut g, &handle, &threads);
            // Threads this node already follows need no database read: the session joined them
            // under the same lock that hands out messages and advances `last`, so it gets
            // exactly the messages after `last` — no duplicate, no hole. (A busy room's
            // members connecting to one node cost one heads query instead of one each.)
            let known: HashMap<ThreadId, i64> = threads
                .iter()
                .filter_map(|t| Some((*t, g.threads.get(t)?.last?)))
                .collect();
            (self.subscribe_locked(new), known, threads)
        };
        if let Some(rx) = confirm {
            // A failed or slow subscription must not block the session: the broker keeps the
            // channel wanted and the sweep repairs whatever pub/sub misses meanwhile.
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
        let unknown: Vec<ThreadId> = threads
            .iter()
            .filter(|t| !heads.contains_key(t))
            .copied()
            .collect();
        if !unknown.is_empty() {
            let read: HashMap<ThreadId, i64> = self
                .lookups
                .thread_heads(&unknown)
                .await?
                .into_iter()
                .collect();
            self.init_heads(&read);
            heads.extend(read);
        }
        Ok(heads)
    }

    fn subscribe_locked(
        &self,
        new: Vec<ThreadId>,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), crate::broker::BrokerError>>> {
        if new.is_empty() {
            return None;
        }
        let channels = new.iter().map(|t| self.keys.thread_channel(*t)).collect();
        self.broker().map(|b| b.subscribe(channels))
    }

    /// Set the delivered head of threads whose head was unknown, and deliver what was held.
    fn init_heads(&self, heads: &HashMap<ThreadId, i64>) {
        let mut repairs = Vec::new();
        {
            let mut g = self.lock();
            for (t, head) in heads {
                if let Some(slot) = g.threads.get_mut(t) {
                    if slot.last.is_none() {
                        slot.last = Some(*head);
                        if let Some(r) = drain(*t, slot) {
                            repairs.push(r);
                        }
                    }
                }
            }
        }
        self.spawn_repairs(repairs);
    }

    /// Remove a session everywhere; unsubscribe threads left without local sessions.
    pub fn unregister(&self, session: SessionId) {
        let mut g = self.lock();
        let Some(slot) = g.sessions.remove(&session) else {
            return;
        };
        if let Some(list) = g.users.get_mut(&slot.handle.user) {
            list.retain(|s| *s != session);
            if list.is_empty() {
                g.users.remove(&slot.handle.user);
            }
        }
        let threads: Vec<ThreadId> = slot.threads.into_iter().collect();
        let empty = remove_from_threads(&mut g, session, &threads);
        self.unsubscribe_locked(empty);
    }

    fn unsubscribe_locked(&self, empty: Vec<ThreadId>) {
        if empty.is_empty() {
            return;
        }
        if let Some(b) = self.broker() {
            b.unsubscribe(empty.iter().map(|t| self.keys.thread_channel(*t)).collect());
        }
    }

    /// How many sessions of `user` this node holds.
    pub fn local_session_count(&self, user: UserId) -> usize {
        self.lock().users.get(&user).map_or(0, Vec::len)
    }

    /// Whether this node heard that `user` is leaving `thread` and not yet that they left (or
    /// stayed): their sessions here are kept out of the thread meanwhile.
    pub fn is_leaving(&self, user: UserId, thread: ThreadId) -> bool {
        self.lock().is_leaving(user, thread)
    }

    /// Sessions open on this node.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Ask every session to close (drain).
    pub fn close_all(&self, reason: CloseReason) {
        let g = self.lock();
        for s in g.sessions.values() {
            s.handle.close(reason);
        }
    }

    /// Compare every subscribed thread's delivered head with the database and repair gaps.
    /// Runs periodically and after every pub/sub reconnect.
    pub async fn sweep(&self) {
        let ids: Vec<ThreadId> = self.lock().threads.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let heads = match self.store.thread_heads(&ids).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "sweep skipped: database unavailable");
                return;
            }
        };
        let mut repairs = Vec::new();
        {
            let mut g = self.lock();
            for (t, head) in heads {
                let Some(slot) = g.threads.get_mut(&t) else {
                    continue;
                };
                match slot.last {
                    None => {
                        slot.last = Some(head);
                        if let Some(r) = drain(t, slot) {
                            repairs.push(r);
                        }
                    }
                    Some(last) if head > last && !slot.repairing => {
                        slot.repairing = true;
                        repairs.push((t, last, head + 1));
                    }
                    _ => {}
                }
            }
        }
        self.spawn_repairs(repairs);
    }

    fn spawn_repairs(&self, repairs: Vec<Repair>) {
        for (t, after, before) in repairs {
            if let Some(hub) = self.me.upgrade() {
                tokio::spawn(async move { hub.repair(t, after, before).await });
            }
        }
    }

    /// Go on reading a gap whose last page came back full, without the grace: what is left of
    /// it is known to be missing. The next page waits until every local session of the thread
    /// has room for a page in its queue (for at most `delivery.repair_page_wait_ms`): handed
    /// out at once, a backlog longer than a session's queue would close every session of the
    /// thread as a slow consumer, clients that read as fast as they can included.
    fn spawn_next_page(&self, (t, after, before): Repair) {
        if let Some(hub) = self.me.upgrade() {
            tokio::spawn(async move {
                hub.wait_for_room(t).await;
                hub.read_gap(t, after, before).await
            });
        }
    }

    /// Wait until every local session of `thread` has room for a page in its queue, the
    /// thread has no session here, or `delivery.repair_page_wait_ms` has passed (a client that
    /// does not read must not hold the others' backlog up: the page then closes it as a slow
    /// consumer, and it resumes).
    async fn wait_for_room(&self, thread: ThreadId) {
        let deadline = tokio::time::Instant::now() + self.page_wait;
        let page = usize::try_from(self.repair_page).unwrap_or(usize::MAX);
        loop {
            let room = {
                let g = self.lock();
                g.threads
                    .get(&thread)
                    .is_none_or(|slot| slot.sessions.iter().all(|s| s.has_room(page)))
            };
            if room || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(PAGE_ROOM_POLL).await;
        }
    }

    /// Repair `(after, before)` of a thread: wait `delivery.gap_grace_ms` for out-of-order
    /// publishes to close it, then read what is still missing (see [`Hub::read_gap`]).
    async fn repair(&self, thread: ThreadId, after: i64, before: i64) {
        let (after, before) = if self.gap_grace.is_zero() {
            (after, before)
        } else {
            // Publishes from concurrent senders (and from one group commit) can reach Redis out
            // of order: most "gaps" fill themselves within milliseconds. Wait a little before
            // reading the database, then repair only what is still missing.
            tokio::time::sleep(self.gap_grace).await;
            let mut g = self.lock();
            let Some(slot) = g.threads.get_mut(&thread) else {
                return;
            };
            let last = slot.last.unwrap_or(after);
            let next_pending = slot.pending.first_key_value().map(|(k, _)| *k);
            if last < before - 1 {
                (last, before)
            } else if let Some(next) = next_pending.filter(|n| *n > last + 1) {
                (last, next)
            } else {
                slot.repairing = false;
                let more = drain(thread, slot);
                drop(g);
                if let Some(r) = more {
                    self.spawn_repairs(vec![r]);
                }
                return;
            }
        };
        self.read_gap(thread, after, before).await;
    }

    /// Read the first page (`delivery.repair_page_max` messages) of `(after, before)` and feed
    /// it through the same ordering rule as live messages; a full page goes on with the next.
    /// Why pages: after an outage a gap holds everything the thread got meanwhile, and read at
    /// once it would sit in memory whole (and then in every local session's queue).
    async fn read_gap(&self, thread: ThreadId, after: i64, before: i64) {
        let fetched = {
            // The semaphore is never closed, so this cannot fail.
            let _permit = self.repair_permits.acquire().await;
            self.metrics.gap_repairs.with_label_values(&["node"]).inc();
            self.store
                .messages_between(thread, after, before, self.repair_page)
                .await
        };
        let full = fetched
            .as_ref()
            .is_ok_and(|m| m.len() as u64 >= self.repair_page);
        let frames: Vec<(i64, (ByteString, Option<UserId>))> = match fetched {
            Ok(msgs) => msgs
                .into_iter()
                .map(|m| {
                    let (seq, sender) = (m.seq, Some(m.sender_id));
                    let frame = ByteString::from(ServerFrame::Message(m).to_json());
                    (seq, (frame, sender))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(%thread, error = %e, "gap repair failed; the sweep will retry");
                Vec::new()
            }
        };
        let progressed = !frames.is_empty();
        let next = {
            let mut g = self.lock();
            let Some(slot) = g.threads.get_mut(&thread) else {
                return;
            };
            for (seq, frame) in frames {
                slot.pending.entry(seq).or_insert(frame);
            }
            slot.repairing = false;
            let held = if progressed {
                drain(thread, slot)
            } else {
                None
            };
            match (held, slot.last) {
                (Some(r), _) => Some(r),
                // The page ended before the gap did: nothing else may reveal the rest (no
                // message need arrive, the sweep is seconds away), so read on now.
                (None, Some(last)) if full && last + 1 < before && !slot.repairing => {
                    slot.repairing = true;
                    Some((thread, last, before))
                }
                _ => None,
            }
        };
        match next {
            // After a full page, whatever hole is left is the rest of this gap (messages that
            // arrived live meanwhile wait behind it): no grace, paced to the sessions.
            Some(r) if full => self.spawn_next_page(r),
            Some(r) => self.spawn_repairs(vec![r]),
            None => {}
        }
    }

    /// `env` was parsed from `payload`; its frame is handed on as a slice of it, not a copy.
    fn on_thread_event(&self, thread: ThreadId, env: Envelope<'_>, payload: &bytes::Bytes) {
        let frame = match ByteString::try_from(payload.slice_ref(env.frame)) {
            Ok(f) => f,
            Err(_) => return,
        };
        if let Some(micros) = env.published_micros {
            let now = chrono::Utc::now().timestamp_micros();
            self.metrics
                .fanout_latency
                .observe((now - micros).max(0) as f64 / 1e6);
        }
        let repair = {
            let mut g = self.lock();
            let Some(slot) = g.threads.get_mut(&thread) else {
                return;
            };
            match env.seq {
                Some(seq) => accept(thread, slot, seq, (frame, env.sender), self.max_pending),
                None => {
                    match slot.pending.last_key_value() {
                        Some((&after, _)) if slot.waiting.len() < self.max_pending => {
                            slot.waiting.push((after, env.exclude, frame));
                        }
                        _ => {
                            // Nothing held (or too much waiting already: out of order beats
                            // unbounded memory; the client still gets every event).
                            release(thread, slot, i64::MAX);
                            fanout_event(thread, slot, env.exclude, &frame);
                        }
                    }
                    None
                }
            }
        };
        if let Some(r) = repair {
            self.spawn_repairs(vec![r]);
        }
    }

    fn on_control(&self, ev: ControlEvent) {
        match ev {
            ControlEvent::Joined {
                thread,
                users,
                last_seq,
                frame,
            } => {
                let frame = ByteString::from(frame);
                let confirm = {
                    let mut g = self.lock();
                    for u in &users {
                        g.leaving.remove(&(*u, thread));
                    }
                    let handles: Vec<SessionHandle> =
                        users.iter().flat_map(|u| handles_of(&g, *u)).collect();
                    if handles.is_empty() {
                        return;
                    }
                    let mut new = Vec::new();
                    for h in &handles {
                        new.extend(add_to_threads(&mut g, h, &[thread]));
                        let mut handed = last_seq;
                        if let Some(slot) = g.threads.get_mut(&thread) {
                            // A fresh slot starts from the join point, so the sweep delivers
                            // anything sent between the join and the subscription.
                            handed = *slot.last.get_or_insert(last_seq);
                        }
                        // The thread first, then its messages (`Joined` may read some back).
                        h.push(Outbound::Direct(frame.clone()));
                        h.push(Outbound::Joined {
                            thread,
                            last_seq,
                            handed,
                        });
                    }
                    self.subscribe_locked(new)
                };
                if let (Some(rx), Some(hub)) = (confirm, self.me.upgrade()) {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
                        hub.sweep().await;
                    });
                }
            }
            ControlEvent::Leaving { thread, user } => self.remove_user(thread, user, None),
            ControlEvent::Left {
                thread,
                user,
                frame,
            } => self.remove_user(thread, user, Some(ByteString::from(frame))),
            ControlEvent::Resync { user, thread } => {
                let mut g = self.lock();
                // The leave did not happen: their new sessions get the thread again.
                g.leaving.remove(&(user, thread));
                for h in handles_of(&g, user) {
                    h.close(CloseReason::ServiceRestart);
                }
            }
            ControlEvent::ToUsers { users, frame } => {
                let frame = ByteString::from(frame);
                let g = self.lock();
                for u in users {
                    for h in handles_of(&g, u) {
                        h.push(Outbound::Direct(frame.clone()));
                    }
                }
            }
            ControlEvent::ToThreads {
                threads,
                exclude,
                frame,
            } => {
                let frame = ByteString::from(frame);
                let g = self.lock();
                let mut seen = HashSet::new();
                for t in threads {
                    if let Some(slot) = g.threads.get(&t) {
                        for h in &slot.sessions {
                            if Some(h.user) != exclude && seen.insert(h.id) {
                                h.push(Outbound::Direct(frame.clone()));
                            }
                        }
                    }
                }
            }
            ControlEvent::Kick { token_tag } => {
                let g = self.lock();
                for s in g.sessions.values() {
                    if s.handle.token_tag == token_tag {
                        s.handle.close(CloseReason::PolicyViolation);
                    }
                }
            }
        }
    }
}

impl Hub {
    /// Stop delivering `thread` to `user`'s sessions here (and give each `frame`, if any).
    fn remove_user(&self, thread: ThreadId, user: UserId, frame: Option<ByteString>) {
        let mut g = self.lock();
        if frame.is_none() {
            // `leaving`: remembered until `left` (or the TTL); stale marks go first.
            g.leaving.retain(|_, at| at.elapsed() < LEAVING_TTL);
            g.leaving.insert((user, thread), Instant::now());
        } else {
            g.leaving.remove(&(user, thread));
        }
        let handles = handles_of(&g, user);
        let mut empty = Vec::new();
        for h in &handles {
            h.push(Outbound::Left { thread });
            if let Some(f) = &frame {
                h.push(Outbound::Direct(f.clone()));
            }
            empty.extend(remove_from_threads(&mut g, h.id, &[thread]));
            if let Some(s) = g.sessions.get_mut(&h.id) {
                s.threads.remove(&thread);
            }
        }
        self.unsubscribe_locked(empty);
    }
}

impl Inbound for Hub {
    fn on_message(&self, channel: &str, payload: bytes::Bytes) {
        if channel == self.control_channel {
            match serde_json::from_slice::<ControlEvent>(&payload) {
                Ok(ev) => self.on_control(ev),
                Err(e) => tracing::warn!(error = %e, "bad control event"),
            }
            return;
        }
        let Some(id) = channel.strip_prefix(self.thread_prefix.as_str()) else {
            return;
        };
        let Ok(thread) = id.parse::<ThreadId>() else {
            return;
        };
        match Envelope::parse(&payload) {
            Some(env) => self.on_thread_event(thread, env, &payload),
            None => tracing::warn!(%thread, "bad envelope"),
        }
    }

    fn on_resubscribed(&self) {
        if let Some(hub) = self.me.upgrade() {
            tokio::spawn(async move { hub.sweep().await });
        }
    }

    fn on_control_lost(&self) {
        // A lost leave or logout would keep delivering to someone who must not read the
        // thread any more; a lost join keeps a member deaf to it. A session opened again reads
        // its threads from the database, so every session here resumes elsewhere or here.
        self.close_all(CloseReason::ServiceRestart);
    }
}

fn handles_of(g: &Inner, user: UserId) -> Vec<SessionHandle> {
    g.users
        .get(&user)
        .map(|ids| {
            ids.iter()
                .filter_map(|id| g.sessions.get(id).map(|s| s.handle.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Add a session to threads; returns the threads that just got their first local session.
fn add_to_threads(g: &mut Inner, handle: &SessionHandle, threads: &[ThreadId]) -> Vec<ThreadId> {
    let mut new = Vec::new();
    for t in threads {
        let slot = g.threads.entry(*t).or_insert_with(|| {
            new.push(*t);
            ThreadSlot::new()
        });
        if !slot.sessions.iter().any(|s| s.id == handle.id) {
            slot.sessions.push(handle.clone());
        }
        if let Some(s) = g.sessions.get_mut(&handle.id) {
            s.threads.insert(*t);
        }
    }
    new
}

/// Remove a session from threads; returns the threads left without local sessions.
fn remove_from_threads(g: &mut Inner, session: SessionId, threads: &[ThreadId]) -> Vec<ThreadId> {
    let mut empty = Vec::new();
    for t in threads {
        if let Some(slot) = g.threads.get_mut(t) {
            slot.sessions.retain(|s| s.id != session);
            if slot.sessions.is_empty() {
                g.threads.remove(t);
                empty.push(*t);
            }
        }
    }
    empty
}

/// The ordering rule for one arriving message: deliver it if it is the next one, drop it if
/// already delivered, hold it (and ask for a repair) if it is ahead.
fn accept(
    thread: ThreadId,
    slot: &mut ThreadSlot,
    seq: i64,
    frame: (ByteString, Option<UserId>),
    max_pending: usize,
) -> Option<Repair> {
    match slot.last {
        Some(last) if seq <= last => None,
        Some(last) if seq == last + 1 => {
            fanout(thread, slot, seq, &frame);
            slot.last = Some(seq);
            drain(thread, slot)
        }
        _ => {
            if slot.pending.len() >= max_pending {
                // Holding more would grow memory without bound during a long outage; the
                // sweep and the sessions' own gap fill recover from the database (whose copies
                // are current, so the events held for them may go first).
                slot.pending.clear();
                release(thread, slot, i64::MAX);
            }
            slot.pending.insert(seq, frame);
            match slot.last {
                Some(last) if !slot.repairing => {
                    slot.repairing = true;
                    Some((thread, last, seq))
                }
                _ => None,
            }
        }
    }
}

/// Deliver held messages that are now in order; returns a repair if a hole remains.
fn drain(thread: ThreadId, slot: &mut ThreadSlot) -> Option<Repair> {
    let mut last = slot.last?;
    while let Some(entry) = slot.pending.first_entry() {
        let seq = *entry.key();
        if seq <= last {
            entry.remove();
        } else if seq == last + 1 {
            let frame = entry.remove();
            fanout(thread, slot, seq, &frame);
            last = seq;
        } else {
            break;
        }
    }
    slot.last = Some(last);
    release(thread, slot, last);
    match slot.pending.first_key_value() {
        Some((&next, _)) if !slot.repairing => {
            slot.repairing = true;
            Some((thread, last, next))
        }
        _ => None,
    }
}

/// Hand out the events that waited behind messages up to `upto`, in arrival order.
fn release(thread: ThreadId, slot: &mut ThreadSlot, upto: i64) {
    if slot.waiting.is_empty() {
        return;
    }
    let waiting = std::mem::take(&mut slot.waiting);
    let (ready, still): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(a, ..)| *a <= upto);
    slot.waiting = still;
    for (_, exclude, frame) in ready {
        fanout_event(thread, slot, exclude, &frame);
    }
}

fn fanout_event(thread: ThreadId, slot: &ThreadSlot, exclude: Option<UserId>, frame: &ByteString) {
    for s in &slot.sessions {
        s.push(Outbound::Thread {
            thread,
            exclude,
            frame: frame.clone(),
        });
    }
}

fn fanout(
    thread: ThreadId,
    slot: &ThreadSlot,
    seq: i64,
    (frame, sender): &(ByteString, Option<UserId>),
) {
    for s in &slot.sessions {
        s.push(Outbound::Seq {
            thread,
            seq,
            frame: frame.clone(),
            sender: *sender,
        });
    }
}
