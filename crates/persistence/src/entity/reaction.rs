//! `reactions`: one row per (message, emoji, user).

use sea_orm::entity::prelude::*;

/// A user's emoji reaction to a message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reactions")]
pub struct Model {
    /// The message.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// The emoji.
    #[sea_orm(primary_key, auto_increment = false)]
    pub emoji: String,
    /// Who reacted.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// When.
    pub created_at: DateTimeUtc,
}

/// No navigated relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
