//! Group commit for sends on Postgres: concurrent sends are gathered into one transaction, so
//! one WAL flush acknowledges many messages. Each send is still acknowledged only after the
//! commit that stored it, keeps its gap-free per-thread `seq`, and stays idempotent.
//!
//! A few writer tasks pull whatever is queued (up to a batch size) and store it at once; while
//! one batch commits, the next one fills, so batches grow with load and a lone send waits for
//! nobody (under moderate load a writer lingers briefly to fill a small batch: see
//! [`SendBatcher::start`]). Anything the batch statement did not store (a retry of a stored
//! `client_msg_id`, a non-member, a duplicate inside the batch) or a batch that failed as a
//! whole goes through the single-send path, which classifies it exactly.
//!
//! Every message a writer stores is handed to an optional [`OnStored`] hook right after its
//! commit, before its sender hears back. The gateway publishes there: the messages of one batch
//! go out together and in `seq` order, instead of each waiting for its sender's session task to
//! run (which, with two nodes committing the same threads, reordered publishes across nodes for
//! long enough that receivers had to read the gaps from the database).

use crate::messages::fresh_message;
use crate::{Error, Result, SendOutcome, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{Message, MessageId, ThreadId, UserId};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Called with every message a writer stored, right after the commit that made it durable and
/// before its sender is answered; per thread in `seq` order. Runs on the writer's task, so it
/// must not block.
pub type OnStored = Arc<dyn Fn(&Message) + Send + Sync>;

/// Called with the number of sends a writer took in one turn (one group commit), before it
/// stores them: how well commits are shared, which is what a message costs the database.
pub type OnBatch = Arc<dyn Fn(usize) + Send + Sync>;

/// Called with how long each group commit took in the database: the batch statement (its
/// thread locks, inserts, commit and WAL flush), or a lone send's transaction; right after it
/// and before its sends are announced or answered. What a send waits for beyond that is the
/// writer's queue and its linger. Sends a batch left to the one-by-one path are not timed.
pub type OnCommit = Arc<dyn Fn(Duration) + Send + Sync>;

/// What the writers report as they go. The hooks run on a writer's task and must not block.
#[derive(Clone, Default)]
pub struct BatchHooks {
    /// Sees every stored message (see [`OnStored`]).
    pub on_stored: Option<OnStored>,
    /// Sees every batch's size (see [`OnBatch`]).
    pub on_batch: Option<OnBatch>,
    /// Sees how long every batch took in the database (see [`OnCommit`]).
    pub on_commit: Option<OnCommit>,
}

struct Pending {
    thread: ThreadId,
    sender: UserId,
    client_msg_id: String,
    body: String,
    reply: oneshot::Sender<Result<SendOutcome>>,
}

/// The front of the batching writers. Cheap to clone.
#[derive(Clone)]
pub struct SendBatcher {
    /// One queue per writer; a thread always goes to the same writer.
    writers: Arc<[mpsc::Sender<Pending>]>,
}

impl SendBatcher {
    /// Start `writers` writer tasks taking up to `max_batch` sends each; at most `queue` sends
    /// wait in all (further senders wait for room, which is the backpressure on a saturated
    /// database). `hooks` see every batch and every stored message (see [`BatchHooks`]).
    ///
    /// `linger`: under moderate load (the writer's previous batch held 2 to 15 sends), a writer
    /// that finds fewer than 16 sends waiting (`LINGER_UNTIL`, or `max_batch` if smaller)
    /// gathers more for up to this long before it stores them. Why: a batch call costs Postgres
    /// a fixed part (the call, its plans, the commit) that its sends share, and a send stored on
    /// its own takes a costlier path still, so small batches at moderate load made the database
    /// the machine's biggest CPU user. A send after a batch of one (a quiet spell) or after a
    /// large batch (saturation, where waiting would only slow every turn) never waits.
    /// Zero turns lingering off.
    ///
    /// Threads are partitioned among the writers by id. Why: a batch locks every thread it
    /// touches until it commits, so writers sharing threads would mostly wait for each other;
    /// partitioned, one node's batches never touch the same thread and run side by side, and
    /// across nodes only the writers of the same partition can meet.
    pub fn start(
        store: Store,
        writers: usize,
        max_batch: usize,
        queue: usize,
        linger: Duration,
        hooks: BatchHooks,
    ) -> Self {
        let n = writers.max(1);
        let per_writer = (queue / n).max(1);
        let mut txs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, mut rx) = mpsc::channel(per_writer);
            txs.push(tx);
            let store = store.clone();
            let hooks = hooks.clone();
            tokio::spawn(async move {
                let max_batch = max_batch.max(1);
                let enough = max_batch.min(LINGER_UNTIL);
                let mut batch = Vec::with_capacity(max_batch);
                let mut previous = 0;
                // Whatever queued while the previous batch committed goes in the next one.
                while rx.recv_many(&mut batch, max_batch).await > 0 {
                    if (2..enough).contains(&previous) && !linger.is_zero() {
                        gather(&mut rx, &mut batch, enough, linger).await;
                    }
                    previous = batch.len();
                    if let Some(hook) = &hooks.on_batch {
                        hook(batch.len());
                    }
                    store.write_batch(std::mem::take(&mut batch), &hooks).await;
                }
            });
        }
        Self {
            writers: txs.into(),
        }
    }

    /// Store one message (group-committed with whatever else is pending).
    pub async fn send(
        &self,
        thread: ThreadId,
        sender: UserId,
        client_msg_id: impl Into<String>,
        body: impl Into<String>,
    ) -> Result<SendOutcome> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            thread,
            sender,
            client_msg_id: client_msg_id.into(),
            body: body.into(),
            reply,
        };
        // UUIDv7: the low half is random, so it spreads threads evenly.
        let k = (thread.0.as_u64_pair().1 % self.writers.len() as u64) as usize;
        if self.writers[k].send(pending).await.is_err() {
            return Err(Error::Conflict("send batcher stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Conflict("send batcher stopped".into())))
    }
}

/// A lingering writer stops gathering once its batch holds this many sends. Why: the fixed
/// part of a batch call is worth sharing only while the batch is small (measured on the bench
/// machine: ~1 ms of Postgres CPU per call against ~40 µs per send, and a lone send takes a
/// costlier path still); a batch that is already this large would only wait for nothing, and at
/// saturation every turn would be delayed.
const LINGER_UNTIL: usize = 16;

/// Add sends to `batch` as they arrive, until it holds `enough` or `linger` has passed (or
/// every sender is gone).
async fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    enough: usize,
    linger: Duration,
) {
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < enough {
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, enough - batch.len())).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One statement in autocommit mode: `confab_store_batch` (migration m0003) locks the batch's
/// threads in id order, stores what it may and commits — no client round trip while the locks
/// are held, so batches of both nodes follow each other as fast as Postgres can store them.
const BATCH_SQL: &str =
    "SELECT stored_id, stored_seq FROM confab_store_batch($1, $2, $3, $4, $5, $6)";

