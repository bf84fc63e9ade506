//! Presence: who is online, across nodes. One trait with a Redis and an in-process
//! implementation. (See `docs/presence.md` for the design and its bounds.)

mod memory;

pub use self::memory::MemoryPresence;

use confab_protocol::{SessionId, UserId};

/// Presence store failures.
#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

/// Tracks sessions per user across nodes.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A session of `user` opened on this node.
    async fn session_opened(&self, user: UserId, session: SessionId) -> Result<(), PresenceError>;
    /// A session of `user` on this node closed.
    async fn session_closed(&self, user: UserId, session: SessionId) -> Result<(), PresenceError>;
}
