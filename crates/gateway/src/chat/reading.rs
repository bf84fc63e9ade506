//! Reading a thread: history pages sized the way the seed apps open a thread, read state with
//! receipts, and typing indicators (ephemeral, rate-limited, never stored).

use super::Chat;
use crate::error::{Error, Result};
use confab_protocol::{Message, ServerFrame, ThreadId, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before stale ones are pruned (bounds memory whatever clients do).
const TYPING_GATE_PRUNE_AT: usize = 100_000;

/// When each (user, thread) last had a typing event relayed from this node.
#[derive(Debug, Default)]
pub(super) struct TypingGate {
    last: Mutex<HashMap<(UserId, ThreadId), Instant>>,
}

impl TypingGate {
    /// Claim the right to relay now: false when the last relay was less than `interval` ago.
    fn claim(&self, key: (UserId, ThreadId), interval: Duration) -> bool {
        let now = Instant::now();
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = g.get(&key) {
            if now.duration_since(*t) < interval {
                return false;
            }
        }
        if g.len() >= TYPING_GATE_PRUNE_AT {
            g.retain(|_, t| now.duration_since(*t) < interval);
        }
        g.insert(key, now);
        true
    }

    /// Undo a claim whose relay was refused (so a refusal never turns into a silent `ok`).
    fn release(&self, key: (UserId, ThreadId)) {
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(&key);
    }
}

impl Chat {
    /// A page of history for a member. Without `limit`: with `before_seq`, the older page size
    /// (10); without it, the newest 20 messages, or every unread one when more than 20 are
    /// unread (at most `max_unread_page`). An explicit `limit` always wins. Also returns the
    /// thread's change counter as it was *before* the page was read: a change after it has a
    /// higher number, so a client that resumes from it misses none.
    pub async fn history(
        &self,
        caller: UserId,
        thread: ThreadId,
        before_seq: Option<i64>,
        limit: Option<u64>,
    ) -> Result<(Vec<Message>, i64)> {
        let pos = self
            .store
            .read_position(thread, caller)
            .await?
            .ok_or(Error::NotMember)?;
        let l = &self.limits;
        let limit = match (limit, before_seq) {
            (Some(n), _) => n,
            (None, Some(_)) => l.older_page_messages.max(1),
            (None, None) => {
                let first = l.first_page_messages.max(1);
                // Everything after the read position is unread (the user's own sends move it).
                let unread = (pos.last_seq - pos.last_read_seq).max(0) as u64;
                if unread > first {
                    unread.min(l.max_unread_page.max(first))
                } else {
                    first
                }
            }
        };
        let page = self
            .store
            .history_page(thread, before_seq, limit, caller)
            .await?;
        Ok((page, pos.last_change))
    }

    /// Mark `thread` read up to `seq` (clamped to its last `seq`, never backwards). When the
    /// position moved, every member's sessions (the caller's other devices included) get a
    /// `read` event. Returns the position after the call.
    pub async fn mark_read(&self, caller: UserId, thread: ThreadId, seq: i64) -> Result<i64> {
        if seq < 0 {
            return Err(Error::BadRequest("seq must not be negative".into()));
        }
        let out = self
            .store
            .mark_read(thread, caller, seq)
            .await?
            .ok_or(Error::NotMember)?;
        if out.moved {
            self.publish_event(
                thread,
                None,
                &ServerFrame::Read {
                    thread_id: thread,
                    user_id: caller,
                    seq: out.last_read_seq,
                },
            );
        }
        Ok(out.last_read_seq)
    }

    /// Relay "`caller` is typing" to the thread's other members. At most one relay per user
    /// and thread per `typing_interval_ms` on this node; extra ones are coalesced (succeed,
    /// relay nothing). Members only; nothing is stored.
    pub async fn typing(&self, caller: UserId, thread: ThreadId) -> Result<()> {
        let key = (caller, thread);
        let interval = Duration::from_millis(self.limits.typing_interval_ms);
        if !self.typing.claim(key, interval) {
            return Ok(());
        }
        match self.require_member(thread, caller).await {
            Ok(()) => {}
            Err(e) => {
                self.typing.release(key);
                return Err(e);
            }
        }
        self.publish_event(
            thread,
            Some(caller),
            &ServerFrame::Typing {
                thread_id: thread,
                user_id: caller,
                expires_ms: self.limits.typing_ttl_ms,
            },
        );
        Ok(())
    }
}
