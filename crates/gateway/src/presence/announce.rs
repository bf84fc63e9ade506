//! The announcer: turns presence transitions into `presence` events for the users who share a
//! thread with the user (on every node, through the control channel), waits out the grace
//! period before an offline event, and runs the node's heartbeat and the sweep of dead nodes.

use super::{Changes, Presence, PresenceError, Settled, Vacated};
use crate::config::ms;
use crate::envelope::ControlEvent;
use crate::lookups::Lookups;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use confab_protocol::{PresenceStatus, ServerFrame, SessionId, ThreadId, UserId};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many times an offline timer re-arms when Redis says the grace has not quite passed.
const SETTLE_ATTEMPTS: usize = 5;

/// Presence transitions → events. Cheap to build and clone (a handful of `Arc`s).
#[derive(Clone)]
pub struct Announcer {
    presence: Arc<dyn Presence>,
    /// The user's threads for an event, read through the batched lookups: a mass disconnect
    /// settles thousands of offlines in the same moment (one query each would drain the pool
    /// and stall every connect behind them).
    lookups: Arc<Lookups>,
    grace: Duration,
    interval: Duration,
}

/// The control-channel payload of a presence event for the members of `threads` (not `user`).
fn event(
    user: UserId,
    threads: Vec<ThreadId>,
    status: PresenceStatus,
    last_seen: Option<DateTime<Utc>>,
) -> Option<String> {
    if threads.is_empty() {
        return None;
    }
    let frame = ServerFrame::Presence {
        user_id: user,
        status,
        last_seen,
    };
    serde_json::to_string(&ControlEvent::ToThreads {
        threads,
        exclude: Some(user),
        frame: frame.to_json(),
    })
    .inspect_err(|e| tracing::error!(error = %e, "presence event serialization failed"))
    .ok()
}

impl Announcer {
    /// The announcer of a node.
    pub fn new(state: &AppState) -> Self {
        let p = &state.settings.presence;
        Self {
            presence: state.presence.clone(),
            lookups: state.lookups.clone(),
            grace: ms(p.offline_grace_ms),
            interval: ms(p.heartbeat_interval_ms.max(10)),
        }
    }

    /// A session of `user`, a member of `threads`, started on this node.
    pub async fn opened(&self, user: UserId, session: SessionId, threads: Vec<ThreadId>) {
        // Built before we know whether the user came online, so the open publishes it in the
        // same atomic step (a few hundred bytes of JSON, against a Redis round trip).
        let ev = event(user, threads, PresenceStatus::Online, None);
        if let Err(e) = self
            .presence
            .session_opened(user, session, ev.as_deref())
            .await
        {
            tracing::warn!(error = %e, "presence update failed; retried on heartbeat");
        }
    }

    /// A session of `user` on this node ended.
    pub async fn closed(&self, user: UserId, session: SessionId) {
        match self.presence.session_closed(user, session).await {
            Ok(Some(v)) => self.schedule(v),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed; retried on heartbeat"),
        }
    }

    async fn announce_online(&self, user: UserId, version: u64, threads: Vec<ThreadId>) {
        let Some(ev) = event(user, threads, PresenceStatus::Online, None) else {
            return;
        };
        if let Err(e) = self.presence.announce_online(user, version, &ev).await {
            tracing::warn!(error = %e, "presence announcement failed");
        }
    }

    /// Announce `user` online to their threads as read from the database.
    async fn announce_online_from_store(&self, user: UserId, version: u64) {
        match self.lookups.user_thread_ids(user).await {
            Ok(threads) => self.announce_online(user, version, threads).await,
            Err(e) => tracing::warn!(error = %e, "presence announcement failed"),
        }
    }

    /// Wait out the grace period, then settle the offline (if the user is still offline). If
    /// this node dies meanwhile, a survivor's [`Announcer::tick`] settles it as overdue.
    fn schedule(&self, v: Vacated) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut wait = me.grace;
            for _ in 0..SETTLE_ATTEMPTS {
                tokio::time::sleep(wait).await;
                match me.settle(v).await {
                    Some(Settled::NotYet(left)) => wait = left + Duration::from_millis(1),
                    _ => return,
                }
            }
        });
    }

    /// Settle one pending offline now: `None` when it could not be tried (left to the overdue
    /// sweep).
    async fn settle(&self, v: Vacated) -> Option<Settled> {
        // The event is built before the atomic check-and-publish, so it needs the threads now.
        let threads = self
            .lookups
            .user_thread_ids(v.user)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "presence settle deferred"))
            .ok()?;
        let ev = event(v.user, threads, PresenceStatus::Offline, Some(v.last_seen));
        self.presence
            .settle_offline(v.user, v.version, ev.as_deref())
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "presence settle deferred"))
            .ok()
    }

    async fn apply(&self, changes: Changes) {
        for (user, version) in changes.online {
            self.announce_online_from_store(user, version).await;
        }
        for v in changes.vacated {
            self.schedule(v);
        }
    }

    /// At start-up, before serving: forget what a previous life under this node name left
    /// behind (its users go offline after the grace unless they are back), then heartbeat.
    pub async fn start(&self) -> Result<(), PresenceError> {
        for v in self.presence.clear_node().await? {
            self.schedule(v);
        }
        let changes = self.presence.heartbeat().await?;
        self.apply(changes).await;
        Ok(())
    }

    /// One round: heartbeat, sweep nodes whose heartbeat expired, settle overdue offlines.
    pub async fn tick(&self) {
        match self.presence.heartbeat().await {
            Ok(changes) => self.apply(changes).await,
            Err(e) => {
                // Sweeping others while our own heartbeat fails could mean we are the one cut
                // off: wait for Redis to answer again.
                tracing::warn!(error = %e, "presence heartbeat failed");
                return;
            }
        }
        match self.presence.sweep_dead_nodes().await {
            Ok(vacated) => {
                for v in vacated {
                    self.schedule(v);
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence sweep failed"),
        }
        // The node that made an offline pending settles it after the grace; whatever is
        // still pending one interval later lost its timer (that node died or drained).
        match self.presence.overdue(self.interval).await {
            Ok(vacated) => {
                for v in vacated {
                    let _ = self.settle(v).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence overdue check failed"),
        }
    }

    /// Tick every `presence.heartbeat_interval_ms` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.tick().await,
            }
        }
    }

    /// At the end of a drain (sessions closed): clear whatever this node still has registered
    /// and deregister it, so its users go offline promptly (after the grace).
    pub async fn stop(&self) {
        match self.presence.clear_node().await {
            Ok(vacated) => {
                for v in vacated {
                    self.schedule(v);
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence clear failed at drain"),
        }
        if let Err(e) = self.presence.leave().await {
            tracing::warn!(error = %e, "presence deregistration failed at drain");
        }
    }
}
