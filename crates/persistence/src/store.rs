//! The database handle: connecting (Postgres or SQLite), migrating, and readiness.

use crate::Result;
use confab_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    SqlxPostgresConnector, Statement,
};
use std::time::Duration;

/// A pooled Postgres connection idle for longer than this is pinged before it is handed out
/// (it may have been cut meanwhile: a server restart, a proxy's idle timeout). One busier than
/// that is not: sqlx already checks every connection when it goes back to the pool, so a ping
/// before each query would only add a round trip to every query (measured: it was a third of
/// the database round trips of a WebSocket connect).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(2);

/// Run on every new Postgres connection: plan with index scans wherever one can answer.
///
/// Why: every query Confab makes is a probe by key or a page in index order, and the tables
/// every send updates (`threads`, `thread_members`) are small, so the planner picks a
/// sequential scan for them — and Postgres keeps that plan (a prepared statement's generic plan,
/// a PL/pgSQL plan, a foreign-key check's plan) for the life of the connection. A thread's row
/// is rewritten with every send (before migration m0008 its `last_activity_at` was indexed, so
/// the update could not be HOT), so the table fills with dead row versions faster than
/// autovacuum clears them, and each cached sequential scan reads all of them, until the next
/// `ANALYZE` replans. Measured with
/// pgbench, one client, synchronous_commit off, on a database analyzed while small: the
/// lone-send statement 0.26 ms per send on average over 30 s (0.24 at first, 0.29 by the end)
/// against 0.18 ms flat with this setting; the batch store function (46 sends per call, see
/// migration m0005, which sets the same on the function) 6 → 20 ms per call against 1.7 ms
/// flat. A query no index can answer still gets its sequential scan: the setting only prices it
/// out where an index path exists.
const CONNECTION_SETUP: &str = "SET enable_seqscan = off";

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
        let db = match backend {
            Backend::Postgres => connect_postgres(opts).await?,
            Backend::Sqlite => {
                let mut co = ConnectOptions::new(opts.url.clone());
                co.max_connections(1)
                    .min_connections(1)
                    .connect_timeout(opts.acquire_timeout)
                    .acquire_timeout(opts.acquire_timeout)
                    .sqlx_logging(false);
                let db = Database::connect(co).await?;
                for pragma in [
                    "PRAGMA journal_mode=WAL",
                    "PRAGMA synchronous=FULL",
                    "PRAGMA foreign_keys=ON",
                    "PRAGMA busy_timeout=5000",
                ] {
                    db.execute(Statement::from_string(DbBackend::Sqlite, pragma))
                        .await?;
                }
                db
            }
        };
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

/// The Postgres pool, built with sqlx directly (sea-orm's options cannot express the ping policy
/// of [`PING_IF_IDLE_FOR`]).
async fn connect_postgres(opts: &StoreOptions) -> Result<DatabaseConnection> {
    let conn_err = |e: sqlx::Error| DbErr::Conn(RuntimeErr::SqlxError(e));
    let mut pg: PgConnectOptions = opts.url.parse().map_err(conn_err)?;
    pg = pg.disable_statement_logging();
    let env_choice = std::env::var_os("PGSSLMODE").is_some();
    if loopback_without_tls_choice(&opts.url, pg.get_host(), env_choice) {
        // libpq's default (`prefer`) negotiates TLS whenever the server offers it, also over
        // loopback, where it protects nothing and costs CPU on both ends of every query
        // (measured: ~15% more WebSocket connects/s on one node without it). An explicit
        // `sslmode` in the URL or in PGSSLMODE is always obeyed.
        pg = pg.ssl_mode(PgSslMode::Disable);
    }
    let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections.max(1))
        .min_connections(1)
        .acquire_timeout(opts.acquire_timeout)
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, CONNECTION_SETUP).await?;
                Ok(())
            })
        })
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    // An error closes this connection; the pool then hands out another.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(pg)
        .await
        .map_err(conn_err)?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

/// Whether `host` is this machine and nobody chose an `sslmode` (in the URL or PGSSLMODE).
fn loopback_without_tls_choice(url: &str, host: &str, env_choice: bool) -> bool {
    let chosen = url.contains("sslmode=") || url.contains("ssl-mode=") || env_choice;
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback && !chosen
}

#[cfg(test)]
mod tests {
    fn plain(url: &str, host: &str) -> bool {
        super::loopback_without_tls_choice(url, host, false)
    }

    #[test]
    fn tls_is_skipped_only_on_loopback_without_an_explicit_sslmode() {
        assert!(plain("postgres://u@127.0.0.1:5432/db", "127.0.0.1"));
        assert!(plain("postgres://u@localhost/db", "localhost"));
        assert!(plain("postgres://u@[::1]:5432/db", "[::1]"));
        assert!(plain("postgres://u@127.0.0.2/db", "127.0.0.2"));
        assert!(plain(
            "postgres:///db?host=/run/postgresql",
            "/run/postgresql"
        ));
        assert!(!plain("postgres://u@db.internal:5432/db", "db.internal"));
        assert!(!plain("postgres://u@10.0.0.7/db", "10.0.0.7"));
        assert!(!plain(
            "postgres://u@127.0.0.1/db?sslmode=require",
            "127.0.0.1"
        ));
        assert!(!plain(
            "postgres://u@127.0.0.1/db?ssl-mode=prefer",
            "127.0.0.1"
        ));
        assert!(!super::loopback_without_tls_choice(
            "postgres://u@127.0.0.1/db",
            "127.0.0.1",
            true
        ));
    }
}
