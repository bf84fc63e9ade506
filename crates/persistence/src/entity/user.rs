//! `users`: accounts. `username_lower` makes names unique and searchable case-insensitively.

use sea_orm::entity::prelude::*;

/// A registered user.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// The user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// As typed at registration.
    pub username: String,
    /// Lower-cased, unique.
    pub username_lower: String,
    /// An argon2 PHC string.
    pub password_hash: String,
    /// Registration time.
    pub created_at: DateTimeUtc,
}

/// No relations are navigated through SeaORM; queries join explicitly.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
