//! In-process presence (single node): the same rules as the Redis implementation, over a map
//! behind one std mutex (never held across an `.await`). Events are handed to the in-process
//! broker while the lock is held, so their order is the order of the transitions.

use super::{answer, from_millis, Changes, Presence, PresenceError, Settled, Vacated};
use crate::broker::Broker;
use bytes::Bytes;
use confab_protocol::api::UserPresence;
use confab_protocol::{SessionId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct UserState {
    sessions: HashSet<SessionId>,
    /// Bumped by every 0↔1 change of the session count.
    version: u64,
    /// When the last session closed (ms since the epoch).
    last_seen: Option<i64>,
    /// When the pending offline event is due (ms since the epoch), if one is.
    pending: Option<i64>,
}

/// Sessions per user in a map (one node: there are no other nodes to sweep).
pub struct MemoryPresence {
    users: Mutex<HashMap<UserId, UserState>>,
    broker: Arc<dyn Broker>,
    channel: String,
    grace_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl MemoryPresence {
    /// Nobody online; events go to `channel` on `broker` (the control channel).
    pub fn new(broker: Arc<dyn Broker>, channel: String, grace: Duration) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            broker,
            channel,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, UserState>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, event: &str) {
        self.broker.publish(
            self.channel.clone(),
            Bytes::copy_from_slice(event.as_bytes()),
        );
    }
}

/// Record that `st` (of `user`) just lost its last session.
fn vacate(user: UserId, st: &mut UserState, now: i64, grace_ms: i64) -> Vacated {
    st.version += 1;
    st.last_seen = Some(now);
    st.pending = Some(now.saturating_add(grace_ms));
    Vacated {
        user,
        version: st.version,
        last_seen: from_millis(now),
    }
}

#[async_trait::async_trait]
impl Presence for MemoryPresence {
    async fn session_opened(
        &self,
        user: UserId,
        session: SessionId,
        event: Option<&str>,
    ) -> Result<Option<u64>, PresenceError> {
        let now = now_ms();
        let mut g = self.lock();
        let st = g.entry(user).or_default();
        if !st.sessions.insert(session) || st.sessions.len() > 1 {
            return Ok(None);
        }
        st.version += 1;
        match st.pending.take() {
            // Back within the grace period: they never went offline for anyone.
            Some(due) if due > now => Ok(None),
            _ => {
                if let Some(event) = event {
                    self.publish(event);
                }
                Ok(Some(st.version))
            }
        }
    }

    async fn announce_online(
        &self,
        user: UserId,
        version: u64,
        event: &str,
    ) -> Result<bool, PresenceError> {
        let g = self.lock();
        let current = g
            .get(&user)
            .is_some_and(|st| st.version == version && !st.sessions.is_empty());
        if current {
            self.publish(event);
        }
        Ok(current)
    }

    async fn session_closed(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<Vacated>, PresenceError> {
        let now = now_ms();
        let mut g = self.lock();
        let Some(st) = g.get_mut(&user) else {
            return Ok(None);
        };
        if !st.sessions.remove(&session) || !st.sessions.is_empty() {
            return Ok(None);
        }
        Ok(Some(vacate(user, st, now, self.grace_ms)))
    }

    async fn settle_offline(
        &self,
        user: UserId,
        version: u64,
        event: Option<&str>,
    ) -> Result<Settled, PresenceError> {
        let now = now_ms();
        let mut g = self.lock();
        let Some(st) = g.get_mut(&user) else {
            return Ok(Settled::Moot);
        };
        if !st.sessions.is_empty() || st.version != version {
            return Ok(Settled::Moot);
        }
        match st.pending {
            None => Ok(Settled::Moot),
            Some(due) if due > now => Ok(Settled::NotYet(Duration::from_millis(
                u64::try_from(due - now).unwrap_or(0),
            ))),
            Some(_) => {
                st.pending = None;
                if let Some(ev) = event {
                    self.publish(ev);
                }
                Ok(Settled::Offline)
            }
        }
    }

    async fn heartbeat(&self) -> Result<Changes, PresenceError> {
        Ok(Changes::default())
    }

    async fn sweep_dead_nodes(&self) -> Result<Vec<Vacated>, PresenceError> {
        Ok(Vec::new())
    }

    async fn overdue(&self, slack: Duration) -> Result<Vec<Vacated>, PresenceError> {
        let limit = now_ms() - i64::try_from(slack.as_millis()).unwrap_or(0);
        let g = self.lock();
        Ok(g.iter()
            .filter(|(_, st)| st.sessions.is_empty() && st.pending.is_some_and(|d| d <= limit))
            .map(|(u, st)| Vacated {
                user: *u,
                version: st.version,
                last_seen: from_millis(st.last_seen.unwrap_or(limit)),
            })
            .collect())
    }

    async fn clear_node(&self) -> Result<Vec<Vacated>, PresenceError> {
        let now = now_ms();
        let mut g = self.lock();
        let mut out = Vec::new();
        for (user, st) in g.iter_mut() {
            if !st.sessions.is_empty() {
                st.sessions.clear();
                out.push(vacate(*user, st, now, self.grace_ms));
            }
        }
        Ok(out)
    }

    async fn leave(&self) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn statuses(&self, users: &[UserId]) -> Result<Vec<UserPresence>, PresenceError> {
        let now = now_ms();
        let g = self.lock();
        Ok(users
            .iter()
            .map(|u| {
                let st = g.get(u);
                let online = st.is_some_and(|st| {
                    !st.sessions.is_empty() || st.pending.is_some_and(|due| due > now)
                });
                answer(*u, online, st.and_then(|st| st.last_seen))
            })
            .collect())
    }
}
