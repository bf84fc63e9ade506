//! `reports`: messages reported by members, for moderators.

use sea_orm::entity::prelude::*;

/// One report.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reports")]
pub struct Model {
    /// The report id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The reported message.
    pub message_id: Uuid,
    /// Who reported it.
    pub reporter_id: Uuid,
    /// Why.
    pub reason: String,
    /// When.
    pub created_at: DateTimeUtc,
}

/// No navigated relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
