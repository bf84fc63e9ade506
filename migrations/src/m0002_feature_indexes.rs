//! Indexes for the chat features: the thread list's ordering, unread counting and reports.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Threads {
    Table,
    Id,
    LastActivityAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ThreadId,
    Seq,
    SenderId,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Reports {
    Table,
    MessageId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The thread list and the room list page by (last_activity_at, id), newest first.
        m.create_index(
            Index::create()
                .name("idx_threads_activity")
                .table(Threads::Table)
                .col(Threads::LastActivityAt)
                .col(Threads::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        // Unread counts scan (thread_id, seq > last_read_seq) and filter on the sender and the
        // deletion mark; carrying both in the index answers the count from the index alone.
        m.create_index(
            Index::create()
                .name("idx_messages_unread")
                .table(Messages::Table)
                .col(Messages::ThreadId)
                .col(Messages::Seq)
                .col(Messages::SenderId)
                .col(Messages::DeletedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        // Moderators look reports up by message.
        m.create_index(
            Index::create()
                .name("idx_reports_message")
                .table(Reports::Table)
                .col(Reports::MessageId)
                .col(Reports::CreatedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("idx_reports_message", Reports::Table.into_iden()),
            ("idx_messages_unread", Messages::Table.into_iden()),
            ("idx_threads_activity", Threads::Table.into_iden()),
        ] {
            m.drop_index(Index::drop().name(name).table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
