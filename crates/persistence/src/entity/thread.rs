//! `threads`: direct and group threads. `last_seq` is the per-thread message counter; bumping it
//! inside the send transaction is what makes `seq` gap-free and ordered.

use sea_orm::entity::prelude::*;

/// A thread.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "threads")]
pub struct Model {
    /// The thread id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `direct` or `group`.
    pub kind: String,
    /// Room name; `None` for direct threads.
    pub name: Option<String>,
    /// Listed and joinable by anyone.
    pub public: bool,
    /// `min(a,b):max(a,b)` for direct threads, so a pair has exactly one.
    pub direct_key: Option<String>,
    /// The newest message's `seq` (0 when empty).
    pub last_seq: i64,
    /// Ordering key of the thread list.
    pub last_activity_at: DateTimeUtc,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Who created it.
    pub created_by: Uuid,
    /// How many changes (edits, deletions, reaction changes) its messages have had: the last
    /// `messages.change_seq` handed out (0 for none).
    pub last_change: i64,
}

/// No navigated relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
