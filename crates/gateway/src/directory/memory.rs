//! In-process membership mirror (single node).

use super::{Directory, DirectoryError};
use confab_protocol::{ThreadId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// A map per user, behind a mutex never held across an await.
#[derive(Default)]
pub struct MemoryDirectory {
    users: Mutex<HashMap<UserId, HashSet<ThreadId>>>,
}

impl MemoryDirectory {
    /// An empty (cold) directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<UserId, HashSet<ThreadId>>) -> T) -> T {
        let mut g = self.users.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

#[async_trait::async_trait]
impl Directory for MemoryDirectory {
    async fn add_members(&self, thread: ThreadId, users: &[UserId]) -> Result<(), DirectoryError> {
        self.with(|m| {
            for u in users {
                // Only warm entries are kept up to date; a cold user is loaded on demand.
                if let Some(set) = m.get_mut(u) {
                    set.insert(thread);
                }
            }
        });
        Ok(())
    }

    async fn remove_member(&self, thread: ThreadId, user: UserId) -> Result<(), DirectoryError> {
        self.with(|m| {
            if let Some(set) = m.get_mut(&user) {
                set.remove(&thread);
            }
        });
        Ok(())
    }

    async fn user_threads(&self, user: UserId) -> Result<Option<Vec<ThreadId>>, DirectoryError> {
        Ok(self.with(|m| m.get(&user).map(|s| s.iter().copied().collect())))
    }

    async fn warm_user(&self, user: UserId, threads: &[ThreadId]) -> Result<(), DirectoryError> {
        self.with(|m| m.insert(user, threads.iter().copied().collect()));
        Ok(())
    }

    async fn forget_user(&self, user: UserId) -> Result<(), DirectoryError> {
        self.with(|m| m.remove(&user));
        Ok(())
    }
}
