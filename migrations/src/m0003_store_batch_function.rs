//! Group commit in one round trip: the batch statement of the send path as a Postgres function.
//!
//! Why a function: a batch must lock its threads in id order (two batches touching the same
//! threads then queue instead of deadlocking) before numbering messages. Done from the client,
//! that is BEGIN, the lock, the statement and COMMIT — three round trips made *while holding the
//! locks*, during which every other batch touching those threads waits. Inside one function
//! called in autocommit mode, the locks are held only for the work itself and the commit.
//! SQLite stores sends one by one and needs nothing here.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Returns `(stored_id, stored_seq)` for every message it stored. Messages it did not store (a
/// sender who is not a member, a `(sender, client_msg_id)` already stored) are simply absent:
/// the caller settles those one by one, which classifies them exactly.
pub(crate) const CREATE: &str = r#"
CREATE OR REPLACE FUNCTION confab_store_batch(
    p_ids uuid[], p_threads uuid[], p_senders uuid[], p_client_msg_ids text[], p_bodies text[],
    p_at timestamptz)
RETURNS TABLE (stored_id uuid, stored_seq bigint)
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM 1 FROM threads t WHERE t.id = ANY(p_threads) ORDER BY t.id FOR UPDATE;
    -- This statement's snapshot is taken after the locks: `numbered` reads each thread's
    -- last_seq before `bump` raises it (every sub-statement sees the same snapshot).
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_threads, p_senders, p_client_msg_ids, p_bodies)
            WITH ORDINALITY AS i(id, thread_id, sender_id, client_msg_id, body, ord)
    ), ok AS (
        SELECT i.* FROM input i
        WHERE EXISTS (SELECT 1 FROM thread_members m
                      WHERE m.thread_id = i.thread_id AND m.user_id = i.sender_id)
          AND NOT EXISTS (SELECT 1 FROM messages x
                          WHERE x.sender_id = i.sender_id AND x.client_msg_id = i.client_msg_id)
    ), counts AS (
        SELECT thread_id, count(*) AS n FROM ok GROUP BY thread_id
    ), bump AS (
        UPDATE threads t SET last_seq = t.last_seq + c.n, last_activity_at = p_at
        FROM counts c WHERE t.id = c.thread_id
    ), numbered AS (
        SELECT ok.*, t.last_seq + row_number() OVER (PARTITION BY ok.thread_id ORDER BY ok.ord) AS seq
        FROM ok JOIN threads t ON t.id = ok.thread_id
    ), ins AS (
        INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at)
        SELECT id, thread_id, seq, sender_id, client_msg_id, body, p_at FROM numbered
        RETURNING id, seq, thread_id, sender_id
    ), mark AS (
        UPDATE thread_members m SET last_read_seq = s.max_seq
        FROM (SELECT thread_id, sender_id, max(seq) AS max_seq FROM ins GROUP BY thread_id, sender_id) s
        WHERE m.thread_id = s.thread_id AND m.user_id = s.sender_id AND m.last_read_seq < s.max_seq
    )
    SELECT ins.id, ins.seq FROM ins;
END
$fn$
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        m.get_connection().execute_unprepared(CREATE).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        m.get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS confab_store_batch(uuid[], uuid[], uuid[], text[], text[], timestamptz)",
            )
            .await?;
        Ok(())
    }
}
