//! Messages: the send transaction (gap-free `seq`, idempotent by `client_msg_id`), history pages,
//! replay ranges, edits and deletes.

use crate::entity::{message, reaction, thread, thread_member};
use crate::{Backend, Error, Result, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{Message, MessageId, ReactionCount, ThreadId, UserId, DELETED_BODY};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use std::collections::BTreeMap;

/// The result of [`Store::send_message`].
#[derive(Clone, Debug)]
pub enum SendOutcome {
    /// Stored now (committed).
    Stored(Message),
    /// This sender had already stored this `client_msg_id` in this thread: the original message.
    Duplicate(Message),
    /// This sender had already used this `client_msg_id` for a message in *another* thread: not
    /// a retry of this send but a reused key, so nothing is stored and nothing is acknowledged
    /// (answering with the other thread's message would ack a send that was never stored).
    KeyReused,
    /// The sender is not a member of the thread (or the thread does not exist).
    NotMember,
}

/// The result of an edit or delete.
#[derive(Clone, Debug)]
pub enum EditOutcome {
    /// Done; the message as it now is, and the change number the change took (see `changes`).
    Done(Message, i64),
    /// No such message, or the caller is not a member of its thread.
    NotFound,
    /// The caller is a member but not the sender.
    Forbidden,
    /// The message is deleted: it cannot be edited, and deleting it again changes nothing.
    Deleted,
}

/// A message as it is right after being stored (no edits, no reactions yet).
pub(crate) fn fresh_message(
    thread_id: ThreadId,
    id: MessageId,
    seq: i64,
    sender: UserId,
    client_msg_id: String,
    body: String,
    created_at: chrono::DateTime<Utc>,
) -> Message {
    Message {
        thread_id,
        id,
        seq,
        sender_id: sender,
        client_msg_id,
        body,
        created_at,
        deleted: false,
        edited_at: None,
        reactions: Vec::new(),
    }
}

pub(crate) fn to_message(m: message::Model) -> Message {
    let deleted = m.deleted_at.is_some();
    Message {
        thread_id: ThreadId(m.thread_id),
        id: MessageId(m.id),
        seq: m.seq,
        sender_id: UserId(m.sender_id),
        client_msg_id: m.client_msg_id,
        body: if deleted {
            DELETED_BODY.to_owned()
        } else {
            m.body
        },
        created_at: m.created_at,
        deleted,
        edited_at: m.edited_at,
        reactions: Vec::new(),
    }
}

impl Store {
    /// Store a message: check membership, take the next `seq` of the thread, insert, and mark
    /// the sender's own read state — all in one transaction, so `seq` is gap-free (a failed
    /// insert rolls the counter back) and ordered (the counter row lock serializes senders).
    /// Returns only after the commit.
    pub async fn send_message(
        &self,
        thread_id: ThreadId,
        sender: UserId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<SendOutcome> {
        let attempt = match self.backend() {
            // One statement, one round trip, committed on its own: the hot path of a cluster.
            Backend::Postgres => {
                self.send_message_pg(thread_id, sender, client_msg_id, body)
                    .await
            }
            Backend::Sqlite => {
                // Only a retry into the same thread is answered before the membership check
                // (as Postgres does); a key of another thread fails the insert below instead.
                if let Some(orig) = self.find_by_client_id(sender, client_msg_id).await? {
                    if orig.thread_id == thread_id {
                        return Ok(SendOutcome::Duplicate(orig));
                    }
                }
                self.send_message_txn(thread_id, sender, client_msg_id, body)
                    .await
            }
        };
        match attempt {
            Err(Error::Conflict(_)) => {
                // A retry: this client_msg_id was stored before (or by a concurrent retry).
                match self.find_by_client_id(sender, client_msg_id).await? {
                    Some(orig) if orig.thread_id == thread_id => Ok(SendOutcome::Duplicate(orig)),
                    Some(_) => Ok(SendOutcome::KeyReused),
                    None => Err(Error::Conflict("message".into())),
                }
            }
            other => other,
        }
    }

    /// The send transaction as one Postgres statement: data-modifying CTEs check membership,
    /// bump the thread's counter (taking its row lock, which orders concurrent senders), insert
    /// the message and advance the sender's read state; the statement commits as a whole, and a
    /// unique violation on `(sender, client_msg_id)` rolls the counter back with it.
    /// No row back means the sender is not a member.
    async fn send_message_pg(
        &self,
        thread_id: ThreadId,
        sender: UserId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<SendOutcome> {
        const SQL: &str = "WITH member AS (
                SELECT 1 FROM thread_members WHERE thread_id = $1 AND user_id = $2
            ), bump AS (
                UPDATE threads SET last_seq = last_seq + 1, last_activity_at = $3
                WHERE id = $1 AND EXISTS (SELECT 1 FROM member)
                RETURNING last_seq
            ), ins AS (
                INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at)
                SELECT $4, $1, bump.last_seq, $2, $5, $6, $3 FROM bump
                RETURNING seq
            ), mark AS (
                UPDATE thread_members SET last_read_seq = ins.seq FROM ins
                WHERE thread_members.thread_id = $1 AND thread_members.user_id = $2
                  AND thread_members.last_read_seq < ins.seq
            )
            SELECT seq FROM ins";
        let now = Utc::now().trunc_subsecs(6);
        let id = MessageId::new();
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            SQL,
            [
                thread_id.0.into(),
                sender.0.into(),
                now.into(),
                id.0.into(),
                client_msg_id.into(),
                body.into(),
            ],
        );
        let Some(row) = self.db.query_one(stmt).await? else {
            return Ok(SendOutcome::NotMember);
        };
        let seq: i64 = row.try_get("", "seq")?;
        Ok(SendOutcome::Stored(fresh_message(
            thread_id,
            id,
            seq,
            sender,
            client_msg_id.to_owned(),
            body.to_owned(),
            now,
        )))
    }

    async fn send_message_txn(
        &self,
        thread_id: ThreadId,
        sender: UserId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<SendOutcome> {
        let txn = self.db.begin().await?;
        let member = thread_member::Entity::find_by_id((thread_id.0, sender.0))
            .one(&txn)
            .await?;
        if member.is_none() {
            return Ok(SendOutcome::NotMember);
        }
        let now = Utc::now().trunc_subsecs(6);
        let bump = Query::update()
            .table(thread::Entity)
            .value(
                thread::Column::LastSeq,
                Expr::col(thread::Column::LastSeq).add(1),
            )
            .value(thread::Column::LastActivityAt, now)
            .and_where(thread::Column::Id.eq(thread_id.0))
            .returning_col(thread::Column::LastSeq)
            .to_owned();
        let row = txn
            .query_one(txn.get_database_backend().build(&bump))
            .await?
            .ok_or(Error::NotFound)?;
        let seq: i64 = row.try_get("", "last_seq")?;
        let id = MessageId::new();
        message::Entity::insert(message::ActiveModel {
            id: Set(id.0),
            thread_id: Set(thread_id.0),
            seq: Set(seq),
            sender_id: Set(sender.0),
            client_msg_id: Set(client_msg_id.to_owned()),
            body: Set(body.to_owned()),
            created_at: Set(now),
            edited_at: Set(None),
            deleted_at: Set(None),
            change_seq: NotSet,
        })
        .exec(&txn)
        .await?;
        thread_member::Entity::update_many()
            .col_expr(thread_member::Column::LastReadSeq, Expr::value(seq))
            .filter(thread_member::Column::ThreadId.eq(thread_id.0))
            .filter(thread_member::Column::UserId.eq(sender.0))
            .filter(thread_member::Column::LastReadSeq.lt(seq))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(SendOutcome::Stored(fresh_message(
            thread_id,
            id,
            seq,
            sender,
            client_msg_id.to_owned(),
            body.to_owned(),
            now,
        )))
    }

    async fn find_by_client_id(
        &self,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        Ok(message::Entity::find()
            .filter(message::Column::SenderId.eq(sender.0))
            .filter(message::Column::ClientMsgId.eq(client_msg_id))
            .one(&self.db)
            .await?
            .map(to_message))
    }

    /// A page of history strictly before `before_seq` (or the newest when `None`), ascending,
    /// with reaction counts as `viewer` sees them. Keyset on `(thread_id, seq)`, never OFFSET.
    pub async fn history_page(
        &self,
        thread_id: ThreadId,
        before_seq: Option<i64>,
        limit: u64,
        viewer: UserId,
    ) -> Result<Vec<Message>> {
        let mut q = message::Entity::find().filter(message::Column::ThreadId.eq(thread_id.0));
        if let Some(b) = before_seq {
            q = q.filter(message::Column::Seq.lt(b));
        }
        let mut rows: Vec<Message> = q
            .order_by_desc(message::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_message)
            .collect();
        rows.reverse();
        self.attach_reactions(&mut rows, viewer).await?;
        Ok(rows)
    }

    /// Messages with `seq > after_seq` in ascending order, at most `limit` (replay and repair).
    pub async fn messages_after(
        &self,
        thread_id: ThreadId,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<Message>> {
        Ok(message::Entity::find()
            .filter(message::Column::ThreadId.eq(thread_id.0))
            .filter(message::Column::Seq.gt(after_seq))
            .order_by_asc(message::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_message)
            .collect())
    }

    /// The first `limit` messages with `after < seq < before`, ascending (gap repair: a long
    /// gap is read a page at a time, so its reader's memory does not grow with it).
    pub async fn messages_between(
        &self,
        thread_id: ThreadId,
        after: i64,
        before: i64,
        limit: u64,
    ) -> Result<Vec<Message>> {
        Ok(message::Entity::find()
            .filter(message::Column::ThreadId.eq(thread_id.0))
            .filter(message::Column::Seq.gt(after))
            .filter(message::Column::Seq.lt(before))
            .order_by_asc(message::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_message)
            .collect())
    }

    /// One message by id.
    pub async fn message(&self, id: MessageId) -> Result<Message> {
        message::Entity::find_by_id(id.0)
            .one(&self.db)
            .await?
            .map(to_message)
            .ok_or(Error::NotFound)
    }

    /// Fill in per-emoji counts and whether `viewer` reacted.
    pub(crate) async fn attach_reactions(
        &self,
        msgs: &mut [Message],
        viewer: UserId,
    ) -> Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let rows = reaction::Entity::find()
            .filter(reaction::Column::MessageId.is_in(msgs.iter().map(|m| m.id.0)))
            .order_by_asc(reaction::Column::CreatedAt)
            .all(&self.db)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        // message -> emoji (in first-reacted order) -> (count, me)
        let mut agg: BTreeMap<uuid::Uuid, Vec<ReactionCount>> = BTreeMap::new();
        for r in rows {
            let list = agg.entry(r.message_id).or_default();
            match list.iter_mut().find(|c| c.emoji == r.emoji) {
                Some(c) => {
                    c.count += 1;
                    c.me |= r.user_id == viewer.0;
                }
                None => list.push(ReactionCount {
                    emoji: r.emoji,
                    count: 1,
                    me: r.user_id == viewer.0,
                }),
            }
        }
        for m in msgs.iter_mut() {
            if let Some(list) = agg.remove(&m.id.0) {
                m.reactions = list;
            }
        }
        Ok(())
    }
}
