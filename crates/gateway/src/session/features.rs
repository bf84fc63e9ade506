//! Feature frames beyond sending: read state, typing, edits, deletes, reactions. Each is a thin
//! call into the chat service, which checks, stores and announces; the reply is `ok` (the
//! details travel in the live event every member's sessions receive, this one included).

use super::dispatch::HandleError;
use super::Session;
use crate::error::Error;
use confab_protocol::{ClientFrame, ServerFrame};

impl Session {
    pub(super) async fn handle_feature(
        &mut self,
        frame: ClientFrame,
    ) -> Result<Option<ServerFrame>, HandleError> {
        let me = self.auth.user.id;
        let chat = self.state.chat.clone();
        // Tracked so a drain waits for the change to be stored and announced.
        let _token = self.state.tracker.token();
        let req = match frame {
            ClientFrame::MarkRead {
                req,
                thread_id,
                seq,
            } => {
                chat.mark_read(me, thread_id, seq).await?;
                req
            }
            ClientFrame::Typing { req, thread_id } => {
                chat.typing(me, thread_id).await?;
                req
            }
            ClientFrame::Edit {
                req,
                message_id,
                body,
            } => {
                chat.edit(me, message_id, &body).await?;
                req
            }
            ClientFrame::Delete { req, message_id } => {
                chat.delete(me, message_id).await?;
                req
            }
            ClientFrame::React {
                req,
                message_id,
                emoji,
            } => {
                chat.react(me, message_id, &emoji, true).await?;
                req
            }
            ClientFrame::Unreact {
                req,
                message_id,
                emoji,
            } => {
                chat.react(me, message_id, &emoji, false).await?;
                req
            }
            // Sends, resumes and pings are handled by `dispatch`.
            ClientFrame::Send { .. } | ClientFrame::Resume { .. } | ClientFrame::Ping { .. } => {
                return Err(Error::BadRequest("unexpected frame".into()).into());
            }
        };
        Ok(Some(ServerFrame::Ok { req }))
    }
}
