//! Group commit for sends on Postgres: concurrent sends are gathered into one transaction, so
//! one WAL flush acknowledges many messages. Each send is still acknowledged only after the
//! commit that stored it, keeps its gap-free per-thread `seq`, and stays idempotent.
//!
//! A few writer tasks pull whatever is queued (up to a batch size) and store it at once; while
//! one batch commits, the next one fills, so batches grow with load and a lone send waits for
//! nobody. Anything the batch statement did not store (a retry of a stored `client_msg_id`, a
//! non-member, a duplicate inside the batch) or a batch that failed as a whole goes through the
//! single-send path, which classifies it exactly.

use crate::messages::fresh_message;
use crate::{Error, Result, SendOutcome, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{MessageId, ThreadId, UserId};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait, Value};
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

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
    tx: mpsc::Sender<Pending>,
}

impl SendBatcher {
    /// Start `writers` writer tasks taking up to `max_batch` sends each; at most `queue` sends
    /// wait (further senders wait for room, which is the backpressure on a saturated database).
    pub fn start(store: Store, writers: usize, max_batch: usize, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let rx = rx.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(max_batch);
                loop {
                    // One writer at a time takes what is queued; the others are committing.
                    let n = rx
                        .lock()
                        .await
                        .recv_many(&mut batch, max_batch.max(1))
                        .await;
                    if n == 0 {
                        return;
                    }
                    store.write_batch(std::mem::take(&mut batch)).await;
                }
            });
        }
        Self { tx }
    }

    /// Store one message (group-committed with whatever else is pending).
    pub async fn send(
        &self,
        thread: ThreadId,
        sender: UserId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<SendOutcome> {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            thread,
            sender,
            client_msg_id: client_msg_id.to_owned(),
            body: body.to_owned(),
            reply,
        };
        if self.tx.send(pending).await.is_err() {
            return Err(Error::Conflict("send batcher stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Conflict("send batcher stopped".into())))
    }
}

const BATCH_SQL: &str = "WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int8[])
            AS i(id, thread_id, sender_id, client_msg_id, body, ord)
    ), ok AS (
        SELECT i.* FROM input i
        WHERE EXISTS (SELECT 1 FROM thread_members m
                      WHERE m.thread_id = i.thread_id AND m.user_id = i.sender_id)
          AND NOT EXISTS (SELECT 1 FROM messages x
                          WHERE x.sender_id = i.sender_id AND x.client_msg_id = i.client_msg_id)
    ), counts AS (
        SELECT thread_id, count(*) AS n FROM ok GROUP BY thread_id
    ), bump AS (
        UPDATE threads t SET last_seq = t.last_seq + c.n, last_activity_at = $7
        FROM counts c WHERE t.id = c.thread_id
        RETURNING t.id, t.last_seq AS new_last, c.n
    ), numbered AS (
        SELECT ok.*, b.new_last - b.n + row_number() OVER (PARTITION BY ok.thread_id ORDER BY ok.ord) AS seq
        FROM ok JOIN bump b ON b.id = ok.thread_id
    ), ins AS (
        INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at)
        SELECT id, thread_id, seq, sender_id, client_msg_id, body, $7 FROM numbered
        RETURNING id, seq, thread_id, sender_id
    ), mark AS (
        UPDATE thread_members m SET last_read_seq = s.max_seq
        FROM (SELECT thread_id, sender_id, max(seq) AS max_seq FROM ins GROUP BY thread_id, sender_id) s
        WHERE m.thread_id = s.thread_id AND m.user_id = s.sender_id AND m.last_read_seq < s.max_seq
    )
    SELECT id, seq FROM ins";

impl Store {
    async fn write_batch(&self, batch: Vec<Pending>) {
        if batch.len() == 1 {
            for p in batch {
                let r = self
                    .send_message(p.thread, p.sender, &p.client_msg_id, &p.body)
                    .await;
                let _ = p.reply.send(r);
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
        let stored = self.store_batch(&first, &ids, now).await;
        let stored: HashMap<MessageId, i64> = match stored {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "batch failed; storing one by one");
                HashMap::new()
            }
        };
        for (p, id) in first.into_iter().zip(ids) {
            match stored.get(&id) {
                Some(&seq) => {
                    let _ = p.reply.send(Ok(SendOutcome::Stored(fresh_message(
                        p.thread,
                        id,
                        seq,
                        p.sender,
                        p.client_msg_id,
                        p.body,
                        now,
                    ))));
                }
                None => {
                    // Not stored by the batch: a retry, a non-member, or the batch failed.
                    let r = self
                        .send_message(p.thread, p.sender, &p.client_msg_id, &p.body)
                        .await;
                    let _ = p.reply.send(r);
                }
            }
        }
        for p in repeats {
            let r = self
                .send_message(p.thread, p.sender, &p.client_msg_id, &p.body)
                .await;
            let _ = p.reply.send(r);
        }
    }

    /// One transaction: lock the batch's threads in id order (two batches touching the same
    /// threads then cannot deadlock), then store everything in one statement and commit.
    async fn store_batch(
        &self,
        batch: &[Pending],
        ids: &[MessageId],
        now: chrono::DateTime<Utc>,
    ) -> Result<HashMap<MessageId, i64>> {
        let mut threads: Vec<uuid::Uuid> = batch.iter().map(|p| p.thread.0).collect();
        threads.sort();
        threads.dedup();
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
        let txn = self.db.begin().await?;
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM threads WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            [uuid_array(threads)],
        ))
        .await?;
        let rows = txn
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                BATCH_SQL,
                [
                    uuid_array(ids.iter().map(|i| i.0).collect()),
                    uuid_array(batch.iter().map(|p| p.thread.0).collect()),
                    uuid_array(batch.iter().map(|p| p.sender.0).collect()),
                    text_array(batch.iter().map(|p| p.client_msg_id.clone()).collect()),
                    text_array(batch.iter().map(|p| p.body.clone()).collect()),
                    Value::Array(
                        sea_orm::sea_query::ArrayType::BigInt,
                        Some(Box::new((0..batch.len() as i64).map(Value::from).collect())),
                    ),
                    now.into(),
                ],
            ))
            .await?;
        txn.commit().await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: uuid::Uuid = row.try_get("", "id")?;
            let seq: i64 = row.try_get("", "seq")?;
            out.insert(MessageId(id), seq);
        }
        Ok(out)
    }
}
