//! On Postgres, no index covers `threads.last_activity_at`, so the update every stored batch
//! makes to each of its threads (`last_seq`, `last_activity_at`) is a HOT update: the new row
//! version goes on the same page and no index gets a new entry.
//!
//! Why: with `last_activity_at` indexed (m0001's `idx_threads_public`, m0002's
//! `idx_threads_activity`), every bump wrote a new entry into all four of the table's indexes,
//! and the dead versions piled up in those indexes faster than autovacuum cleared them, so every
//! later probe of a thread by id stepped over more of them. Measured with `confab-bench fanout`
//! (1,000 clients in rooms of 2, 40,000 msgs/s offered, both nodes one worker, 2 A/B rounds):
//! 21,763 and 21,099 acked msgs/s with the indexes, 25,428 and 26,579 without.
//!
//! What the indexes served, and what it costs now:
//! - A user's thread list (newest activity first, keyset paged) starts from the user's
//!   memberships (`idx_thread_members_user`) and sorts them: a page costs in proportion to how
//!   many threads the user is in, not to the page size.
//! - The public room list reads the public rooms through a partial index on `id` (which no
//!   send changes) and sorts them: a page costs in proportion to the number of public rooms.
//!
//! Sends are the hot path (every message, from every member); a list page is read when a client
//! opens its thread or room list. `fillfactor = 70` leaves room on each page for the next
//! version of its rows, so the bumps stay HOT (pages written before this migration get that
//! room as they are rewritten). SQLite keeps its indexes: it has no HOT updates to win.

use crate::on_postgres;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
DROP INDEX IF EXISTS idx_threads_activity;
DROP INDEX IF EXISTS idx_threads_public;
CREATE INDEX IF NOT EXISTS idx_threads_public_rooms ON threads (id) WHERE public;
ALTER TABLE threads SET (fillfactor = 70);
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS idx_threads_public_rooms;
CREATE INDEX IF NOT EXISTS idx_threads_public ON threads (public, last_activity_at);
CREATE INDEX IF NOT EXISTS idx_threads_activity ON threads (last_activity_at, id);
ALTER TABLE threads RESET (fillfactor);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(m, UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(m, DOWN).await
    }
}
