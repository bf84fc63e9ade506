//! The batch store function (m0003) locks its threads through a join on the batch's distinct
//! thread ids instead of `id = ANY(p_threads)`.
//!
//! Why: two nodes' writers lock the same threads, so a batch often waits for a thread row that
//! the other node's batch then updates and commits. Postgres rechecks each such row
//! (`EvalPlanQual`), and the recheck rescans the index scan it came from; for a scan keyed by
//! `= ANY(array)` every rescan sorts the whole array again (`_bt_preprocess_array_keys`: the
//! batch's thread ids, one per send, duplicates included). At saturation, with batches of 256
//! sends, that was 16 % of Postgres's CPU in `confab-bench fanout` (1,000 clients in rooms of
//! 2, 40,000 msgs/s offered; perf over both nodes' runs). Joined on the distinct ids, the
//! recheck probes one key. Measured with pgbench on the function alone (2 clients on the same
//! 500 threads, synchronous_commit off, 2 rounds): batches of 256 went from 61 and 62 to 71 and
//! 76 calls/s; batches of 16 stayed at ~1,100 calls/s.
//!
//! Everything else is m0003's function as it was, with m0005's `enable_seqscan = off` (a
//! `CREATE OR REPLACE` drops settings it does not repeat). The locks are still taken in id
//! order: `ORDER BY` sorts the rows before `FOR UPDATE` locks them, so two batches touching
//! the same threads queue instead of deadlocking.

use crate::m0003_store_batch_function::CREATE;
use crate::on_postgres;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// m0003's lock statement.
const LOCK_BY_ARRAY: &str =
    "PERFORM 1 FROM threads t WHERE t.id = ANY(p_threads) ORDER BY t.id FOR UPDATE;";

/// The same locks, probed one distinct id at a time.
const LOCK_BY_JOIN: &str = "PERFORM 1 FROM threads t \
     JOIN (SELECT DISTINCT u.id FROM unnest(p_threads) AS u(id)) l ON l.id = t.id \
     ORDER BY t.id FOR UPDATE OF t;";

/// m0003's `LANGUAGE` clause, and the same with m0005's planner setting.
const PLAIN: &str = "LANGUAGE plpgsql AS $fn$";
const INDEX_PLANS: &str = "LANGUAGE plpgsql SET enable_seqscan = off AS $fn$";

/// The function this migration installs.
fn up_sql() -> String {
    CREATE
        .replace(LOCK_BY_ARRAY, LOCK_BY_JOIN)
        .replace(PLAIN, INDEX_PLANS)
}

/// m0003's function with m0005's setting, as before this migration.
fn down_sql() -> String {
    CREATE.replace(PLAIN, INDEX_PLANS)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(m, &up_sql()).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(m, &down_sql()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replacements must find their text in m0003's function: a silent miss would install
    /// the old lock, or drop the planner setting.
    #[test]
    fn both_replacements_apply() {
        assert_eq!(CREATE.matches(LOCK_BY_ARRAY).count(), 1);
        assert_eq!(CREATE.matches(PLAIN).count(), 1);
        let up = up_sql();
        assert!(up.contains(LOCK_BY_JOIN) && !up.contains(LOCK_BY_ARRAY));
        assert!(up.contains(INDEX_PLANS) && down_sql().contains(INDEX_PLANS));
    }
}
