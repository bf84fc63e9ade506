//! The batch store function (m0003, m0007) joins its batch to the tables by nested loops only:
//! `enable_mergejoin = off` and `enable_hashjoin = off` on the function itself.
//!
//! Why: every join in the function pairs the batch (at most `send_batch_max` sends) with rows
//! found by key, and m0005 already keeps sequential scans out. But the retry check (`NOT
//! EXISTS` on `messages (sender_id, client_msg_id)`), planned when the statistics call
//! `messages` empty and its first page holds a few rows — a new deployment's first batches,
//! the planner then expects a few dozen rows — became a merge anti-join over the *whole* unique
//! index in key order (an index scan, so m0005 allowed it), and the generic plan (m0009) keeps
//! it for the connection until the next `ANALYZE` of `messages` replans: every batch read
//! every message's index entry, more with every send (the suite test
//! `the_batch_store_function_probes_for_retries_after_messages_grow`: 5,030 entries read by one
//! batch of 10 after 5,000 messages; with this migration none). Measured with
//! `scripts/pgbench-store-batch.sh -n 13 -c 2 -T 8 -r 1` (13 sends per call, two clients, a
//! fresh database analyzed before any message): without it 5 of 8 databases ran their first
//! 8 s at 355-465 calls/s with 2.3-2.9 ms of Postgres CPU per call, the other 3 at 1,387-1,490
//! calls/s and 0.73-0.78 ms; with it all 6 at 1,338-1,489 calls/s and 0.74-0.79 ms. With nested
//! loops the check probes the index once per send at every table size.
//!
//! Like m0009 this adds to the function's settings; a later `CREATE OR REPLACE` must repeat
//! all four (a suite test checks that the function carries them).

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
            &format!(
                "ALTER FUNCTION {SIGNATURE} SET enable_mergejoin = off; \
                 ALTER FUNCTION {SIGNATURE} SET enable_hashjoin = off"
            ),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            m,
            &format!(
                "ALTER FUNCTION {SIGNATURE} RESET enable_mergejoin; \
                 ALTER FUNCTION {SIGNATURE} RESET enable_hashjoin"
            ),
        )
        .await
    }
}
