//! Emoji reactions: one row per (message, emoji, user), so a user reacts at most once with each
//! emoji on a message. Adding twice or removing what is not there changes nothing.

use crate::changes;
use crate::entity::{message, reaction, thread_member};
use crate::{Result, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{MessageId, ThreadId, UserId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait,
};

/// The result of [`Store::set_reaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReactOutcome {
    /// Applied (or already so).
    Done {
        /// The message's thread.
        thread_id: ThreadId,
        /// False when the reaction was already present (add) or absent (remove).
        changed: bool,
        /// How many users now react with this emoji.
        count: i64,
        /// The change number the change took (see `changes`); `None` when nothing changed.
        change_seq: Option<i64>,
    },
    /// No such message, or the caller is not a member of its thread.
    NotFound,
    /// The message is deleted; its reactions are gone and cannot change.
    Deleted,
}

impl Store {
    /// Add (`add = true`) or remove the caller's `emoji` reaction on a message.
    pub async fn set_reaction(
        &self,
        id: MessageId,
        user: UserId,
        emoji: &str,
        add: bool,
    ) -> Result<ReactOutcome> {
        let Some(m) = message::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(ReactOutcome::NotFound);
        };
        let member = thread_member::Entity::find_by_id((m.thread_id, user.0))
            .one(&self.db)
            .await?
            .is_some();
        if !member {
            return Ok(ReactOutcome::NotFound);
        }
        if m.deleted_at.is_some() {
            return Ok(ReactOutcome::Deleted);
        }
        // Thread row, then message row (`changes::stamp`), then the reaction: the order every
        // change takes its locks in. A change that turns out to be none rolls back its stamp.
        let txn = self.db.begin().await?;
        let change = changes::stamp(&txn, m.thread_id, id.0).await?;
        let changed = if add {
            let row = reaction::ActiveModel {
                message_id: Set(id.0),
                emoji: Set(emoji.to_owned()),
                user_id: Set(user.0),
                created_at: Set(Utc::now().trunc_subsecs(6)),
            };
            // Already reacted (possibly by a concurrent retry): idempotent. DO NOTHING rather
            // than catching the conflict, which would abort a Postgres transaction.
            reaction::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([
                        reaction::Column::MessageId,
                        reaction::Column::Emoji,
                        reaction::Column::UserId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?
                > 0
        } else {
            reaction::Entity::delete_by_id((id.0, emoji.to_owned(), user.0))
                .exec(&txn)
                .await?
                .rows_affected
                > 0
        };
        let change = if changed {
            txn.commit().await?;
            Some(change)
        } else {
            txn.rollback().await?;
            None
        };
        let count = reaction::Entity::find()
            .filter(reaction::Column::MessageId.eq(id.0))
            .filter(reaction::Column::Emoji.eq(emoji))
            .count(&self.db)
            .await? as i64;
        Ok(ReactOutcome::Done {
            thread_id: ThreadId(m.thread_id),
            changed,
            count,
            change_seq: change,
        })
    }
}
