//! Inbound frames: decode, route to the chat service, reply. Every failure becomes an `error`
//! frame with a code; none ends the session (only transport problems do).

use super::{End, Session};
use crate::error::Error;
use actix_ws::Message as WsMessage;
use confab_protocol::{ClientFrame, ErrorCode, ResumePoint, ResumeResult, ServerFrame, ThreadId};
use std::collections::hash_map::{Entry, HashMap};

/// The `req` of a frame that failed to decode, if it has a readable one, so even a refusal can
/// be matched to its request.
pub(super) fn peek_req(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        req: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Peek>(text).ok()?.req? {
        serde_json::Value::String(s) if s.len() <= 64 => Some(s),
        _ => None,
    }
}

impl Session {
    /// Take a well-formed `send` that passes the frame-size, rate and `req` checks without
    /// waiting (what `on_ws_message` would do with it, minus its boxed future); anything
    /// else, including every frame that would be refused, comes back for `on_ws_message`.
    pub(super) fn try_take_send(&mut self, msg: WsMessage) -> Option<WsMessage> {
        /// Only the frame's type: a scan that allocates nothing, so a frame that is not a
        /// `send` costs little before the full decode on the other path.
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        let WsMessage::Text(text) = &msg else {
            return Some(msg);
        };
        let limits = &self.state.settings.limits;
        if text.len() > limits.max_frame_bytes
            || !serde_json::from_str::<Kind<'_>>(text).is_ok_and(|k| k.kind == "send")
        {
            return Some(msg);
        }
        let Ok(ClientFrame::Send {
            req,
            thread_id,
            client_msg_id,
            body,
        }) = serde_json::from_str::<ClientFrame>(text)
        else {
            return Some(msg);
        };
        if req.chars().count() > limits.max_id_chars || !self.frames.try_take() {
            return Some(msg);
        }
        self.strikes = 0;
        self.state
            .metrics
            .frames_received
            .with_label_values(&["send"])
            .inc();
        self.start_send(req, thread_id, client_msg_id, body);
        None
    }

    pub(super) async fn on_frame(&mut self, text: &str) -> Result<(), End> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                self.state
                    .metrics
                    .frames_received
                    .with_label_values(&["invalid"])
                    .inc();
                let req = peek_req(text);
                return self
                    .error(req, ErrorCode::BadRequest, &format!("invalid frame: {e}"))
                    .await;
            }
        };
        let kind = frame_kind(&frame);
        self.state
            .metrics
            .frames_received
            .with_label_values(&[kind])
            .inc();
        let req = frame.req().to_owned();
        if req.chars().count() > self.state.settings.limits.max_id_chars {
            return self
                .error(None, ErrorCode::BadRequest, "req is too long")
                .await;
        }
        if !matches!(frame, ClientFrame::Send { .. }) {
            // Anything else sees the state after the client's earlier sends, as it would
            // without pipelining.
            self.flush_sends().await?;
        }
        let result = self.handle(frame).await;
        match result {
            Ok(Some(reply)) => self.reply(&reply).await,
            Ok(None) => Ok(()),
            Err(HandleError::End(end)) => Err(end),
            Err(HandleError::Refused(e)) => {
                self.error(Some(req), e.code(), &e.public_message()).await
            }
        }
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<Option<ServerFrame>, HandleError> {
        match frame {
            ClientFrame::Send {
                req,
                thread_id,
                client_msg_id,
                body,
            } => {
                // Answered in request order once stored (see `sending`).
                self.start_send(req, thread_id, client_msg_id, body);
                Ok(None)
            }
            ClientFrame::Resume { req, threads } => {
                let results = self.resume(&threads).await?;
                self.holding = false;
                Ok(Some(ServerFrame::Resumed {
                    req,
                    threads: results,
                }))
            }
            ClientFrame::Ping { req } => Ok(Some(ServerFrame::Pong { req })),
            other => self.handle_feature(other).await,
        }
    }

    /// Replay, per thread, what came after the client's `last_seq`, in order, then move the
    /// cursor so live delivery continues without duplicates.
    async fn resume(&mut self, points: &[ResumePoint]) -> Result<Vec<ResumeResult>, HandleError> {
        let limits = &self.state.settings;
        if points.len() > limits.limits.max_resume_threads {
            return Err(Error::TooLarge(format!(
                "at most {} threads per resume",
                limits.limits.max_resume_threads
            ))
            .into());
        }
        // 0 is "from the first message"; below it is a client bug, answered as one rather than
        // silently read as 0.
        if let Some(p) = points.iter().find(|p| p.last_seq < 0) {
            return Err(Error::BadRequest(format!(
                "last_seq {} of thread {} is negative (0: replay from the first message)",
                p.last_seq, p.thread_id
            ))
            .into());
        }
        if let Some(p) = points.iter().find(|p| p.last_change.is_some_and(|c| c < 0)) {
            return Err(Error::BadRequest(format!(
                "last_change of thread {} is negative (0: every change)",
                p.thread_id
            ))
            .into());
        }
        let max_replay = limits.session.max_resume_replay as i64;
        let batch = limits.session.replay_batch.max(1);
        // A thread listed twice is replayed once, from the lowest `last_seq` given: replaying
        // it per entry would send the same messages again (and read them again, per copy).
        let mut index: HashMap<ThreadId, usize> = HashMap::with_capacity(points.len());
        // Likewise the changes: from the lowest `last_change` given, if any entry asks.
        let mut wanted: Vec<(ThreadId, i64, Option<i64>)> = Vec::with_capacity(points.len());
        for p in points {
            match index.entry(p.thread_id) {
                Entry::Occupied(e) => {
                    let (_, last_seq, last_change) = &mut wanted[*e.get()];
                    *last_seq = (*last_seq).min(p.last_seq);
                    *last_change = match (*last_change, p.last_change) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Entry::Vacant(e) => {
                    e.insert(wanted.len());
                    wanted.push((p.thread_id, p.last_seq, p.last_change));
                }
            }
        }
        // The change counters of the threads whose changes are asked for, in one query; none
        // for a resume that asks for none (a reconnect storm is thousands of resumes).
        let member_threads: Vec<ThreadId> = wanted
            .iter()
            .filter(|w| w.2.is_some() && self.cursors.contains_key(&w.0))
            .map(|w| w.0)
            .collect();
        let counters = self
            .state
            .store
            .last_changes(&member_threads)
            .await
            .map_err(Error::from)?;
        let mut results = Vec::with_capacity(wanted.len());
        for (thread_id, last_seq, last_change) in wanted {
            // Threads the user is not in are skipped: never replay a stranger's thread.
            let Some(&head) = self.cursors.get(&thread_id) else {
                continue;
            };
            let from = last_seq.clamp(0, head);
            let (start, truncated) = if head - from > max_replay {
                (head - max_replay, true)
            } else {
                (from, false)
            };
            let mut after = start;
            let mut replayed = 0u32;
            while after < head {
                let msgs = self
                    .state
                    .store
                    .messages_after(thread_id, after, batch)
                    .await
                    .map_err(Error::from)?;
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    if m.seq > head {
                        break;
                    }
                    after = m.seq;
                    self.reply(&ServerFrame::Message(m))
                        .await
                        .map_err(HandleError::End)?;
                    replayed += 1;
                }
            }
            let counter = counters.get(&thread_id).copied().unwrap_or(0);
            let changes = self.replay_changes(thread_id, counter, last_change).await?;
            results.push(ResumeResult {
                thread_id,
                replayed,
                truncated,
                from_seq: start + 1,
                last_seq: head,
                last_change: last_change.map(|_| changes.last_change),
                changes_replayed: changes.replayed,
                changes_truncated: changes.truncated,
            });
        }
        Ok(results)
    }
}

