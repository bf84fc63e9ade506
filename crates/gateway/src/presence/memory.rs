//! In-process presence (single node).

use super::{Presence, PresenceError};
use confab_protocol::{SessionId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Sessions per user in a map.
#[derive(Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<UserId, HashSet<SessionId>>>,
}

impl MemoryPresence {
    /// Nobody online.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Presence for MemoryPresence {
    async fn session_opened(&self, user: UserId, session: SessionId) -> Result<(), PresenceError> {
        let mut g = self.users.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(user).or_default().insert(session);
        Ok(())
    }

    async fn session_closed(&self, user: UserId, session: SessionId) -> Result<(), PresenceError> {
        let mut g = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = g.get_mut(&user) {
            set.remove(&session);
            if set.is_empty() {
                g.remove(&user);
            }
        }
        Ok(())
    }
}
