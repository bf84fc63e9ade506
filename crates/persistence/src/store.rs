//! The database handle: connecting (Postgres or SQLite), migrating, and readiness.

use crate::Result;
use confab_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use std::time::Duration;

/// Which database the store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A Postgres server (cluster mode).
    Postgres,
    /// An embedded SQLite file (single node).
    Sqlite,
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `postgres://…` or `sqlite://path?mode=rwc`.
    pub url: String,
    /// Pool size (SQLite always uses one connection: it has one writer anyway, and a single
    /// connection avoids SQLITE_BUSY on lock upgrades inside transactions).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before reporting `Unavailable`.
    pub acquire_timeout: Duration,
    /// Apply pending migrations on connect.
    pub migrate: bool,
}

/// A cloneable handle to the database; all queries hang off it.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
    backend: Backend,
}

impl Store {
    /// Connect (eagerly: an unreachable database is an error here, not at the first query) and
    /// optionally migrate.
    pub async fn connect(opts: &StoreOptions) -> Result<Self> {
        let backend = if opts.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut co = ConnectOptions::new(opts.url.clone());
        let max = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => opts.max_connections.max(1),
        };
        co.max_connections(max)
            .min_connections(1)
            .connect_timeout(opts.acquire_timeout)
            .acquire_timeout(opts.acquire_timeout)
            .sqlx_logging(false);
        let db = Database::connect(co).await?;
        if backend == Backend::Sqlite {
            for pragma in [
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA busy_timeout=5000",
            ] {
                db.execute(Statement::from_string(DbBackend::Sqlite, pragma))
                    .await?;
            }
        }
        let store = Self { db, backend };
        if opts.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Whether every migration this build knows has been applied.
    pub async fn migrations_applied(&self) -> Result<bool> {
        Ok(Migrator::get_pending_migrations(&self.db).await?.is_empty())
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await?;
        Ok(())
    }

    /// Postgres or SQLite.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The raw connection, for tests and tools.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Close the pool.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}
