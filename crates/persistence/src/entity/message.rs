//! `messages`: every stored message, keyed for paging by `(thread_id, seq)`.

use sea_orm::entity::prelude::*;

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// The message id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Its thread.
    pub thread_id: Uuid,
    /// Its gap-free position in the thread.
    pub seq: i64,
    /// The sender.
    pub sender_id: Uuid,
    /// The sender's idempotency key (unique per sender).
    pub client_msg_id: String,
    /// The text (kept after deletion for moderators; never shown once `deleted_at` is set).
    pub body: String,
    /// When stored.
    pub created_at: DateTimeUtc,
    /// Last edit.
    pub edited_at: Option<DateTimeUtc>,
    /// Deletion time.
    pub deleted_at: Option<DateTimeUtc>,
    /// The thread's change counter at this message's latest edit, deletion or reaction change
    /// (`None` until the first; see `threads.last_change`).
    pub change_seq: Option<i64>,
}

/// No navigated relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
