//! Edits and deletes of stored messages: only the sender may change a message, and a deleted
//! message stays in place (its `seq` never disappears) with its body hidden.

use crate::changes;
use crate::entity::{message, reaction, thread_member};
use crate::messages::{to_message, EditOutcome};
use crate::{Result, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{Message, MessageId, UserId, DELETED_BODY};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

/// Why a message may not be changed by a caller, or the message itself.
enum Access {
    Allowed(message::Model),
    Refused(EditOutcome),
}

impl Store {
    /// The message if `caller` sent it; `NotFound` when it does not exist or the caller is not
    /// a member of its thread, `Forbidden` when the caller is a member but not the sender.
    async fn own_message(&self, id: MessageId, caller: UserId) -> Result<Access> {
        let Some(m) = message::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(Access::Refused(EditOutcome::NotFound));
        };
        let member = thread_member::Entity::find_by_id((m.thread_id, caller.0))
            .one(&self.db)
            .await?
            .is_some();
        if !member {
            return Ok(Access::Refused(EditOutcome::NotFound));
        }
        if m.sender_id != caller.0 {
            return Ok(Access::Refused(EditOutcome::Forbidden));
        }
        Ok(Access::Allowed(m))
    }

    /// Replace the body of the caller's own message and set `edited_at`. A deleted message
    /// cannot be edited (`Deleted`).
    pub async fn edit_message(
        &self,
        id: MessageId,
        caller: UserId,
        body: &str,
    ) -> Result<EditOutcome> {
        let m = match self.own_message(id, caller).await? {
            Access::Allowed(m) => m,
            Access::Refused(r) => return Ok(r),
        };
        if m.deleted_at.is_some() {
            return Ok(EditOutcome::Deleted);
        }
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.db.begin().await?;
        // The thread's row first, then the message's: every change takes the two locks in that
        // order (see `changes::stamp`), so two changes of one message cannot deadlock.
        let change = changes::stamp(&txn, m.thread_id, id.0).await?;
        // The `deleted_at IS NULL` guard makes a concurrent delete win cleanly (the stamp
        // rolls back with the rest).
        let res = message::Entity::update_many()
            .col_expr(message::Column::Body, Expr::value(body.to_owned()))
            .col_expr(message::Column::EditedAt, Expr::value(Some(now)))
            .filter(message::Column::Id.eq(id.0))
            .filter(message::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Ok(EditOutcome::Deleted);
        }
        txn.commit().await?;
        let mut msg: Message = to_message(m);
        msg.body = body.to_owned();
        msg.edited_at = Some(now);
        Ok(EditOutcome::Done(msg, change))
    }

    /// Delete the caller's own message: it keeps its place and `seq`, shows
    /// `[message deleted]`, and loses its reactions. The stored text is kept for moderators.
    /// Deleting an already deleted message returns `Deleted` and changes nothing.
    pub async fn delete_message(&self, id: MessageId, caller: UserId) -> Result<EditOutcome> {
        let m = match self.own_message(id, caller).await? {
            Access::Allowed(m) => m,
            Access::Refused(r) => return Ok(r),
        };
        if m.deleted_at.is_some() {
            return Ok(EditOutcome::Deleted);
        }
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.db.begin().await?;
        // Thread row, then message row: the order every change takes them in.
        let change = changes::stamp(&txn, m.thread_id, id.0).await?;
        let res = message::Entity::update_many()
            .col_expr(message::Column::DeletedAt, Expr::value(Some(now)))
            .filter(message::Column::Id.eq(id.0))
            .filter(message::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if res.rows_affected == 0 {
            return Ok(EditOutcome::Deleted);
        }
        reaction::Entity::delete_many()
            .filter(reaction::Column::MessageId.eq(id.0))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        let mut msg = to_message(m);
        msg.deleted = true;
        msg.body = DELETED_BODY.to_owned();
        Ok(EditOutcome::Done(msg, change))
    }
}