impl Store {
    async fn write_batch(&self, batch: Vec<Pending>, hooks: &BatchHooks) {
        let on_stored = hooks.on_stored.as_ref();
        if batch.len() == 1 {
            for p in batch {
                self.store_one(p, on_stored, hooks.on_commit.as_ref()).await;
            }
            return;
        }
        // A (sender, client_msg_id) twice in one batch would fail the unique index for all:
        // keep the first, settle the rest one by one afterwards (they become duplicates).
        let mut seen = HashSet::new();
        let (first, repeats): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|p| seen.insert((p.sender, p.client_msg_id.clone())));
        let ids: Vec<MessageId> = first.iter().map(|_| MessageId::new()).collect();
        let now = Utc::now().trunc_subsecs(6);
        let started = tokio::time::Instant::now();
        let stored = self.store_batch(&first, &ids, now).await;
        if let Some(hook) = &hooks.on_commit {
            hook(started.elapsed());
        }
        let stored: HashMap<MessageId, i64> = match stored {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "batch failed; storing one by one");
                HashMap::new()
            }
        };
        // Everything the batch stored is announced and answered first, in batch order (which is
        // `seq` order per thread); what it left is settled one by one after.
        let mut rest = Vec::new();
        for (p, id) in first.into_iter().zip(ids) {
            let Some(&seq) = stored.get(&id) else {
                // Not stored by the batch: a retry, a non-member, or the batch failed.
                rest.push(p);
                continue;
            };
            let msg = fresh_message(p.thread, id, seq, p.sender, p.client_msg_id, p.body, now);
            if let Some(hook) = on_stored {
                hook(&msg);
            }
            let _ = p.reply.send(Ok(SendOutcome::Stored(msg)));
        }
        for p in rest.into_iter().chain(repeats) {
            self.store_one(p, on_stored, None).await;
        }
    }

    /// Store one send on its own (the single-send path classifies retries and non-members);
    /// `on_commit`, when given, times its transaction.
    async fn store_one(
        &self,
        p: Pending,
        on_stored: Option<&OnStored>,
        on_commit: Option<&OnCommit>,
    ) {
        let started = tokio::time::Instant::now();
        let r = self
            .send_message(p.thread, p.sender, &p.client_msg_id, &p.body)
            .await;
        if let Some(hook) = on_commit {
            hook(started.elapsed());
        }
        if let (Ok(SendOutcome::Stored(msg)), Some(hook)) = (&r, on_stored) {
            hook(msg);
        }
        let _ = p.reply.send(r);
    }

    /// One autocommit statement (see [`BATCH_SQL`]): the function locks the batch's threads in
    /// id order (two batches touching the same threads then cannot deadlock), stores everything
    /// and the statement's commit makes it durable before the rows come back.
    async fn store_batch(
        &self,
        batch: &[Pending],
        ids: &[MessageId],
        now: chrono::DateTime<Utc>,
    ) -> Result<HashMap<MessageId, i64>> {
        let uuid_array = |v: Vec<uuid::Uuid>| {
            Value::Array(
                sea_orm::sea_query::ArrayType::Uuid,
                Some(Box::new(v.into_iter().map(Value::from).collect())),
            )
        };
        let text_array = |v: Vec<String>| {
            Value::Array(
                sea_orm::sea_query::ArrayType::String,
                Some(Box::new(v.into_iter().map(Value::from).collect())),
            )
        };
        let rows = self
            .db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                BATCH_SQL,
                [
                    uuid_array(ids.iter().map(|i| i.0).collect()),
                    uuid_array(batch.iter().map(|p| p.thread.0).collect()),
                    uuid_array(batch.iter().map(|p| p.sender.0).collect()),
                    text_array(batch.iter().map(|p| p.client_msg_id.clone()).collect()),
                    text_array(batch.iter().map(|p| p.body.clone()).collect()),
                    now.into(),
                ],
            ))
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: uuid::Uuid = row.try_get("", "stored_id")?;
            let seq: i64 = row.try_get("", "stored_seq")?;
            out.insert(MessageId(id), seq);
        }
        Ok(out)
    }
}
