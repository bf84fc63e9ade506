//! The per-thread change counter (migration m0011): every edit, deletion and reaction change of a
//! message takes its thread's next change number and stamps it on the message, in the same
//! transaction as the change. A client that was away gives the last number it saw and reads back
//! every message changed since, as it is now — no history reload, nothing missed.
//!
//! Why a counter and not timestamps: the number is handed out under the thread row's lock, so a
//! change committed later always has a higher number than one the client already read; node
//! clocks play no part.

use crate::entity::{message, thread};
use crate::messages::to_message;
use crate::{Error, Result, Store};
use confab_protocol::{Message, ThreadId, UserId};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::HashMap;

/// Take `thread`'s next change number (locking its row until the caller's transaction ends)
/// and stamp it on `message` (locking that row too). Returns the number.
///
/// Call it before changing the message in the same transaction: every change then locks the
/// thread's row before the message's, and two changes of one message cannot deadlock.
pub(crate) async fn stamp<C: ConnectionTrait>(
    conn: &C,
    thread_id: uuid::Uuid,
    message_id: uuid::Uuid,
) -> Result<i64> {
    let bump = Query::update()
        .table(thread::Entity)
        .value(
            thread::Column::LastChange,
            Expr::col(thread::Column::LastChange).add(1),
        )
        .and_where(thread::Column::Id.eq(thread_id))
        .returning_col(thread::Column::LastChange)
        .to_owned();
    let row = conn
        .query_one(conn.get_database_backend().build(&bump))
        .await?
        .ok_or(Error::NotFound)?;
    let change: i64 = row.try_get("", "last_change")?;
    message::Entity::update_many()
        .col_expr(message::Column::ChangeSeq, Expr::value(Some(change)))
        .filter(message::Column::Id.eq(message_id))
        .exec(conn)
        .await?;
    Ok(change)
}

impl Store {
    /// The last change number of each of these threads that exists (0 when nothing ever
    /// changed), in one query: a resume asks for all its threads at once.
    pub async fn last_changes(&self, ids: &[ThreadId]) -> Result<HashMap<ThreadId, i64>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(uuid::Uuid, i64)> = thread::Entity::find()
            .select_only()
            .column(thread::Column::Id)
            .column(thread::Column::LastChange)
            .filter(thread::Column::Id.is_in(ids.iter().map(|t| t.0)))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(id, c)| (ThreadId(id), c)).collect())
    }

    /// The messages of `thread_id` changed after change number `after`, as they are now (with
    /// reaction counts as `viewer` sees them), oldest change first, at most `limit`, each with
    /// its change number.
    pub async fn changes_after(
        &self,
        thread_id: ThreadId,
        after: i64,
        limit: u64,
        viewer: UserId,
    ) -> Result<Vec<(i64, Message)>> {
        let rows = message::Entity::find()
            .filter(message::Column::ThreadId.eq(thread_id.0))
            .filter(message::Column::ChangeSeq.gt(after))
            .order_by_asc(message::Column::ChangeSeq)
            .limit(limit)
            .all(&self.db)
            .await?;
        let changes: Vec<i64> = rows.iter().map(|m| m.change_seq.unwrap_or(0)).collect();
        let mut msgs: Vec<Message> = rows.into_iter().map(to_message).collect();
        self.attach_reactions(&mut msgs, viewer).await?;
        Ok(changes.into_iter().zip(msgs).collect())
    }
}
