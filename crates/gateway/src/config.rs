//! Typed settings, layered: `config/default.toml` → optional `config/{CONFAB_ENV}.toml` →
//! environment (`CONFAB__SECTION__KEY`). Settings are passed down, never global, because a test
//! runs several nodes in one process.

use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every setting of a node. See `config/default.toml` for defaults and explanations.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listening socket and HTTP workers.
    pub server: ServerSettings,
    /// This node's identity.
    pub node: NodeSettings,
    /// Postgres (cluster) or embedded SQLite (single node).
    pub database: DatabaseSettings,
    /// Redis (cluster) or in-process fan-out (single node).
    pub redis: RedisSettings,
    /// Deployment shape, checked against the chosen backends.
    pub cluster: ClusterSettings,
    /// Tokens and password hashing.
    pub auth: AuthSettings,
    /// WebSocket session behaviour.
    pub session: SessionSettings,
    /// Rate and size limits.
    pub limits: LimitSettings,
    /// Delivery repair.
    pub delivery: DeliverySettings,
    /// Presence.
    pub presence: PresenceSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Logging.
    pub log: LogSettings,
}

/// Where to listen.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Bind address.
    pub host: String,
    /// Bind port (0 picks a free one; tests use that).
    pub port: u16,
    /// actix worker threads; 0 = one per core.
    pub workers: usize,
    /// Serve on the node's own thread (the binary's runtime), with no worker threads: every
    /// hop between sessions, the broker, the database writers and Redis stays on one thread.
    /// `workers` is then ignored; run one node process per core. `auto` chooses it when one
    /// worker thread would serve (see [`SingleThread::Auto`]).
    pub single_thread: SingleThread,
    /// Listen backlog (pending connections).
    pub backlog: u32,
    /// Maximum concurrent connections per worker.
    pub max_connections_per_worker: usize,
    /// Web origins whose pages may call the API and open WebSockets from a browser: `*` (any),
    /// or a comma-separated list of `scheme://host[:port]`; empty = none (see `cors.rs`).
    pub cors_allowed_origins: String,
}

/// `server.single_thread`: `true`, `false` or `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BoolOrText")]
pub enum SingleThread {
    /// On the node's own thread when one worker thread would serve — `workers = 1`, or 0 and
    /// this process has one CPU to run on (its available parallelism, which counts the CPU
    /// affinity mask and a cgroup CPU quota such as a Kubernetes CPU limit of 1) — and the node
    /// runs in the confab binary's runtime; otherwise on worker threads.
    Auto,
    /// Always on the node's own thread (start-up fails outside the confab binary's runtime).
    On,
    /// Always on actix worker threads.
    Off,
}

/// What `single_thread` may be written as: a boolean, or its text (an environment variable).
#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrText {
    Bool(bool),
    Text(String),
}

impl TryFrom<BoolOrText> for SingleThread {
    type Error = String;

    fn try_from(v: BoolOrText) -> Result<Self, Self::Error> {
        match v {
            BoolOrText::Bool(true) => Ok(Self::On),
            BoolOrText::Bool(false) => Ok(Self::Off),
            BoolOrText::Text(t) => match t.to_ascii_lowercase().as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::On),
                "false" => Ok(Self::Off),
                other => Err(format!(
                    "single_thread must be true, false or \"auto\", not {other:?}"
                )),
            },
        }
    }
}

/// Node identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Stable name of this node (the pod name in Kubernetes); empty = random at start.
    pub id: String,
}

/// Database connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…`; empty = embedded SQLite under `data_dir`. A secret: set it from the
    /// environment (`CONFAB__DATABASE__URL`).
    pub url: SecretString,
    /// Folder of the embedded SQLite file when `url` is empty.
    pub data_dir: PathBuf,
    /// Pool size.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before failing as `unavailable`.
    pub acquire_timeout_ms: u64,
    /// Apply migrations at start-up (off when a Kubernetes Job runs them).
    pub migrate_on_start: bool,
    /// Writer tasks that group-commit sends (Postgres); each holds one connection while it
    /// commits a batch.
    pub send_writers: usize,
    /// Most sends stored by one group commit.
    pub send_batch_max: usize,
    /// Sends waiting for a writer before senders wait for room (backpressure).
    pub send_queue: usize,
    /// Under moderate load (previous batch of 2-15 sends), how long (µs) a writer gathers more
    /// sends before storing fewer than 16 (0: never); see `SendBatcher::start`.
    pub send_linger_us: u64,
}

