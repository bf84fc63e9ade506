//! Pipelined sends: a session keeps reading and delivering while its sends wait for their
//! commits, instead of stopping everything for each one.
//!
//! Why: a send waits for the group commit that stores it. If the session stopped for that wait,
//! deliveries to the same client piled up in its queue meanwhile, and a database lagging by a
//! second turned every busy client into a "slow consumer" (closed 4000). It also capped each
//! client at one message per commit round trip.
//!
//! What stays as it was:
//! - replies to sends (`ack` or `error`) come in request order, up to
//!   `session.max_inflight_sends` sends wait at once (then the session stops reading frames);
//! - a client's own message never reaches it before its `ack`: while a send to a thread is
//!   pending, that thread's frames are held from the client's own echo on (the thread stays in
//!   `seq` order) until the `ack` is written;
//! - any other frame waits until the pending sends are answered, so a `resume` or a history
//!   request sees the state after them, as before;
//! - a session asked to close (drain) answers its pending sends first.

use super::{End, Session};
use crate::error::Error;
use crate::hub::Outbound;
use bytestring::ByteString;
use confab_protocol::{CloseReason, ServerFrame, ThreadId};
use foldhash::{HashMap, HashMapExt};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use std::collections::VecDeque;

/// The answer to one send, once its commit returned (or it was refused).
pub(super) struct SendReply {
    thread: ThreadId,
    req: String,
    /// The stored message and whether it was a retry of an already stored one.
    result: Result<(confab_protocol::Message, bool), Error>,
}

/// An answered send, its bookkeeping done: the reply to write and the `seq` it acknowledged.
pub(super) struct Answer {
    thread: ThreadId,
    frame: ByteString,
    acked: Option<i64>,
}

/// A session's pending sends and the frames held behind them.
pub(crate) struct Pipeline {
    /// Created by the first send and dropped when the last one is answered: an empty
    /// `FuturesOrdered` still holds ~150 bytes of shared state, which an idle session need not.
    pending: Option<futures_util::stream::FuturesOrdered<LocalBoxFuture<'static, SendReply>>>,
    /// Pending sends per thread.
    to_thread: HashMap<ThreadId, usize>,
    /// Highest `seq` acknowledged to this session per thread.
    acked: HashMap<ThreadId, i64>,
    /// Per thread, frames held from the client's own echo on (in arrival order).
    held: HashMap<ThreadId, VecDeque<Outbound>>,
    held_total: usize,
    /// This session's user: the sender of its own messages.
    me: confab_protocol::UserId,
}

impl Pipeline {
    /// An empty pipeline for the sessions of `user`.
    pub(super) fn new(user: confab_protocol::UserId) -> Self {
        Self {
            pending: None,
            to_thread: HashMap::new(),
            acked: HashMap::new(),
            held: HashMap::new(),
            held_total: 0,
            me: user,
        }
    }

    /// Whether a `message` frame is this session's user's own. By the sender the envelope
    /// named; an older node's envelope names none, so then by the frame's text.
    fn is_own(
        me: confab_protocol::UserId,
        sender: Option<confab_protocol::UserId>,
        frame: &str,
    ) -> bool {
        match sender {
            Some(sender) => sender == me,
            None => frame.contains(&format!("\"sender_id\":\"{me}\"")),
        }
    }

    /// Sends waiting for their commit.
    pub(super) fn len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    fn push(&mut self, send: LocalBoxFuture<'static, SendReply>) {
        self.pending
            .get_or_insert_with(Default::default)
            .push_back(send);
    }

    /// The next answered send, in the order they were made (`None` when none is pending).
    /// Cancel-safe: a reply is only taken in the poll that returns it.
    pub(super) async fn next_reply(&mut self) -> Option<SendReply> {
        let pending = self.pending.as_mut()?;
        let reply = pending.next().await;
        if pending.is_empty() {
            self.pending = None;
        }
        reply
    }

    fn thread_of(out: &Outbound) -> Option<ThreadId> {
        match out {
            Outbound::Seq { thread, .. }
            | Outbound::Thread { thread, .. }
            | Outbound::Joined { thread, .. }
            | Outbound::Left { thread } => Some(*thread),
            Outbound::Direct(_) => None,
        }
    }

    /// Whether `out` must wait behind a pending send's `ack`.
    pub(super) fn must_hold(&self, out: &Outbound) -> bool {
        let Some(thread) = Self::thread_of(out) else {
            return false;
        };
        if self.held.get(&thread).is_some_and(|q| !q.is_empty()) {
            return true; // keep the thread in order behind what is already held
        }
        match out {
            Outbound::Seq {
                seq, frame, sender, ..
            } => {
                self.to_thread.get(&thread).copied().unwrap_or(0) > 0
                    && *seq > self.acked.get(&thread).copied().unwrap_or(i64::MIN)
                    && Self::is_own(self.me, *sender, frame)
            }
            _ => false,
        }
    }

    /// Remember the highest `seq` acknowledged in `thread` (frames up to it are no longer held).
    fn record_ack(&mut self, thread: ThreadId, seq: Option<i64>) {
        if let Some(seq) = seq {
            let acked = self.acked.entry(thread).or_insert(seq);
            *acked = (*acked).max(seq);
        }
    }

