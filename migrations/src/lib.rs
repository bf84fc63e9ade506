//! Confab's schema, as sea-orm-migration steps that run on Postgres and on embedded SQLite alike.
//! A migration, once released, is never edited: add a new one.

pub use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_feature_indexes;
mod m0003_store_batch_function;
mod m0004_one_index_for_seq_and_unread;
mod m0005_store_batch_index_plans;
mod m0006_message_thread_cascade_trigger;
mod m0007_store_batch_lock_by_join;
mod m0008_thread_bump_in_place;
mod m0009_store_batch_generic_plan;
mod m0010_store_batch_nested_loops;
mod m0011_change_counter;

/// Run `sql` (one or more statements) when the database is Postgres; nothing on SQLite. For
/// steps that only concern Postgres's own machinery (functions, triggers, planner settings).
pub(crate) async fn on_postgres(m: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
    if m.get_database_backend() == DbBackend::Postgres {
        m.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}

/// All migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_feature_indexes::Migration),
            Box::new(m0003_store_batch_function::Migration),
            Box::new(m0004_one_index_for_seq_and_unread::Migration),
            Box::new(m0005_store_batch_index_plans::Migration),
            Box::new(m0006_message_thread_cascade_trigger::Migration),
            Box::new(m0007_store_batch_lock_by_join::Migration),
            Box::new(m0008_thread_bump_in_place::Migration),
            Box::new(m0009_store_batch_generic_plan::Migration),
            Box::new(m0010_store_batch_nested_loops::Migration),
            Box::new(m0011_change_counter::Migration),
        ]
    }
}
