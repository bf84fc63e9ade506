//! One index on `messages (thread_id, seq)` instead of two. Every stored message paid for four
//! index insertions; `idx_messages_unread (thread_id, seq, sender_id, deleted_at)` duplicated the
//! key of `uq_messages_thread_seq` only to carry the two columns the unread count filters on.
//! On Postgres the unique index now carries them itself (`INCLUDE`), so the count stays
//! index-only; SQLite has no `INCLUDE` and counts through the unique index and the table.
//! Measured with the batch store function alone (200 messages per call, pgbench): 9.4 → 8.6 ms
//! per call.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    ThreadId,
    Seq,
    SenderId,
    DeletedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            // Built before the old one is dropped, so (thread_id, seq) is never unguarded.
            m.get_connection()
                .execute_unprepared(
                    "CREATE UNIQUE INDEX IF NOT EXISTS uq_messages_thread_seq_cover \
                     ON messages (thread_id, seq) INCLUDE (sender_id, deleted_at); \
                     DROP INDEX IF EXISTS uq_messages_thread_seq; \
                     ALTER INDEX uq_messages_thread_seq_cover RENAME TO uq_messages_thread_seq",
                )
                .await?;
        }
        m.drop_index(
            Index::drop()
                .name("idx_messages_unread")
                .table(Messages::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
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
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "CREATE UNIQUE INDEX IF NOT EXISTS uq_messages_thread_seq_plain \
                     ON messages (thread_id, seq); \
                     DROP INDEX IF EXISTS uq_messages_thread_seq; \
                     ALTER INDEX uq_messages_thread_seq_plain RENAME TO uq_messages_thread_seq",
                )
                .await?;
        }
        Ok(())
    }
}
