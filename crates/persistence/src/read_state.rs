//! Read state: how far each member has read a thread. It only moves forwards and never past
//! the thread's last `seq`.

use crate::entity::{thread, thread_member};
use crate::{Result, Store};
use confab_protocol::{ThreadId, UserId};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

/// A member's position in a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPosition {
    /// How far the member has read.
    pub last_read_seq: i64,
    /// The thread's newest `seq`.
    pub last_seq: i64,
    /// The thread's change counter (see `changes`), read with `last_seq`.
    pub last_change: i64,
}

/// The result of [`Store::mark_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkReadOutcome {
    /// The member's read position after the call.
    pub last_read_seq: i64,
    /// Whether the call moved it.
    pub moved: bool,
}

impl Store {
    /// Where `user` stands in `thread`; `None` when they are not a member.
    pub async fn read_position(
        &self,
        thread_id: ThreadId,
        user: UserId,
    ) -> Result<Option<ReadPosition>> {
        let Some(member) = thread_member::Entity::find_by_id((thread_id.0, user.0))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let heads: Option<(i64, i64)> = thread::Entity::find_by_id(thread_id.0)
            .select_only()
            .column(thread::Column::LastSeq)
            .column(thread::Column::LastChange)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(heads.map(|(last_seq, last_change)| ReadPosition {
            last_read_seq: member.last_read_seq,
            last_seq,
            last_change,
        }))
    }

    /// Move `user`'s read position in `thread` to `seq`, clamped to the thread's last `seq`;
    /// never backwards. `None` when they are not a member.
    pub async fn mark_read(
        &self,
        thread_id: ThreadId,
        user: UserId,
        seq: i64,
    ) -> Result<Option<MarkReadOutcome>> {
        let Some(pos) = self.read_position(thread_id, user).await? else {
            return Ok(None);
        };
        let target = seq.min(pos.last_seq);
        if target <= pos.last_read_seq {
            return Ok(Some(MarkReadOutcome {
                last_read_seq: pos.last_read_seq,
                moved: false,
            }));
        }
        // The `< target` guard keeps the position monotonic under concurrent calls: a lower
        // value arriving late changes nothing.
        let res = thread_member::Entity::update_many()
            .col_expr(thread_member::Column::LastReadSeq, Expr::value(target))
            .filter(thread_member::Column::ThreadId.eq(thread_id.0))
            .filter(thread_member::Column::UserId.eq(user.0))
            .filter(thread_member::Column::LastReadSeq.lt(target))
            .exec(&self.db)
            .await?;
        if res.rows_affected > 0 {
            return Ok(Some(MarkReadOutcome {
                last_read_seq: target,
                moved: true,
            }));
        }
        // Someone else (another session, or a send) moved it at least as far meanwhile.
        let now = self.read_position(thread_id, user).await?;
        Ok(now.map(|p| MarkReadOutcome {
            last_read_seq: p.last_read_seq,
            moved: false,
        }))
    }
}
