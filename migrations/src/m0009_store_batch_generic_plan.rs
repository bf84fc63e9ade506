//! The batch store function (m0003, m0007) plans its statements once per connection and keeps
//! the plan: `plan_cache_mode = force_generic_plan` on the function itself.
//!
//! Why: PL/pgSQL caches each statement's plan, but Postgres's plan cache decides per call
//! whether to plan again for the call's actual arguments (a "custom" plan). It keeps doing so
//! while its estimate for a generic plan is above the average of the custom plans it has made —
//! which is the case when a connection's first batches were small, the usual start of a node —
//! and then *every* call plans the batch statement anew, a CTE over five tables: perf on the
//! backend showed 45 % of its CPU in the planner. Measured with pgbench on the function alone
//! (one client, synchronous_commit off, 2 rounds, this session's 2-core machine): a batch of 1
//! took 1.24 / 1.50 ms per call with the cache deciding and 0.52 / 0.53 ms with the generic
//! plan; batches of 14, 64 and 256 took the same either way (1.27-1.48, 3.96-4.39, 13.3-15.4
//! ms) — at those sizes the cache had already settled on the generic plan, which is therefore
//! the plan that stores every large batch already. Every access in the function is a probe by
//! key from a batch (m0005), so one plan suits every batch size.
//!
//! An `ALTER FUNCTION … SET` adds to the settings m0005 and m0007 gave the function; a later
//! `CREATE OR REPLACE` must repeat both (a suite test checks that the function carries them).

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
            &format!("ALTER FUNCTION {SIGNATURE} SET plan_cache_mode = force_generic_plan"),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            m,
            &format!("ALTER FUNCTION {SIGNATURE} RESET plan_cache_mode"),
        )
        .await
    }
}