/// Redis connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…`; empty = in-process broker and directory (single node only). A secret.
    pub url: SecretString,
    /// Prefix of every key and channel (tests use one per test).
    pub key_prefix: String,
    /// Command pool size (publishes, membership, presence).
    pub pool_size: usize,
    /// Reconnect backoff floor.
    pub reconnect_min_ms: u64,
    /// Reconnect backoff ceiling.
    pub reconnect_max_ms: u64,
    /// Interval of the pub/sub liveness probe.
    pub probe_interval_ms: u64,
    /// A probe not seen back within this is a stalled subscription: reconnect.
    pub probe_timeout_ms: u64,
    /// About how many control announcements (joins, leaves, logouts, presence events) the
    /// control log keeps for nodes that were reconnecting when they were published; also the
    /// most a node holds while it cannot reach Redis.
    pub control_log_max: usize,
    /// How long an announcement that must be confirmed (joins, leaves, logouts) waits for
    /// Redis's answer before it counts as failed.
    pub command_timeout_ms: u64,
}

/// Deployment shape.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// How many gateway replicas the operator runs. More than one requires Redis and Postgres.
    pub replicas: u32,
}

/// Authentication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Token lifetime.
    pub token_ttl_secs: u64,
    /// argon2 memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// argon2 iterations.
    pub argon2_iterations: u32,
}

/// WebSocket sessions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// Outbound frames queued per session before it counts as a slow consumer (closed 4000).
    pub outbound_queue: usize,
    /// Sends of one session waiting for their commit at once; beyond it the session stops
    /// reading frames until one is answered.
    pub max_inflight_sends: usize,
    /// Server ping interval.
    pub heartbeat_interval_ms: u64,
    /// A client silent for this long is closed (4001).
    pub heartbeat_timeout_ms: u64,
    /// Most messages replayed per thread on `resume` before answering `truncated`.
    pub max_resume_replay: u64,
    /// Messages fetched per query while replaying or filling a gap.
    pub replay_batch: u64,
    /// Flush window: a queued delivery waits this long so that what queues meanwhile leaves in
    /// the same socket write (0: no wait).
    pub write_delay_ms: u64,
}

/// Limits (every one a setting).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest text frame answered normally; larger ones get `too_large` and the session lives.
    pub max_frame_bytes: usize,
    /// Frames above this are a protocol violation: the socket is closed with 1009.
    pub hard_max_frame_bytes: usize,
    /// Largest JSON body of an HTTP request; larger ones get 413 `too_large`.
    pub max_http_body_bytes: usize,
    /// Longest message body, in characters.
    pub max_body_chars: usize,
    /// Longest `client_msg_id` and `req`.
    pub max_id_chars: usize,
    /// Sustained frames per second per connection.
    pub frames_per_sec: f64,
    /// Burst of frames per connection.
    pub frames_burst: f64,
    /// Sustained sends per second per user on this node (all their sessions).
    pub user_sends_per_sec: f64,
    /// Burst of sends per user on this node.
    pub user_sends_burst: f64,
    /// Consecutive rate-limited frames after which the connection is closed (4002).
    pub rate_limit_strikes: u32,
    /// Most members of a group thread.
    pub max_members: usize,
    /// Most threads resumed in one frame.
    pub max_resume_threads: usize,
    /// Minimum interval between relayed typing events per user and thread.
    pub typing_interval_ms: u64,
    /// How long a typing indicator lasts without a refresh.
    pub typing_ttl_ms: u64,
    /// New WebSocket sessions admitted per second per node (token bucket; 503 beyond).
    pub connects_per_sec: f64,
    /// Burst of new sessions per node.
    pub connects_burst: f64,
    /// Most sessions one user may hold open on one node at once (0: no limit); more upgrades
    /// get 429.
    pub max_sessions_per_user: usize,
    /// Cap of the "all unread" first page when opening a thread.
    pub max_unread_page: u64,
    /// Messages on the first page when opening a thread with few unread (seed 002: 20).
    pub first_page_messages: u64,
    /// Messages on an older page (`before_seq` given, no `limit`; seed 002: 10).
    pub older_page_messages: u64,
    /// Default page size of the thread and room lists.
    pub list_page_default: u64,
    /// Largest page of the thread and room lists, and of history with an explicit `limit`.
    pub list_page_max: u64,
    /// Longest reaction emoji in bytes (at most 32, the column width).
    pub max_emoji_bytes: usize,
    /// Longest report reason in characters (at most 500, the column width).
    pub max_report_chars: usize,
}

