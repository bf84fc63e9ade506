//! `thread_members`: membership (the source of truth; Redis holds a mirror) and read state.

use sea_orm::entity::prelude::*;

/// One user's membership in one thread.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "thread_members")]
pub struct Model {
    /// The thread.
    #[sea_orm(primary_key, auto_increment = false)]
    pub thread_id: Uuid,
    /// The member.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// When they joined.
    pub joined_at: DateTimeUtc,
    /// How far they have read; never moves backwards.
    pub last_read_seq: i64,
}

/// No navigated relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
