//! Rooms beyond creation and membership changes: joining a random public room (seed 004).

use super::Chat;
use crate::error::{Error, Result};
use confab_protocol::{Thread, UserRef};

impl Chat {
    /// Join a public room the caller is not in yet, chosen at random; `NotFound` when there is
    /// none. Announced like any join (`thread_created` to the joiner, `member_joined` to all).
    pub async fn join_random(&self, caller: &UserRef) -> Result<Thread> {
        let room = self
            .store
            .random_public_room(caller.id)
            .await?
            .ok_or(Error::NotFound("room"))?;
        self.join_public(caller, room).await
    }
}
