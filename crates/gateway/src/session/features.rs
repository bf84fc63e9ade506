//! Feature frames beyond sending: read state, typing, edits, deletes, reactions.

use super::dispatch::HandleError;
use super::Session;
use crate::error::Error;
use confab_protocol::{ClientFrame, ServerFrame};

impl Session {
    pub(super) async fn handle_feature(
        &mut self,
        frame: ClientFrame,
    ) -> Result<Option<ServerFrame>, HandleError> {
        Err(Error::BadRequest(format!("unsupported frame: {frame:?}")).into())
    }
}