/// What [`Session::replay_changes`] did for one thread.
struct ChangesReplayed {
    last_change: i64,
    replayed: u32,
    truncated: bool,
}

impl Session {
    /// Replay, as `message_changed` frames, the messages of `thread_id` changed after the
    /// client's `last_change` (when it gave one), and say where the client stands now.
    /// `counter` is the thread's change counter, read before: a change committed after that
    /// read has a higher number and is either among the rows read here or heard live, never
    /// lost between the two.
    async fn replay_changes(
        &mut self,
        thread_id: ThreadId,
        counter: i64,
        last_change: Option<i64>,
    ) -> Result<ChangesReplayed, HandleError> {
        let after = match last_change {
            Some(after) if after < counter => after,
            // Not asked, or nothing changed since: the counter is all there is to say.
            _ => {
                return Ok(ChangesReplayed {
                    last_change: counter,
                    replayed: 0,
                    truncated: false,
                })
            }
        };
        let mut last_change = counter;
        let max = self.state.settings.session.max_resume_replay;
        let changes = self
            .state
            .store
            .changes_after(thread_id, after, max + 1, self.auth.user.id)
            .await
            .map_err(Error::from)?;
        let truncated = changes.len() as u64 > max;
        let mut replayed = 0u32;
        for (change_seq, message) in changes.into_iter().take(max as usize) {
            last_change = last_change.max(change_seq);
            self.reply(&ServerFrame::MessageChanged {
                change_seq,
                message,
            })
            .await
            .map_err(HandleError::End)?;
            replayed += 1;
        }
        Ok(ChangesReplayed {
            last_change,
            replayed,
            truncated,
        })
    }
}

/// A handler either refuses the request (error frame) or the session must end.
pub(super) enum HandleError {
    Refused(Error),
    End(End),
}

impl From<Error> for HandleError {
    fn from(e: Error) -> Self {
        HandleError::Refused(e)
    }
}

fn frame_kind(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Send { .. } => "send",
        ClientFrame::Resume { .. } => "resume",
        ClientFrame::MarkRead { .. } => "mark_read",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Edit { .. } => "edit",
        ClientFrame::Delete { .. } => "delete",
        ClientFrame::React { .. } => "react",
        ClientFrame::Unreact { .. } => "unreact",
        ClientFrame::Ping { .. } => "ping",
    }
}
