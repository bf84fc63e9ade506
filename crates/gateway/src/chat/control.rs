//! Control events every node must hear (joins, leaves, logouts), published in order and not
//! dropped by the publishing node while it cannot reach Redis.
//!
//! Why a backlog: a join is stored first and announced after; if Redis is unreachable then, a
//! dropped announcement would leave the new member's open sessions outside the thread for good
//! (no later message reveals it: the node does not follow the thread for them). So an
//! announcement that cannot be published waits in this node's backlog, which one task publishes
//! in order, retrying until Redis takes it. Later announcements queue behind it, so the nodes
//! still hear a user's join before their leave.
//!
//! Every announcement is also logged (`Broker::publish_logged`): pub/sub keeps nothing, so one
//! published while another node is re-subscribing (just after a Redis restart, say) is read
//! back by that node from the log once its subscription is up.

use super::Chat;
use crate::broker::BrokerError;
use crate::envelope::ControlEvent;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Announcements held while Redis is unreachable unless set (`redis.control_log_max`, whose
/// default this is): past it the oldest are dropped (and logged), the bound of a node's memory
/// for an outage of any length.
const DEFAULT_BACKLOG_MAX: usize = 10_000;
/// The backlog's retry interval grows to this.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// An announcement waiting for Redis.
#[derive(Clone)]
struct Held {
    channel: String,
    payload: Bytes,
    /// Publish it only if the announcement with this event id is in the log: an undo of an
    /// attempt whose outcome is unknown (see [`Chat::announce_or_refuse`]).
    only_if_logged: Option<u128>,
}

/// Announcements waiting for Redis, oldest first.
pub(crate) struct Backlog {
    queue: Mutex<VecDeque<Held>>,
    /// A task is publishing the backlog.
    draining: AtomicBool,
    /// Most announcements held.
    max: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Self::new(DEFAULT_BACKLOG_MAX)
    }
}

