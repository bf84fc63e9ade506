//! The directory: the mirror of thread membership that every node reads (which threads a user
//! is in, who is in a thread). Postgres stays the source of truth; a cold or lost mirror (Redis
//! restarted: it keeps nothing on disk) is rebuilt from it on demand. One trait, a Redis and an
//! in-process implementation.

mod memory;
mod redis;

pub use self::memory::MemoryDirectory;
pub use self::redis::RedisDirectory;

use confab_protocol::{ThreadId, UserId};

/// The mirror could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("directory unavailable: {0}")]
pub struct DirectoryError(pub String);

/// Membership mirror operations.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Record that `users` are members of `thread`.
    async fn add_members(&self, thread: ThreadId, users: &[UserId]) -> Result<(), DirectoryError>;
    /// Record that `user` left `thread`.
    async fn remove_member(&self, thread: ThreadId, user: UserId) -> Result<(), DirectoryError>;
    /// The threads of `user`, or `None` when the mirror does not know (cold).
    async fn user_threads(&self, user: UserId) -> Result<Option<Vec<ThreadId>>, DirectoryError>;
    /// Fill the mirror for `user` from the source of truth.
    async fn warm_user(&self, user: UserId, threads: &[ThreadId]) -> Result<(), DirectoryError>;
    /// Forget what the mirror knows of `user` (after a failed write, so it is rebuilt).
    async fn forget_user(&self, user: UserId) -> Result<(), DirectoryError>;
}
