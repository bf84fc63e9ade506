//! Redis membership mirror: `threads:{user}` and `members:{thread}` sets. A user's set carries
//! a `-` sentinel once warmed from Postgres, so "no threads" and "unknown" differ; it expires
//! after an hour so any drift is bounded. It may be early but is never trusted alone: whoever
//! reads it checks membership against the database. (Connects no longer read it — they read
//! the user's threads from Postgres, batched across connects — but still warm it.)
//!
//! Every connect warms its user's entry; concurrent connects share one `MULTI … EXEC` (see
//! [`crate::coalesce`]) instead of a round trip each.

use super::{Directory, DirectoryError};
use crate::coalesce::Coalescer;
use crate::keys::Keys;
use crate::redis_shared::{SharedConn, SharedRedis};
use confab_protocol::{ThreadId, UserId};
use deadpool_redis::Pool;
use std::collections::HashMap;

const SENTINEL: &str = "-";
const WARM_TTL_SECS: i64 = 3600;

/// A user and the threads to put into their entry.
type Warm = (UserId, Vec<ThreadId>);

/// Mirror in Redis.
pub struct RedisDirectory {
    redis: SharedRedis,
    keys: Keys,
    warms: Coalescer<Warm, ()>,
}

impl RedisDirectory {
    /// A directory over a connection shared from `pool`. Must be called inside a tokio runtime
    /// (it starts the task that batches warms).
    pub fn new(pool: Pool, keys: Keys) -> Self {
        let redis = SharedRedis::new(pool);
        let (r, k) = (redis.clone(), keys.clone());
        let warms = Coalescer::new(move |batch: Vec<Warm>| {
            let (redis, keys) = (r.clone(), k.clone());
            async move { warm_all(&redis, &keys, batch).await }
        });
        Self { redis, keys, warms }
    }

    async fn conn(&self) -> Result<SharedConn, DirectoryError> {
        connect(&self.redis).await
    }
}

/// A connection from the shared one (also used by the warm batches, which hold no `self`).
async fn connect(redis: &SharedRedis) -> Result<SharedConn, DirectoryError> {
    redis.get().await.map_err(|e| DirectoryError(e.to_string()))
}

fn err(e: redis::RedisError) -> DirectoryError {
    DirectoryError(e.to_string())
}

/// Warm several users' entries in one transaction.
async fn warm_all(
    redis: &SharedRedis,
    keys: &Keys,
    batch: Vec<Warm>,
) -> Result<HashMap<Warm, ()>, DirectoryError> {
    let mut conn = connect(redis).await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (user, threads) in &batch {
        let key = keys.user_threads(*user);
        let mut members: Vec<String> = threads.iter().map(|t| t.to_string()).collect();
        members.push(SENTINEL.into());
        // A union, not a replacement: an add that lands between our database read and this
        // write must not be wiped. Extra (stale) entries are harmless — joins verify
        // membership against the database — and the TTL bounds how long they linger.
        pipe.sadd(&key, members)
            .ignore()
            .expire(&key, WARM_TTL_SECS)
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await.map_err(err)?;
    Ok(batch.into_iter().map(|w| (w, ())).collect())
}

#[async_trait::async_trait]
impl Directory for RedisDirectory {
    async fn add_members(&self, thread: ThreadId, users: &[UserId]) -> Result<(), DirectoryError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.sadd(
            self.keys.thread_members(thread),
            users.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        )
        .ignore();
        for u in users {
            // SADD on a cold (missing) key creates it without the sentinel, which still reads
            // as cold: correct either way.
            pipe.sadd(self.keys.user_threads(*u), thread.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(err)
    }

    async fn remove_member(&self, thread: ThreadId, user: UserId) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .srem(self.keys.thread_members(thread), user.to_string())
            .ignore()
            .srem(self.keys.user_threads(user), thread.to_string())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }

    async fn user_threads(&self, user: UserId) -> Result<Option<Vec<ThreadId>>, DirectoryError> {
        let mut conn = self.conn().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.user_threads(user))
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        if !members.iter().any(|m| m == SENTINEL) {
            return Ok(None);
        }
        Ok(Some(
            members
                .iter()
                .filter(|m| *m != SENTINEL)
                .filter_map(|m| m.parse().ok())
                .collect(),
        ))
    }

    async fn warm_user(&self, user: UserId, threads: &[ThreadId]) -> Result<(), DirectoryError> {
        match self.warms.get((user, threads.to_vec())).await {
            Ok(_) => Ok(()),
            // The batch failed (Redis unreachable, say); this user's entry may be cold, which
            // is always safe (see the module docs). Said once, by each caller.
            Err(_) => Err(DirectoryError("mirror warm failed".into())),
        }
    }

    async fn forget_user(&self, user: UserId) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(self.keys.user_threads(user))
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }
}
