//! Everything a node's routes and sessions share, built once by `startup`.

use crate::broker::Broker;
use crate::chat::Chat;
use crate::config::Settings;
use crate::hub::Hub;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::ratelimit::TokenBucket;
use confab_persistence::Store;
use confab_protocol::UserId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

/// Shared node state.
pub struct AppState {
    /// All settings.
    pub settings: Arc<Settings>,
    /// This node's name.
    pub node_id: String,
    /// The database.
    pub store: Store,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// Connect-time reads, batched across concurrent connects.
    pub lookups: Arc<crate::lookups::Lookups>,
    /// Cross-node fan-out.
    pub broker: Arc<dyn Broker>,
    /// The chat service.
    pub chat: Chat,
    /// Presence.
    pub presence: Arc<dyn Presence>,
    /// Metrics.
    pub metrics: Metrics,
    /// Redis names.
    pub keys: Keys,
    /// Set at the start of a drain: readiness fails and upgrades are refused.
    pub draining: AtomicBool,
    /// Admission control on new sessions.
    pub admission: Mutex<TokenBucket>,
    /// Per-user send buckets shared by a user's sessions on this node.
    pub user_buckets: Mutex<HashMap<UserId, TokenBucket>>,
    /// In-flight work that a drain waits for (sends being stored).
    pub tracker: TaskTracker,
    /// Redis command pool, when clustered (for readiness).
    pub redis_pool: Option<deadpool_redis::Pool>,
    /// The node serves on its own thread (`server.single_thread`): sessions, the broker and the
    /// writers share it, so deliveries need no hand-off between threads.
    pub single_thread: bool,
    /// Web origins allowed to use the API from a browser (`server.cors_allowed_origins`).
    pub origins: crate::cors::AllowedOrigins,
}

impl AppState {
    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Take a send token for `user` from the node-wide per-user bucket.
    pub fn take_user_send(&self, user: UserId) -> bool {
        let limits = &self.settings.limits;
        let mut g = self.user_buckets.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() > 100_000 {
            // Bound the map: idle users' buckets are full anyway, so forgetting them is exact.
            g.clear();
        }
        g.entry(user)
            .or_insert_with(|| TokenBucket::new(limits.user_sends_per_sec, limits.user_sends_burst))
            .try_take()
    }
}