/// Delivery repair.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Every this often, a node compares its subscribed threads' heads with the database and
    /// repairs any gap (the safety net behind live gap detection).
    pub sweep_interval_ms: u64,
    /// Messages held while a gap is repaired before the node gives up holding and relies on the
    /// sweep and the sessions' own gap fill.
    pub max_pending_per_thread: usize,
    /// How long a node waits for out-of-order publishes to fill a gap before reading it from
    /// the database.
    pub gap_grace_ms: u64,
    /// Deliveries waiting for one worker thread before the sessions that would add more are
    /// closed as slow consumers (the worker is not keeping up; they resume).
    pub worker_mailbox_max: usize,
    /// Most messages one gap repair reads from the database at once; a longer gap is read in
    /// pages of this size, one after the other.
    pub repair_page_max: u64,
    /// Gap repairs reading the database at once on a node; the others wait their turn.
    pub repair_concurrency: usize,
    /// Longest a gap's next page waits for room in the queues of the thread's local sessions.
    pub repair_page_wait_ms: u64,
}

/// Presence.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    /// How often a node refreshes its heartbeat key.
    pub heartbeat_interval_ms: u64,
    /// Heartbeat key TTL: a node silent this long is dead and its sessions stop counting.
    pub node_ttl_ms: u64,
    /// An offline event waits this long for a reconnect before it is sent.
    pub offline_grace_ms: u64,
    /// Most users one `GET /api/v1/presence` may ask about.
    pub max_query_users: usize,
}

/// Graceful shutdown.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Upper bound on the drain; keep below the pod's termination grace period.
    pub drain_timeout_secs: u64,
}

/// Logging.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`info`, `confab_gateway=debug,info`, …).
    pub level: String,
    /// `plain` or `json`.
    pub format: String,
}

/// The default settings file, compiled in so the binary runs from any directory.
const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

impl Settings {
    /// Load: compiled-in defaults, then `{dir}/default.toml` and `{dir}/{CONFAB_ENV}.toml` if
    /// present (dir = `CONFAB_CONFIG_DIR` or `./config`), then `CONFAB__…` environment variables.
    pub fn load() -> Result<Self, config::ConfigError> {
        let dir = std::env::var("CONFAB_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        Self::load_from(Path::new(&dir), true)
    }

    /// Load with an explicit config folder; `env` enables environment overrides.
    pub fn load_from(dir: &Path, env: bool) -> Result<Self, config::ConfigError> {
        Self::load_layers(dir, env, None)
    }

    /// Like [`Settings::load_from`] with environment overrides, but read from `vars` (named as
    /// in the environment, `CONFAB__SECTION__KEY`) instead of the process environment, which
    /// tests running in parallel share.
    pub fn load_from_vars(
        dir: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, config::ConfigError> {
        Self::load_layers(dir, true, Some(vars.into_iter().collect()))
    }

    fn load_layers(
        dir: &Path,
        env: bool,
        vars: Option<config::Map<String, String>>,
    ) -> Result<Self, config::ConfigError> {
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(dir.join("default.toml")).required(false));
        if let Ok(profile) = std::env::var("CONFAB_ENV") {
            b = b.add_source(
                config::File::from(dir.join(format!("{profile}.toml"))).required(false),
            );
        }
        if env {
            b = b.add_source(
                config::Environment::with_prefix("CONFAB")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(vars),
            );
        }
        b.build()?.try_deserialize()
    }

    /// The compiled-in defaults only (tests start from these).
    pub fn defaults() -> Result<Self, config::ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .build()?
            .try_deserialize()
    }
}

/// Milliseconds to a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_thread(value: &str) -> Result<SingleThread, config::ConfigError> {
        let none = std::env::temp_dir().join("confab-no-config-single-thread");
        Settings::load_from_vars(
            &none,
            [("CONFAB__SERVER__SINGLE_THREAD".to_owned(), value.to_owned())],
        )
        .map(|s| s.server.single_thread)
    }

    #[test]
    fn single_thread_is_auto_by_default_and_takes_booleans_or_auto() {
        let defaults = Settings::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
        assert_eq!(defaults.server.single_thread, SingleThread::Auto);
        assert_eq!(single_thread("true").ok(), Some(SingleThread::On));
        assert_eq!(single_thread("false").ok(), Some(SingleThread::Off));
        assert_eq!(single_thread("AUTO").ok(), Some(SingleThread::Auto));
        let e = single_thread("sometimes").err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("true, false or")),
            "{e:?}"
        );
    }
}
