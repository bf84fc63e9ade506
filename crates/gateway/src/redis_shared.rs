//! One multiplexed Redis connection shared by all of a component's concurrent commands.
//!
//! Why not a pool checkout per command: deadpool-redis checks every connection it hands out
//! with an `UNWATCH` + `PING` round trip, and presence and the membership mirror check out a
//! connection for each command — measured at ~3.9 extra round trips per WebSocket connect.
//! A `MultiplexedConnection` already carries any number of concurrent requests (and writes
//! the ones that are ready together), so it is taken out of the pool once and cloned per
//! command. A command that fails on a broken or silent connection drops it, and the next one
//! takes a fresh connection from the pool (which checks or creates it).

use deadpool_redis::Pool;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A command that takes longer than this is treated as a dead connection (a frozen server or
/// network): the caller gets an error, and the connection is replaced.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool's connection, shared (see the module docs).
#[derive(Clone)]
pub struct SharedRedis {
    pool: Pool,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRedis").finish_non_exhaustive()
    }
}

impl SharedRedis {
    /// Share connections of `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// A handle for the next command(s): the shared connection, taken from the pool first if
    /// there is none.
    pub async fn get(&self) -> Result<SharedConn, deadpool_redis::PoolError> {
        if let Some(conn) = self.slot().clone() {
            return Ok(self.handle(conn));
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await?);
        let mut slot = self.slot();
        // Another command may have installed one meanwhile; keep that one.
        let conn = slot.get_or_insert(conn).clone();
        drop(slot);
        Ok(self.handle(conn))
    }

    fn handle(&self, conn: MultiplexedConnection) -> SharedConn {
        SharedConn {
            conn,
            owner: self.current.clone(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One user's handle on the shared connection; use it as any async Redis connection.
pub struct SharedConn {
    conn: MultiplexedConnection,
    owner: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl SharedConn {
    /// After an error that means the connection is gone, stop sharing it.
    fn check<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        result
    }
}

/// The text of [`timed_out`]'s error (the broker tells a timeout from a refusal by it).
pub(crate) const TIMED_OUT: &str = "redis command timed out";

fn timed_out() -> RedisError {
    RedisError::from((ErrorKind::IoError, TIMED_OUT))
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = tokio::time::timeout(COMMAND_TIMEOUT, self.conn.req_packed_command(cmd))
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            self.check(r)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = tokio::time::timeout(
                COMMAND_TIMEOUT,
                self.conn.req_packed_commands(cmd, offset, count),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out()));
            self.check(r)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
