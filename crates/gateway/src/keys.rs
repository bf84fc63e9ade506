//! Every Redis key and channel name, built by functions so that the prefix (per deployment, per
//! test) is applied everywhere and names never drift between writers and readers.

use confab_protocol::{ThreadId, UserId};

/// Builds names under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The pub/sub channel of one thread's events.
    pub fn thread_channel(&self, t: ThreadId) -> String {
        format!("{}:t:{}", self.prefix, t)
    }

    /// The prefix shared by all thread channels (to parse a thread id back out).
    pub fn thread_channel_prefix(&self) -> String {
        format!("{}:t:", self.prefix)
    }

    /// The channel every node listens to for membership changes and presence.
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The stream logging control-channel announcements (read back after a reconnect).
    pub fn control_log(&self) -> String {
        format!("{}:control:log", self.prefix)
    }

    /// A node's own liveness-probe channel.
    pub fn probe_channel(&self, node: &str) -> String {
        format!("{}:probe:{}", self.prefix, node)
    }

    /// Set of member user ids of a thread (mirror of Postgres).
    pub fn thread_members(&self, t: ThreadId) -> String {
        format!("{}:members:{}", self.prefix, t)
    }

    /// Set of thread ids of a user (mirror of Postgres), with a `-` sentinel once warmed.
    pub fn user_threads(&self, u: UserId) -> String {
        format!("{}:threads:{}", self.prefix, u)
    }

    /// Hash `session id -> user id` of the sessions one node holds.
    pub fn node_sessions(&self, node: &str) -> String {
        format!("{}:node:{}:sessions", self.prefix, node)
    }

    /// A node's heartbeat key (expires when the node dies).
    pub fn node_alive(&self, node: &str) -> String {
        format!("{}:node:{}:alive", self.prefix, node)
    }

    /// Sorted set of known node names, scored by their last heartbeat (ms since the epoch);
    /// swept by survivors.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash `session id -> node` of one user's sessions.
    pub fn user_sessions(&self, u: UserId) -> String {
        format!("{}{}", self.user_sessions_prefix(), u)
    }

    /// What [`Keys::user_sessions`] puts before the user id (presence scripts build the key).
    pub fn user_sessions_prefix(&self) -> String {
        format!("{}:presence:", self.prefix)
    }

    /// Hash of one user's presence bookkeeping: `v` (transition version), `ls` (last seen, ms
    /// since the epoch).
    pub fn user_presence(&self, u: UserId) -> String {
        format!("{}{}", self.user_presence_prefix(), u)
    }

    /// What [`Keys::user_presence`] puts before the user id.
    pub fn user_presence_prefix(&self) -> String {
        format!("{}:presence_meta:", self.prefix)
    }

    /// Sorted set of users whose last session closed, scored by when their offline event is
    /// due (ms since the epoch, after the grace period).
    pub fn presence_pending(&self) -> String {
        format!("{}:presence_pending", self.prefix)
    }
}
