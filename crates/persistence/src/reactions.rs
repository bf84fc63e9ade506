//! Emoji reactions: one row per (message, emoji, user), so a user reacts at most once with each
//! emoji on a message. Adding twice or removing what is not there changes nothing.

use crate::entity::{message, reaction, thread_member};
use crate::{Error, Result, Store};
use chrono::{SubsecRound, Utc};
use confab_protocol::{MessageId, ThreadId, UserId};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

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
        let changed = if add {
            let row = reaction::ActiveModel {
                message_id: Set(id.0),
                emoji: Set(emoji.to_owned()),
                user_id: Set(user.0),
                created_at: Set(Utc::now().trunc_subsecs(6)),
            };
            match reaction::Entity::insert(row)
                .exec(&self.db)
                .await
                .map_err(Error::from)
            {
                Ok(_) => true,
                // Already reacted (possibly by a concurrent retry): idempotent.
                Err(Error::Conflict(_)) => false,
                Err(e) => return Err(e),
            }
        } else {
            reaction::Entity::delete_by_id((id.0, emoji.to_owned(), user.0))
                .exec(&self.db)
                .await?
                .rows_affected
                > 0
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
        })
    }
}
