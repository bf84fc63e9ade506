#![allow(clippy::result_large_err)]
//! Test helpers: real Postgres, real Redis, real gateway nodes over real WebSockets.
//!
//! Every test gets its own database (`CREATE DATABASE confab_t_<uuid>`) and its own Redis key
//! and channel prefix, so tests run in parallel and again and again. Every wait has a timeout.
//!
//! The same tests run against both backends: [`Backend::Cluster`] (Postgres + Redis, as many
//! real nodes as asked) and [`Backend::Embedded`] (SQLite + in-process broker: one node, which
//! then stands in for every node index a test uses).

pub mod chaos;
pub mod client;
pub mod process;
pub mod proxy;

pub use client::{raw_upgrade, refused_upgrade, Http, Ws};

use confab_gateway::{Application, Settings, StopHandle};
use confab_protocol::UserRef;
use sea_orm::{ConnectionTrait, Database, Statement};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// Which backends a node runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Postgres + Redis: any number of nodes.
    Cluster,
    /// Embedded SQLite + in-process broker: a single node.
    Embedded,
}

/// Admin URL of the test Postgres server.
pub fn pg_admin_url() -> String {
    std::env::var("CONFAB_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the test Redis.
pub fn redis_url() -> String {
    std::env::var("CONFAB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection of the test's own to the Redis at `url`, to look at or change what the nodes
/// see behind their back.
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Replace the database name of a Postgres URL.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Create a fresh, empty database on the server at `admin_url`; returns its URL.
pub async fn create_database(admin_url: &str) -> String {
    let name = format!("confab_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach test Postgres at {admin_url}: {e}"));
    admin
        .execute(Statement::from_string(
            admin.get_database_backend(),
            format!("CREATE DATABASE \"{name}\""),
        ))
        .await
        .unwrap_or_else(|e| panic!("create database: {e}"));
    let _ = admin.close().await;
    with_db(admin_url, &name)
}

/// Settings for a test node: port 0, one worker, short timings, the given backends.
pub fn test_settings(
    db_url: Option<&str>,
    redis: Option<(&str, &str)>,
    data_dir: Option<&std::path::Path>,
) -> Settings {
    let mut s = Settings::defaults().unwrap_or_else(|e| panic!("default settings: {e}"));
    s.server.port = 0;
    s.server.workers = 1;
    s.database.url = SecretString::from(db_url.unwrap_or("").to_owned());
    if let Some(d) = data_dir {
        s.database.data_dir = d.to_path_buf();
    }
    s.database.max_connections = 5;
    if let Some((url, prefix)) = redis {
        s.redis.url = SecretString::from(url.to_owned());
        s.redis.key_prefix = prefix.to_owned();
        s.redis.pool_size = 4;
    }
    // Cheap hashing: tests create many users.
    s.auth.argon2_memory_kib = 256;
    s.auth.argon2_iterations = 1;
    s.delivery.sweep_interval_ms = 500;
    s.redis.probe_interval_ms = 500;
    s.redis.probe_timeout_ms = 2000;
    s.presence.heartbeat_interval_ms = 500;
    s.presence.node_ttl_ms = 2000;
    s.presence.offline_grace_ms = 300;
    s
}

/// Lift the per-connection and per-user rate limits (for tests that send in bulk).
pub fn raise_limits(s: &mut Settings) {
    s.limits.frames_per_sec = 100_000.0;
    s.limits.frames_burst = 100_000.0;
    s.limits.user_sends_per_sec = 100_000.0;
    s.limits.user_sends_burst = 100_000.0;
}

/// One running in-process node.
pub struct Node {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its node id.
    pub id: String,
    /// Its shared state (for white-box checks such as the subscription count).
    pub state: Arc<confab_gateway::state::AppState>,
    stop: StopHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// Build and start a node.
    pub async fn start(settings: Settings) -> Node {
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|e| panic!("node failed to start: {e}"));
        let port = app.port();
        let state = app.state();
        let id = state.node_id.clone();
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        Node {
            port,
            id,
            state,
            stop,
            task,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:port/ws`.
    pub fn ws_base(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Drain and stop (as on SIGTERM), waiting for it to finish.
    pub async fn stop(self) {
        self.stop.stop();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    /// Start the drain without waiting.
    pub fn begin_stop(&self) {
        self.stop.stop();
    }
}

/// A set of nodes sharing one database and one Redis prefix.
pub struct Cluster {
    /// The backend.
    pub backend: Backend,
    /// The nodes (one for the embedded backend).
    pub nodes: Vec<Node>,
    /// The database URL (cluster) — for starting more nodes.
    pub db_url: Option<String>,
    /// The Redis prefix (cluster).
    pub prefix: String,
    /// Keeps the embedded data folder alive.
    pub data_dir: Option<tempdir::Dir>,
}

/// Minimal temp-dir helper (no extra crate): removed on drop.
pub mod tempdir {
    /// A folder removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        /// A new empty folder under the system temp dir.
        pub fn new() -> Self {
            let p =
                std::env::temp_dir().join(format!("confab-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("temp dir: {e}"));
            Dir(p)
        }
    }
    impl Default for Dir {
        fn default() -> Self {
            Self::new()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Cluster {
    /// Start `n` nodes on `backend` (the embedded backend always starts one).
    pub async fn start(backend: Backend, n: usize) -> Cluster {
        Self::start_with(backend, n, |_| {}).await
    }

    /// Like [`Cluster::start`], adjusting each node's settings.
    pub async fn start_with(backend: Backend, n: usize, tweak: impl Fn(&mut Settings)) -> Cluster {
        Self::start_each(backend, n, |_, s| tweak(s)).await
    }

    /// Like [`Cluster::start_with`], with the node index (e.g. to point one node elsewhere).
    pub async fn start_each(
        backend: Backend,
        n: usize,
        tweak: impl Fn(usize, &mut Settings),
    ) -> Cluster {
        match backend {
            Backend::Cluster => {
                let db = create_database(&pg_admin_url()).await;
                let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
                let redis = redis_url();
                let mut nodes = Vec::new();
                for i in 0..n {
                    let mut s = test_settings(Some(&db), Some((&redis, &prefix)), None);
                    s.node.id = format!("{prefix}-n{i}");
                    s.cluster.replicas = n as u32;
                    tweak(i, &mut s);
                    nodes.push(Node::start(s).await);
                }
                Cluster {
                    backend,
                    nodes,
                    db_url: Some(db),
                    prefix,
                    data_dir: None,
                }
            }
            Backend::Embedded => {
                let dir = tempdir::Dir::new();
                let mut s = test_settings(None, None, Some(&dir.0));
                tweak(0, &mut s);
                let node = Node::start(s).await;
                Cluster {
                    backend,
                    nodes: vec![node],
                    db_url: None,
                    prefix: String::new(),
                    data_dir: Some(dir),
                }
            }
        }
    }

    /// Node `i` (wrapping: with one embedded node, every index is that node).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i % self.nodes.len()]
    }

    /// An HTTP client for node `i`.
    pub fn http(&self, i: usize) -> Http {
        Http::new(self.node(i).http_base())
    }

    /// Register a user (through node 0) and log in; returns the user and a token.
    pub async fn user(&self, name: &str) -> (UserRef, String) {
        let unique = format!(
            "{}_{}",
            name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.http(0)
            .register_and_login(&unique, "password123")
            .await
    }

    /// Open a WebSocket to node `i` and read its `hello`.
    pub async fn ws(&self, i: usize, token: &str) -> Ws {
        Ws::connect(&self.node(i).ws_base(), token).await
    }

    /// Stop every node.
    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// Run a test body against every backend: the parameterized suite.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                ($body)($crate::Backend::Cluster).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                ($body)($crate::Backend::Embedded).await
            }
        }
    };
}
