//! The batch store function (m0003) plans with index scans wherever one can answer, whatever
//! its caller's session asks for.
//!
//! Why: PL/pgSQL keeps a function's plans (and the foreign-key checks its inserts fire keep
//! theirs) for the life of the connection. Planned while `threads` and `thread_members` were
//! small — a new deployment, a bench database, any table autovacuum analyzed early — they read
//! those tables with sequential scans, and every send rewrites a `threads` row (not in place:
//! its `last_activity_at` is indexed), so the table fills with dead row versions that each of
//! those scans reads, more with every send, until the next `ANALYZE` replans. Measured with
//! pgbench on the function alone (46 sends per call, synchronous_commit off, one client, a
//! database analyzed while small): 6 ms per call in the first 5 s, 20 ms by the 30th s;
//! with this setting 1.7 ms per call throughout. Every access the function makes is a probe by
//! key from a batch of at most a few hundred sends, so an index scan is the right plan at every
//! table size. The store's connections carry the same setting (`confab_persistence::Store`);
//! this one keeps the function right on a connection that does not (a pooler that drops
//! session settings, an operator's psql).

use crate::on_postgres;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const SIGNATURE: &str = "confab_store_batch(uuid[], uuid[], uuid[], text[], text[], timestamptz)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            m,
            &format!("ALTER FUNCTION {SIGNATURE} SET enable_seqscan = off"),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            m,
            &format!("ALTER FUNCTION {SIGNATURE} RESET enable_seqscan"),
        )
        .await
    }
}