impl Backlog {
    /// A backlog holding at most `max` announcements.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            queue: Mutex::default(),
            draining: AtomicBool::new(false),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Chat {
    /// Hold at most `max` announcements while Redis is unreachable (`redis.control_log_max`:
    /// the same bound as the log that keeps them for reconnecting nodes).
    pub fn with_control_backlog(mut self, max: usize) -> Self {
        self.backlog = std::sync::Arc::new(Backlog::new(max));
        self
    }

    /// Publish a membership or session event every node must hear, and return only once Redis
    /// accepted it: a message sent after the caller's reply then reaches every node after it
    /// (Redis delivers in the order it processes publishes). A few retries ride out a blip; if
    /// Redis stays down, the event waits in the node's backlog (see the module docs) and is
    /// published when Redis is back, after any older one.
    pub async fn publish_control_confirmed(&self, ev: &ControlEvent) {
        let Some((channel, payload, _)) = self.control_payload(ev) else {
            return;
        };
        let held = Held {
            channel,
            payload,
            only_if_logged: None,
        };
        if !self.backlog.is_empty() {
            // Behind what is already waiting, so the nodes hear them in order.
            self.hold_back(held);
            return;
        }
        if self
            .publish_with_retries(&held.channel, &held.payload)
            .await
            .is_err()
        {
            self.metrics.publish_failures.inc();
            self.hold_back(held);
        }
    }

    /// Like [`Chat::publish_control_confirmed`], for a change that must not happen unannounced:
    /// `unavailable` (nothing published, nothing queued) when Redis does not take it now, so the
    /// caller refuses the change instead of making it behind the nodes' backs.
    ///
    /// When Redis did not answer an attempt (no reply in time, or the connection dropped before
    /// it), the announcement may have taken effect or still may; `undo` (if any) is then queued
    /// behind it in the backlog, so the nodes hear both in that order.
    pub async fn announce_or_refuse(
        &self,
        ev: &ControlEvent,
        undo: Option<&ControlEvent>,
    ) -> Result<()> {
        let Some((channel, payload, event_id)) = self.control_payload(ev) else {
            return Err(Error::Internal("control event serialization failed".into()));
        };
        if !self.backlog.is_empty() {
            return Err(Error::Unavailable(
                "announcements held during a Redis outage are still being sent; try again".into(),
            ));
        }
        let Err(e) = self.publish_with_retries(&channel, &payload).await else {
            return Ok(());
        };
        if e.may_have_run() {
            if let Some((channel, payload, _)) = undo.and_then(|u| self.control_payload(u)) {
                // An attempt that timed out may still be waiting on a connection Redis has not
                // read yet, and run later: undone whatever happens, behind it. One whose
                // connection dropped before the answer either ran or never will: undone only
                // if it is in the log (looked up once Redis answers), so a change refused
                // while Redis was simply down sends nobody back to reconnect.
                self.hold_back(Held {
                    channel,
                    payload,
                    only_if_logged: (!e.is_timeout()).then_some(event_id),
                });
            }
        }
        Err(Error::Unavailable(format!(
            "cannot announce this change to the other nodes ({e}); try again"
        )))
    }

    /// The announcement as published: the event's JSON with an event id of its own spliced in
    /// first (`{"eid":"…",…}`). Its retries carry the same id, so a node that hears it twice —
    /// an attempt that timed out but ran, then the retry — handles it once (see
    /// `broker::control_log`). Nodes that know nothing of the id ignore the field.
    fn control_payload(&self, ev: &ControlEvent) -> Option<(String, Bytes, u128)> {
        match serde_json::to_vec(ev) {
            Ok(v) => {
                let eid = uuid::Uuid::new_v4();
                let mut out = Vec::with_capacity(v.len() + 42);
                out.extend_from_slice(b"{\"eid\":\"");
                out.extend_from_slice(eid.simple().to_string().as_bytes());
                out.extend_from_slice(b"\",");
                out.extend_from_slice(v.get(1..).unwrap_or_default());
                Some((self.keys.control_channel(), Bytes::from(out), eid.as_u128()))
            }
            Err(e) => {
                tracing::error!(error = %e, "control event serialization failed");
                None
            }
        }
    }

    async fn publish_with_retries(
        &self,
        channel: &str,
        payload: &Bytes,
    ) -> std::result::Result<(), BrokerError> {
        let mut wait = Duration::from_millis(50);
        let mut last = None;
        // Whether any attempt may have run: a later attempt's plain refusal (no connection)
        // does not make an earlier unanswered one not have happened.
        let (mut timed_out, mut unanswered) = (false, false);
        for _ in 0..3 {
            match self
                .broker
                .publish_logged(channel.to_owned(), payload.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "control publish failed; retrying");
                    timed_out |= e.is_timeout();
                    unanswered |= e.may_have_run();
                    last = Some(e);
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        }
        let last = last.unwrap_or_else(|| BrokerError("no attempt made".into()));
        // The least known outcome of all the attempts: one that may still run, then one that
        // may have run, then a refusal.
        Err(if timed_out {
            BrokerError::timed_out()
        } else if unanswered && !last.may_have_run() {
            BrokerError::unanswered(last)
        } else {
            last
        })
    }

    /// Queue an announcement behind the backlog and make sure a task is publishing it.
    fn hold_back(&self, held: Held) {
        {
            let mut q = self.backlog.lock();
            if q.len() >= self.backlog.max {
                q.pop_front();
                tracing::error!("control backlog full: the oldest announcement was dropped");
            }
            q.push_back(held);
        }
        tracing::warn!("Redis unreachable: announcement held until it is back");
        if !self.backlog.draining.swap(true, Ordering::AcqRel) {
            let chat = self.clone();
            tokio::spawn(async move { chat.drain_backlog().await });
        }
    }

    /// Publish the backlog in order, each one until Redis takes it.
    async fn drain_backlog(self) {
        let mut wait = Duration::from_millis(100);
        loop {
            let next = self.backlog.lock().front().cloned();
            let Some(held) = next else {
                self.backlog.draining.store(false, Ordering::Release);
                // Something queued between the look and the flag: keep going if nobody else is.
                if self.backlog.is_empty() || self.backlog.draining.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            };
            if let Some(event_id) = held.only_if_logged {
                match self.broker.was_logged(event_id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // The attempt never ran: nothing to undo.
                        self.backlog.lock().pop_front();
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "control log not read yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                        continue;
                    }
                }
            }
            match self.broker.publish_logged(held.channel, held.payload).await {
                Ok(()) => {
                    self.backlog.lock().pop_front();
                    wait = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "held announcement not published yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
