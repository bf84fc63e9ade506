//! `confab-migrate`: applies (`up`), lists (`status`) or reverts migrations against
//! `DATABASE_URL` (or `CONFAB__DATABASE__URL`). Run as a Kubernetes Job before a rollout.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    if std::env::var("DATABASE_URL").is_err() {
        if let Ok(url) = std::env::var("CONFAB__DATABASE__URL") {
            std::env::set_var("DATABASE_URL", url);
        }
    }
    cli::run_cli(confab_migrations::Migrator).await;
}
