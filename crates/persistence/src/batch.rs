//! Group commit for sends: concurrent sends are gathered into one transaction, so one WAL flush
//! (Postgres) or one `fsync` (SQLite, the embedded store) acknowledges many messages. Each send
//! is still acknowledged only after the commit that stored it, keeps its gap-free per-thread
//! `seq`, and stays idempotent.
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
use crate::{Backend, Error, Result, SendOutcome, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{Message, MessageId, ThreadId, UserId};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait, Value};
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
/// part of a batch call is worth sharing only while the batch is small; a batch that is already
/// this large would only wait for nothing, and at saturation every turn would be delayed.
/// Measured on the bench machine with `scripts/pgbench-store-batch.sh` (1, 13 and 50 sends per
/// call; the harness's own ~70 µs taken off): ~380 µs of Postgres CPU per call — the commit and
/// its WAL flush are ~100 µs of it, the rest mostly setting up and running the statement's
/// many plan nodes — plus ~21 µs per send. A lone send's one-row statement costs ~230 µs, so a
/// batch of 13 costs each send ~50 µs and one of 16 ~45 µs; beyond 16, one more send in the
/// batch saves each of the others under 1.5 µs.
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
        let stored = match self.backend() {
            Backend::Postgres => self.store_batch_pg(&first, &ids, now).await,
            Backend::Sqlite => self.store_batch_sqlite(&first, &ids, now).await,
        };
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
    async fn store_batch_pg(
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

    /// The batch on SQLite: one transaction, a handful of statements whatever the batch's size,
    /// one commit (one `fsync`). Why: the embedded store has one connection, and a send stored
    /// on its own costs a transaction and an `fsync` of the WAL; one by one, `make run` stored
    /// ~900 sends/s, and above that its senders timed out waiting for the connection
    /// (`unavailable`) — it collapsed. SQLite has one writer, so no lock order is needed.
    ///
    /// Sends that are not stored here — the sender is not a member, or the `client_msg_id` is
    /// already stored (a retry, or a key reused in another thread) — are left to the caller's
    /// one-by-one path, which classifies them exactly; so are all of them if a statement fails.
    async fn store_batch_sqlite(
        &self,
        batch: &[Pending],
        ids: &[MessageId],
        now: chrono::DateTime<Utc>,
    ) -> Result<HashMap<MessageId, i64>> {
        let txn = self.db.begin().await?;
        let mut members = HashSet::new();
        let mut taken = HashSet::new();
        for chunk in batch.chunks(SQLITE_ROWS_PER_STATEMENT) {
            // Joined from the VALUES list, so each pair is one probe of the primary key / the
            // unique (sender, client_msg_id) index.
            let sql = format!(
                "SELECT tm.thread_id, tm.user_id FROM ({}) AS v \
                 JOIN thread_members tm ON tm.thread_id = v.column1 AND tm.user_id = v.column2",
                values_list(chunk.len(), 2)
            );
            let params = chunk
                .iter()
                .flat_map(|p| [Value::from(p.thread.0), Value::from(p.sender.0)]);
            for row in txn.query_all(sqlite(&sql, params)).await? {
                let t: uuid::Uuid = row.try_get("", "thread_id")?;
                let u: uuid::Uuid = row.try_get("", "user_id")?;
                members.insert((t, u));
            }
            let sql = format!(
                "SELECT m.sender_id, m.client_msg_id FROM ({}) AS v \
                 JOIN messages m ON m.sender_id = v.column1 AND m.client_msg_id = v.column2",
                values_list(chunk.len(), 2)
            );
            let params = chunk.iter().flat_map(|p| {
                [
                    Value::from(p.sender.0),
                    Value::from(p.client_msg_id.clone()),
                ]
            });
            for row in txn.query_all(sqlite(&sql, params)).await? {
                let u: uuid::Uuid = row.try_get("", "sender_id")?;
                let c: String = row.try_get("", "client_msg_id")?;
                taken.insert((u, c));
            }
        }
        // What this batch stores, in batch order, and how many sends each thread takes.
        let chosen: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                let p = &batch[i];
                members.contains(&(p.thread.0, p.sender.0))
                    && !taken.contains(&(p.sender.0, p.client_msg_id.clone()))
            })
            .collect();
        if chosen.is_empty() {
            return Ok(HashMap::new());
        }
        let mut per_thread: HashMap<uuid::Uuid, i64> = HashMap::new();
        for &i in &chosen {
            *per_thread.entry(batch[i].thread.0).or_default() += 1;
        }
        let counts: Vec<(uuid::Uuid, i64)> = per_thread.iter().map(|(t, k)| (*t, *k)).collect();
        // Each thread's counter moves once, by its number of sends; they take the seqs up to
        // the new value in batch order.
        let mut next: HashMap<uuid::Uuid, i64> = HashMap::with_capacity(per_thread.len());
        for chunk in counts.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE threads SET last_seq = last_seq + v.column2, last_activity_at = ? \
                 FROM ({}) AS v WHERE threads.id = v.column1 RETURNING threads.id, threads.last_seq",
                values_list(chunk.len(), 2)
            );
            let params = std::iter::once(Value::from(now)).chain(
                chunk
                    .iter()
                    .flat_map(|(t, k)| [Value::from(*t), Value::from(*k)]),
            );
            for row in txn.query_all(sqlite(&sql, params)).await? {
                let t: uuid::Uuid = row.try_get("", "id")?;
                let last: i64 = row.try_get("", "last_seq")?;
                next.insert(t, last - per_thread.get(&t).copied().unwrap_or(0) + 1);
            }
        }
        let mut out = HashMap::with_capacity(chosen.len());
        let mut read_marks: HashMap<(uuid::Uuid, uuid::Uuid), i64> = HashMap::new();
        let mut rows = Vec::with_capacity(chosen.len());
        for &i in &chosen {
            let p = &batch[i];
            let seq = next
                .get_mut(&p.thread.0)
                .map(|s| {
                    *s += 1;
                    *s - 1
                })
                .ok_or_else(|| Error::Conflict("thread vanished during a batch".into()))?;
            out.insert(ids[i], seq);
            let mark = read_marks.entry((p.thread.0, p.sender.0)).or_insert(seq);
            *mark = (*mark).max(seq);
            rows.push((i, seq));
        }
        for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, \
                 created_at) VALUES {}",
                placeholders(chunk.len(), 7)
            );
            let params = chunk.iter().flat_map(|&(i, seq)| {
                let p = &batch[i];
                [
                    Value::from(ids[i].0),
                    Value::from(p.thread.0),
                    Value::from(seq),
                    Value::from(p.sender.0),
                    Value::from(p.client_msg_id.clone()),
                    Value::from(p.body.clone()),
                    Value::from(now),
                ]
            });
            txn.execute(sqlite(&sql, params)).await?;
        }
        let marks: Vec<_> = read_marks.into_iter().collect();
        for chunk in marks.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE thread_members SET last_read_seq = v.column3 FROM ({}) AS v \
                 WHERE thread_members.thread_id = v.column1 AND thread_members.user_id = v.column2 \
                 AND thread_members.last_read_seq < v.column3",
                values_list(chunk.len(), 3)
            );
            let params = chunk
                .iter()
                .flat_map(|((t, u), s)| [Value::from(*t), Value::from(*u), Value::from(*s)]);
            txn.execute(sqlite(&sql, params)).await?;
        }
        txn.commit().await?;
        Ok(out)
    }
}

/// Rows per SQLite statement of a batch: 7 parameters each for the insert stays far below
/// SQLite's 32,766 bound parameters per statement.
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

/// A SQLite statement with positional parameters.
fn sqlite(sql: &str, params: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, params)
}

/// `(?, ?), (?, ?), …`: `rows` tuples of `width` placeholders.
fn placeholders(rows: usize, width: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    vec![tuple; rows].join(", ")
}

/// `VALUES (?, ?), …` as a table whose columns SQLite names `column1`, `column2`, ….
fn values_list(rows: usize, width: usize) -> String {
    format!("VALUES {}", placeholders(rows, width))
}
