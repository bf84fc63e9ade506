//! Users, tokens, threads, members, messages, reactions and reports.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    UsernameLower,
    PasswordHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuthTokens {
    Table,
    TokenHash,
    UserId,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Threads {
    Table,
    Id,
    Kind,
    Name,
    Public,
    DirectKey,
    LastSeq,
    LastActivityAt,
    CreatedAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum ThreadMembers {
    Table,
    ThreadId,
    UserId,
    JoinedAt,
    LastReadSeq,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ThreadId,
    Seq,
    SenderId,
    ClientMsgId,
    Body,
    CreatedAt,
    EditedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Reactions {
    Table,
    MessageId,
    UserId,
    Emoji,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Reports {
    Table,
    Id,
    MessageId,
    ReporterId,
    Reason,
    CreatedAt,
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .if_not_exists()
                .col(ColumnDef::new(Users::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(Users::Username).string_len(32).not_null())
                .col(
                    ColumnDef::new(Users::UsernameLower)
                        .string_len(32)
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Users::PasswordHash).string().not_null())
                .col(ts(Users::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AuthTokens::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(AuthTokens::TokenHash)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(AuthTokens::UserId).uuid().not_null())
                .col(ts(AuthTokens::CreatedAt))
                .col(ts(AuthTokens::ExpiresAt))
                .col(
                    ColumnDef::new(AuthTokens::RevokedAt)
                        .timestamp_with_time_zone()
                        .null(),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(AuthTokens::Table, AuthTokens::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Threads::Table)
                .if_not_exists()
                .col(ColumnDef::new(Threads::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(Threads::Kind).string_len(16).not_null())
                .col(ColumnDef::new(Threads::Name).string_len(100).null())
                .col(
                    ColumnDef::new(Threads::Public)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .col(
                    ColumnDef::new(Threads::DirectKey)
                        .string_len(80)
                        .null()
                        .unique_key(),
                )
                .col(
                    ColumnDef::new(Threads::LastSeq)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(ts(Threads::LastActivityAt))
                .col(ts(Threads::CreatedAt))
                .col(ColumnDef::new(Threads::CreatedBy).uuid().not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_threads_public")
                .table(Threads::Table)
                .col(Threads::Public)
                .col(Threads::LastActivityAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ThreadMembers::Table)
                .if_not_exists()
                .col(ColumnDef::new(ThreadMembers::ThreadId).uuid().not_null())
                .col(ColumnDef::new(ThreadMembers::UserId).uuid().not_null())
                .col(ts(ThreadMembers::JoinedAt))
                .col(
                    ColumnDef::new(ThreadMembers::LastReadSeq)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .primary_key(
                    Index::create()
                        .col(ThreadMembers::ThreadId)
                        .col(ThreadMembers::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ThreadMembers::Table, ThreadMembers::ThreadId)
                        .to(Threads::Table, Threads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ThreadMembers::Table, ThreadMembers::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_thread_members_user")
                .table(ThreadMembers::Table)
                .col(ThreadMembers::UserId)
                .col(ThreadMembers::ThreadId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .if_not_exists()
                .col(ColumnDef::new(Messages::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(Messages::ThreadId).uuid().not_null())
                .col(ColumnDef::new(Messages::Seq).big_integer().not_null())
                .col(ColumnDef::new(Messages::SenderId).uuid().not_null())
                .col(
                    ColumnDef::new(Messages::ClientMsgId)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(Messages::Body).text().not_null())
                .col(ts(Messages::CreatedAt))
                .col(
                    ColumnDef::new(Messages::EditedAt)
                        .timestamp_with_time_zone()
                        .null(),
                )
                .col(
                    ColumnDef::new(Messages::DeletedAt)
                        .timestamp_with_time_zone()
                        .null(),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Messages::Table, Messages::ThreadId)
                        .to(Threads::Table, Threads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The keyset for history and replay: (thread_id, seq) is unique and ordered.
        m.create_index(
            Index::create()
                .name("uq_messages_thread_seq")
                .table(Messages::Table)
                .col(Messages::ThreadId)
                .col(Messages::Seq)
                .unique()
                .to_owned(),
        )
        .await?;
        // Idempotent sends: one row per (sender, client_msg_id).
        m.create_index(
            Index::create()
                .name("uq_messages_sender_client_msg")
                .table(Messages::Table)
                .col(Messages::SenderId)
                .col(Messages::ClientMsgId)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Reactions::Table)
                .if_not_exists()
                .col(ColumnDef::new(Reactions::MessageId).uuid().not_null())
                .col(ColumnDef::new(Reactions::UserId).uuid().not_null())
                .col(ColumnDef::new(Reactions::Emoji).string_len(32).not_null())
                .col(ts(Reactions::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(Reactions::MessageId)
                        .col(Reactions::Emoji)
                        .col(Reactions::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Reactions::Table, Reactions::MessageId)
                        .to(Messages::Table, Messages::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Reports::Table)
                .if_not_exists()
                .col(ColumnDef::new(Reports::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(Reports::MessageId).uuid().not_null())
                .col(ColumnDef::new(Reports::ReporterId).uuid().not_null())
                .col(ColumnDef::new(Reports::Reason).string_len(500).not_null())
                .col(ts(Reports::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Reports::Table, Reports::MessageId)
                        .to(Messages::Table, Messages::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Reports::Table.into_iden(),
            Reactions::Table.into_iden(),
            Messages::Table.into_iden(),
            ThreadMembers::Table.into_iden(),
            Threads::Table.into_iden(),
            AuthTokens::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
