//! Redis presence (a cluster): sessions counted per user and per node in Redis hashes, a
//! heartbeat key with a TTL per node, and the Lua scripts of `scripts.rs` for every transition.
//!
//! A node also remembers its own live sessions, so that it can register them again when its
//! heartbeat lapsed (survivors may have swept them while it was stalled), and retries any session
//! update that failed: a connected user is never left counted offline, and a closed session never
//! left counted online, for longer than a heartbeat interval after Redis answers again.

use super::scripts;
use super::{answer, from_millis, Changes, Presence, PresenceError, Settled, Vacated};
use crate::keys::Keys;
use crate::redis_shared::{SharedConn, SharedRedis};
use confab_protocol::api::UserPresence;
use confab_protocol::{SessionId, UserId};
use deadpool_redis::Pool;
use redis::{FromRedisValue, Script, Value};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Sessions removed per sweep script call (bounds how long one call blocks Redis).
const SWEEP_BATCH: usize = 1000;
/// Sweep calls per round (a larger backlog continues on the next heartbeat).
const SWEEP_ROUNDS: usize = 100;
/// Overdue offlines fetched per heartbeat.
const OVERDUE_BATCH: usize = 200;
/// Stands for the node name when splitting a key template into prefix and suffix.
const MARK: &str = "\u{1}";

struct Scripts {
    open: Script,
    announce: Script,
    close: Script,
    settle: Script,
    overdue: Script,
    sweep: Script,
    beat: Script,
}

#[derive(Default)]
struct Retry {
    /// An open failed: register every local session again at the next heartbeat.
    resync: bool,
    /// Closes that failed, retried at the next heartbeat.
    closes: Vec<(SessionId, UserId)>,
}

/// Names of the per-node keys split around the node name (the sweep script builds them).
struct NodeKeyParts {
    alive: (String, String),
    sessions: (String, String),
}

/// Presence in Redis.
pub struct RedisPresence {
    redis: SharedRedis,
    keys: Keys,
    node: String,
    ttl_ms: u64,
    grace_ms: u64,
    channel: String,
    /// The control log stream every presence event is appended to (see `scripts.rs`), and
    /// about how many entries it keeps.
    log: (String, usize),
    parts: NodeKeyParts,
    scripts: Scripts,
    /// This node's live sessions.
    local: Mutex<HashMap<SessionId, UserId>>,
    retry: Mutex<Retry>,
    /// Serializes heartbeats with [`Presence::leave`]; `true` once left.
    left: tokio::sync::Mutex<bool>,
}

fn err(e: impl std::fmt::Display) -> PresenceError {
    PresenceError(e.to_string())
}

