//! A per-thread change counter, so a client that was away can ask what changed in messages it
//! already has (edits, deletions, reactions) instead of reloading its history.
//!
//! `threads.last_change` counts a thread's changes; each change takes the next value and writes it
//! to the changed message's `messages.change_seq`. A `resume` that gives the last `change_seq` the
//! client saw gets, per thread, every message whose `change_seq` is above it, as it is now.
//!
//! The index is partial: it holds only messages that changed at least once, so storing a new
//! message (whose `change_seq` is NULL) adds no index entry — the send path is unchanged.
//! Building it reads the whole `messages` table once (and holds writes to it meanwhile; the
//! migration runs in a transaction, so not `CONCURRENTLY`): 66-74 ms for 1,000,000 messages in
//! cache on a 2-core machine (docs/operations.md, Migrations).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Threads {
    Table,
    LastChange,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ChangeSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Threads::Table)
                .add_column(
                    ColumnDef::new(Threads::LastChange)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::ChangeSeq).big_integer().null())
                .to_owned(),
        )
        .await?;
        // Same text on Postgres and SQLite (both have partial indexes).
        use sea_orm_migration::sea_orm::ConnectionTrait;
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_messages_changes \
                 ON messages (thread_id, change_seq) WHERE change_seq IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::sea_orm::ConnectionTrait;
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_messages_changes")
            .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .drop_column(Messages::ChangeSeq)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Threads::Table)
                .drop_column(Threads::LastChange)
                .to_owned(),
        )
        .await
    }
}
