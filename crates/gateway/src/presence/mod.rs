//! Presence: who is online, across nodes. One trait ([`Presence`]) with a Redis and an
//! in-process implementation that count sessions and decide transitions atomically, and the
//! [`Announcer`] that turns transitions into `presence` events, runs the node's heartbeat and
//! sweeps dead nodes. It never touches sockets: events go out on the control channel and the hub
//! of every node delivers them. See `docs/presence.md` for the design and its bounds.

mod announce;
mod memory;
mod redis;
mod scripts;

pub use self::announce::Announcer;
pub use self::memory::MemoryPresence;
pub use self::redis::RedisPresence;

use chrono::{DateTime, Utc};
use confab_protocol::api::UserPresence;
use confab_protocol::{PresenceStatus, SessionId, UserId};
use std::time::Duration;

/// Presence store failures.
#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

/// A user's last session anywhere went away: an offline event is due once the grace period has
/// passed, if nothing changed by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vacated {
    /// The user.
    pub user: UserId,
    /// The user's transition version at that moment (every 0↔1 change bumps it): the offline
    /// event is published only if it is still this.
    pub version: u64,
    /// When they were last connected.
    pub last_seen: DateTime<Utc>,
}

/// What settling a pending offline did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The user is offline now; the event (if one was given) was published.
    Offline,
    /// The grace period has not passed yet: try again after this long.
    NotYet(Duration),
    /// Nothing to do: the user came back, or another node settled it first.
    Moot,
}

/// Transitions found by a heartbeat that had to register this node's sessions again (its
/// heartbeat had lapsed, so survivors may have swept them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Users who came online again, with their version (announce with
    /// [`Presence::announce_online`]).
    pub online: Vec<(UserId, u64)>,
    /// Users left with no session (schedule their offline).
    pub vacated: Vec<Vacated>,
}

/// Counts sessions per user across nodes and decides online/offline transitions atomically.
///
/// Events are passed in already serialized (a control-channel payload) and published by the
/// implementation *inside* the same atomic step that checks the transition is still current, so
/// the order of online/offline events on the control channel is the order of the transitions,
/// whichever nodes publish them.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Count a session of `user` on this node. `Some(version)` when that brought the user online
    /// (their first session anywhere, and not a reconnect within the grace period); `event`, if
    /// given, is then published in the same atomic step (one Redis round trip per connect
    /// instead of a second one through [`Presence::announce_online`]).
    async fn session_opened(
        &self,
        user: UserId,
        session: SessionId,
        event: Option<&str>,
    ) -> Result<Option<u64>, PresenceError>;

    /// Publish `event` if `user` is online and unchanged since `version`; whether it was.
    async fn announce_online(
        &self,
        user: UserId,
        version: u64,
        event: &str,
    ) -> Result<bool, PresenceError>;

    /// Stop counting a session of `user` on this node. `Some` when it was their last anywhere.
    async fn session_closed(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<Vacated>, PresenceError>;

    /// If `user` is still without sessions, unchanged since `version` and past the grace period:
    /// settle them as offline and publish `event` (if any), atomically.
    async fn settle_offline(
        &self,
        user: UserId,
        version: u64,
        event: Option<&str>,
    ) -> Result<Settled, PresenceError>;

    /// Refresh this node's heartbeat (and retry any session update that failed). When the
    /// heartbeat had lapsed, register this node's live sessions again.
    async fn heartbeat(&self) -> Result<Changes, PresenceError>;

    /// Remove the sessions of nodes whose heartbeat expired; the users left with none.
    async fn sweep_dead_nodes(&self) -> Result<Vec<Vacated>, PresenceError>;

    /// Pending offlines overdue by more than `slack` (whoever should have settled them died).
    async fn overdue(&self, slack: Duration) -> Result<Vec<Vacated>, PresenceError>;

    /// Remove every session registered under this node's name: at start-up (leftovers of a
    /// previous life under the same name) and at drain. The users left with none.
    async fn clear_node(&self) -> Result<Vec<Vacated>, PresenceError>;

    /// Stop heartbeating and deregister this node (the last step of a drain).
    async fn leave(&self) -> Result<(), PresenceError>;

    /// The status of each user, in the order given.
    async fn statuses(&self, users: &[UserId]) -> Result<Vec<UserPresence>, PresenceError>;
}

/// Milliseconds since the epoch to a timestamp (the epoch itself if out of range).
/// One answer of the presence query: `last_seen` only for someone offline.
fn answer(user_id: UserId, online: bool, last_seen_ms: Option<i64>) -> UserPresence {
    UserPresence {
        user_id,
        status: if online {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        },
        last_seen: if online {
            None
        } else {
            last_seen_ms.map(from_millis)
        },
    }
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