    /// The next held frame of `thread` that may go out now, if any.
    fn releasable(&mut self, thread: ThreadId) -> Option<Outbound> {
        let open = self.to_thread.get(&thread).copied().unwrap_or(0) > 0;
        let acked = self.acked.get(&thread).copied().unwrap_or(i64::MIN);
        let me = self.me;
        let q = self.held.get_mut(&thread)?;
        let free = match q.front()? {
            Outbound::Seq {
                seq, frame, sender, ..
            } => !open || *seq <= acked || !Self::is_own(me, *sender, frame),
            _ => true,
        };
        if !free {
            return None;
        }
        let out = q.pop_front();
        if q.is_empty() {
            self.held.remove(&thread);
        }
        self.held_total -= usize::from(out.is_some());
        out
    }
}

impl Session {
    /// Queue a send; its reply is written when its turn comes (see the module docs).
    pub(super) fn start_send(
        &mut self,
        req: String,
        thread_id: ThreadId,
        client_msg_id: String,
        body: String,
    ) {
        let me = self.auth.user.id;
        *self.pipeline.to_thread.entry(thread_id).or_default() += 1;
        if !self.state.take_user_send(me) {
            let refused = SendReply {
                thread: thread_id,
                req,
                result: Err(Error::RateLimited("too many messages; slow down".into())),
            };
            self.pipeline.push(Box::pin(std::future::ready(refused)));
            return;
        }
        let chat = self.state.chat.clone();
        // Tracked so a drain waits for the commit and the ack.
        let token = self.state.tracker.token();
        self.pipeline.push(Box::pin(async move {
            let result = chat.send(me, thread_id, client_msg_id, body).await;
            drop(token);
            SendReply {
                thread: thread_id,
                req,
                result,
            }
        }));
    }

    /// Write a send's reply, then whatever it was holding back.
    pub(super) async fn finish_send(&mut self, reply: SendReply) -> Result<(), End> {
        let answer = self.settle(reply);
        self.write_answer(answer).await
    }

    /// Answer a send without waiting when the socket's channel has room and the send held
    /// nothing back (what `finish_send` would do then, minus its boxed future); otherwise
    /// hand back what is left to do, for [`Session::write_answer`].
    pub(super) fn try_finish_send(&mut self, reply: SendReply) -> Result<Option<Answer>, End> {
        let answer = self.settle(reply);
        if self.pipeline.held.contains_key(&answer.thread) {
            return Ok(Some(answer));
        }
        match self.try_write(answer.frame)? {
            Some(frame) => Ok(Some(Answer { frame, ..answer })),
            None => {
                self.pipeline.record_ack(answer.thread, answer.acked);
                Ok(None)
            }
        }
    }

    /// The bookkeeping of an answered send, and its reply frame (an `ack`, or the error).
    fn settle(&mut self, reply: SendReply) -> Answer {
        let thread = reply.thread;
        if let Some(n) = self.pipeline.to_thread.get_mut(&thread) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pipeline.to_thread.remove(&thread);
            }
        }
        let (frame, acked) = match reply.result {
            Ok((msg, duplicate)) => {
                let seq = msg.seq;
                let ack = ServerFrame::Ack {
                    req: reply.req,
                    thread_id: thread,
                    client_msg_id: msg.client_msg_id,
                    id: msg.id,
                    seq,
                    created_at: msg.created_at,
                    duplicate,
                };
                (ack, Some(seq))
            }
            Err(e) => (
                self.error_frame(Some(reply.req), e.code(), &e.public_message()),
                None,
            ),
        };
        Answer {
            thread,
            frame: ByteString::from(frame.to_json()),
            acked,
        }
    }

    /// Write a settled send's reply, then whatever it was holding back.
    pub(super) async fn write_answer(&mut self, answer: Answer) -> Result<(), End> {
        let thread = answer.thread;
        self.write(answer.frame).await?;
        self.pipeline.record_ack(thread, answer.acked);
        while let Some(out) = self.pipeline.releasable(thread) {
            self.deliver(out).await?;
        }
        Ok(())
    }

    /// Answer every pending send, in order.
    pub(super) async fn flush_sends(&mut self) -> Result<(), End> {
        while let Some(reply) = self.pipeline.next_reply().await {
            self.finish_send(reply).await?;
        }
        Ok(())
    }

    /// Deliver what the hub handed over, unless it must wait behind a pending send's `ack`.
    pub(super) async fn route(&mut self, out: Outbound) -> Result<(), End> {
        if !self.pipeline.must_hold(&out) {
            return self.deliver(out).await;
        }
        if self.pipeline.held_total >= self.state.settings.session.outbound_queue.max(1) {
            // Held frames count against the same bound as the queue they came from.
            self.shared
                .close_slow_consumer(&self.state.metrics.slow_consumer_disconnects);
            return Err(End::Close(CloseReason::SlowConsumer));
        }
        if let Some(thread) = Pipeline::thread_of(&out) {
            self.pipeline.held.entry(thread).or_default().push_back(out);
            self.pipeline.held_total += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Pipeline;
    use confab_protocol::UserId;

    #[test]
    fn own_messages_are_told_by_the_envelopes_sender_or_else_by_the_frame() {
        let (me, other) = (UserId::new(), UserId::new());
        let mine = format!("{{\"type\":\"message\",\"sender_id\":\"{me}\"}}");
        let theirs = format!("{{\"type\":\"message\",\"sender_id\":\"{other}\"}}");
        assert!(
            Pipeline::is_own(me, Some(me), &theirs),
            "the envelope decides"
        );
        assert!(
            !Pipeline::is_own(me, Some(other), &mine),
            "the envelope decides"
        );
        // An older node's envelope names no sender: the frame's text does.
        assert!(Pipeline::is_own(me, None, &mine));
        assert!(!Pipeline::is_own(me, None, &theirs));
    }
}