fn split(template: String) -> (String, String) {
    match template.split_once(MARK) {
        Some((a, b)) => (a.to_owned(), b.to_owned()),
        None => (template, String::new()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A flat `user, version, last_seen, …` list as returned by the scripts.
fn vacated_list(vals: &[Value]) -> Vec<Vacated> {
    vals.chunks_exact(3)
        .filter_map(|c| {
            let user: String = String::from_redis_value(&c[0]).ok()?;
            let version = i64::from_redis_value(&c[1]).ok()?;
            let last_seen = i64::from_redis_value(&c[2]).ok()?;
            Some(Vacated {
                user: user.parse().ok()?,
                version: u64::try_from(version).ok()?,
                last_seen: from_millis(last_seen),
            })
        })
        .collect()
}

impl RedisPresence {
    /// Presence for node `node` over a connection shared from `pool`; events go to
    /// `keys.control_channel()`, logged in `keys.control_log()` (about `log_max` entries kept).
    pub fn new(
        pool: Pool,
        keys: Keys,
        node: &str,
        node_ttl: Duration,
        grace: Duration,
        log_max: usize,
    ) -> Self {
        let parts = NodeKeyParts {
            alive: split(keys.node_alive(MARK)),
            sessions: split(keys.node_sessions(MARK)),
        };
        Self {
            redis: SharedRedis::new(pool),
            channel: keys.control_channel(),
            log: (keys.control_log(), log_max.max(1)),
            keys,
            node: node.to_owned(),
            ttl_ms: millis(node_ttl).max(1),
            grace_ms: millis(grace),
            parts,
            scripts: Scripts {
                open: Script::new(scripts::OPEN),
                announce: Script::new(scripts::ANNOUNCE),
                close: Script::new(scripts::CLOSE),
                settle: Script::new(scripts::SETTLE),
                overdue: Script::new(scripts::OVERDUE),
                sweep: Script::new(scripts::SWEEP),
                beat: Script::new(scripts::BEAT),
            },
            local: Mutex::new(HashMap::new()),
            retry: Mutex::new(Retry::default()),
            left: tokio::sync::Mutex::new(false),
        }
    }

    async fn conn(&self) -> Result<SharedConn, PresenceError> {
        self.redis.get().await.map_err(err)
    }

    fn local(&self) -> MutexGuard<'_, HashMap<SessionId, UserId>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retry(&self) -> MutexGuard<'_, Retry> {
        self.retry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the open script: `Some(version)` when the user came online (`event` published then).
    async fn open(
        &self,
        user: UserId,
        session: SessionId,
        event: Option<&str>,
    ) -> Result<Option<u64>, PresenceError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.open.prepare_invoke();
        inv.key(self.keys.user_sessions(user))
            .key(self.keys.node_sessions(&self.node))
            .key(self.keys.user_presence(user))
            .key(self.keys.presence_pending())
            .key(self.keys.nodes())
            .key(&self.log.0)
            .arg(session.to_string())
            .arg(&self.node)
            .arg(user.to_string())
            .arg(&self.channel)
            .arg(event.unwrap_or(""))
            .arg(self.log.1);
        let v: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(u64::try_from(v).ok().filter(|v| *v > 0))
    }

    /// Run the close script: `Some` when that was the user's last session.
    async fn close(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<Vacated>, PresenceError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.close.prepare_invoke();
        inv.key(self.keys.user_sessions(user))
            .key(self.keys.node_sessions(&self.node))
            .key(self.keys.user_presence(user))
            .key(self.keys.presence_pending())
            .arg(session.to_string())
            .arg(user.to_string())
            .arg(self.grace_ms);
        let (version, now): (i64, i64) = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(u64::try_from(version)
            .ok()
            .filter(|v| *v > 0)
            .map(|version| Vacated {
                user,
                version,
                last_seen: from_millis(now),
            }))
    }

    /// Run the sweep script until done (or the round is over).
    async fn sweep(&self, mode: &str) -> Result<Vec<Vacated>, PresenceError> {
        let mut conn = self.conn().await?;
        let mut out = Vec::new();
        for _ in 0..SWEEP_ROUNDS {
            let mut inv = self.scripts.sweep.prepare_invoke();
            inv.key(self.keys.nodes())
                .key(self.keys.presence_pending())
                .arg(mode)
                .arg(&self.node)
                .arg(SWEEP_BATCH)
                .arg(self.grace_ms)
                .arg(&self.parts.alive.0)
                .arg(&self.parts.alive.1)
                .arg(&self.parts.sessions.0)
                .arg(&self.parts.sessions.1)
                .arg(self.keys.user_sessions_prefix())
                .arg(self.keys.user_presence_prefix());
            let vals: Vec<Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
            let more = vals
                .first()
                .and_then(|v| i64::from_redis_value(v).ok())
                .unwrap_or(0);
            out.extend(vacated_list(vals.get(1..).unwrap_or_default()));
            if more == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Retry failed closes and, if needed, register every local session again.
    async fn resync(&self, lapsed: bool) -> Result<Changes, PresenceError> {
        let (resync, closes) = {
            let mut r = self.retry();
            (
                std::mem::take(&mut r.resync) || lapsed,
                std::mem::take(&mut r.closes),
            )
        };
        let mut changes = Changes::default();
        for (i, (session, user)) in closes.iter().enumerate() {
            match self.close(*user, *session).await {
                Ok(v) => changes.vacated.extend(v),
                Err(e) => {
                    self.retry().closes.extend_from_slice(&closes[i..]);
                    return Err(e);
                }
            }
        }
        if !resync {
            return Ok(changes);
        }
        let snapshot: Vec<(SessionId, UserId)> =
            self.local().iter().map(|(s, u)| (*s, *u)).collect();
        for (session, user) in &snapshot {
            match self.open(*user, *session, None).await {
                // Announced by the caller, with the threads read from the database.
                Ok(Some(v)) => changes.online.push((*user, v)),
                Ok(None) => {}
                Err(e) => {
                    self.retry().resync = true;
                    return Err(e);
                }
            }
        }
        // A session that closed while we re-registered it may have been added back after its
        // own close ran: close it again (a close of a session that is not there is a no-op).
        let gone: Vec<(SessionId, UserId)> = {
            let local = self.local();
            snapshot
                .into_iter()
                .filter(|(s, _)| !local.contains_key(s))
                .collect()
        };
        for (session, user) in gone {
            match self.close(user, session).await {
                Ok(v) => changes.vacated.extend(v),
                Err(e) => {
                    self.retry().closes.push((session, user));
                    return Err(e);
                }
            }
        }
        Ok(changes)
    }
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn session_opened(
        &self,
        user: UserId,
        session: SessionId,
        event: Option<&str>,
    ) -> Result<Option<u64>, PresenceError> {
        self.local().insert(session, user);
        self.open(user, session, event).await.inspect_err(|_| {
            self.retry().resync = true;
        })
    }

    async fn announce_online(
        &self,
        user: UserId,
        version: u64,
        event: &str,
    ) -> Result<bool, PresenceError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.announce.prepare_invoke();
        inv.key(self.keys.user_presence(user))
            .key(self.keys.user_sessions(user))
            .key(&self.log.0)
            .arg(version)
            .arg(&self.channel)
            .arg(event)
            .arg(self.log.1);
        let done: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(done == 1)
    }

    async fn session_closed(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<Vacated>, PresenceError> {
        // Removed from the local list first: see `resync` for why the order matters.
        self.local().remove(&session);
        self.close(user, session).await.inspect_err(|_| {
            self.retry().closes.push((session, user));
        })
    }

    async fn settle_offline(
        &self,
        user: UserId,
        version: u64,
        event: Option<&str>,
    ) -> Result<Settled, PresenceError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(self.keys.user_sessions(user))
            .key(self.keys.user_presence(user))
            .key(self.keys.presence_pending())
            .key(&self.log.0)
            .arg(user.to_string())
            .arg(version)
            .arg(&self.channel)
            .arg(event.unwrap_or(""))
            .arg(self.log.1);
        let r: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(match r {
            0 => Settled::Offline,
            ms if ms > 0 => Settled::NotYet(Duration::from_millis(ms.unsigned_abs())),
            _ => Settled::Moot,
        })
    }

    async fn heartbeat(&self) -> Result<Changes, PresenceError> {
        let left = self.left.lock().await;
        if *left {
            return Ok(Changes::default());
        }
        let existed: i64 = {
            let mut conn = self.conn().await?;
            let mut inv = self.scripts.beat.prepare_invoke();
            inv.key(self.keys.node_alive(&self.node))
                .key(self.keys.nodes())
                .arg(&self.node)
                .arg(self.ttl_ms);
            inv.invoke_async(&mut conn).await.map_err(err)?
        };
        let changes = self.resync(existed == 0).await?;
        drop(left);
        Ok(changes)
    }

    async fn sweep_dead_nodes(&self) -> Result<Vec<Vacated>, PresenceError> {
        self.sweep("dead").await
    }

    async fn overdue(&self, slack: Duration) -> Result<Vec<Vacated>, PresenceError> {
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.overdue.prepare_invoke();
        inv.key(self.keys.presence_pending())
            .arg(millis(slack))
            .arg(OVERDUE_BATCH)
            .arg(self.keys.user_sessions_prefix())
            .arg(self.keys.user_presence_prefix());
        let vals: Vec<Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(vacated_list(&vals))
    }

    async fn clear_node(&self) -> Result<Vec<Vacated>, PresenceError> {
        self.sweep("own").await
    }

    async fn leave(&self) -> Result<(), PresenceError> {
        let mut left = self.left.lock().await;
        *left = true;
        let mut conn = self.conn().await?;
        redis::pipe()
            .del(self.keys.node_alive(&self.node))
            .ignore()
            .zrem(self.keys.nodes(), &self.node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }

    async fn statuses(&self, users: &[UserId]) -> Result<Vec<UserPresence>, PresenceError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for u in users {
            pipe.hlen(self.keys.user_sessions(*u))
                .zscore(self.keys.presence_pending(), u.to_string())
                .hget(self.keys.user_presence(*u), "ls");
        }
        let vals: Vec<Value> = pipe.query_async(&mut conn).await.map_err(err)?;
        let now = vals
            .first()
            .and_then(|v| <(i64, i64)>::from_redis_value(v).ok())
            .map_or(0, |(s, us)| s * 1000 + us / 1000);
        let rest = vals.get(1..).unwrap_or_default();
        Ok(users
            .iter()
            .zip(rest.chunks_exact(3))
            .map(|(u, c)| {
                let sessions = i64::from_redis_value(&c[0]).unwrap_or(0);
                let due = Option::<f64>::from_redis_value(&c[1]).ok().flatten();
                let last_seen = Option::<i64>::from_redis_value(&c[2]).ok().flatten();
                // Within the grace period a user still counts as online: no event said
                // otherwise, and a reconnect will not say anything either.
                let online = sessions > 0 || due.is_some_and(|d| d > now as f64);
                answer(*u, online, last_seen)
            })
            .collect())
    }
}
