//! Redis pub/sub broker: ONE pub/sub connection per node (never one per socket), a reader task
//! that reconnects with exponential backoff and full jitter and resubscribes everything, a
//! liveness probe that catches a connection which is open but no longer delivering, and a
//! publisher task that pipelines queued publishes over a shared connection.

use super::control_log;
use super::{BoxFuture, Broker, BrokerError, Inbound};
use crate::metrics::Metrics;
use crate::redis_shared::SharedRedis;
use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use redis::FromRedisValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisBrokerOptions {
    /// `redis://…`.
    pub url: String,
    /// Always subscribed: the control channel.
    pub control_channel: String,
    /// Always subscribed: this node's probe channel.
    pub probe_channel: String,
    /// Reconnect backoff floor.
    pub reconnect_min: Duration,
    /// Reconnect backoff ceiling.
    pub reconnect_max: Duration,
    /// Probe interval.
    pub probe_interval: Duration,
    /// Probe deadline.
    pub probe_timeout: Duration,
    /// Publishes queued before new ones are dropped (and left to gap repair).
    pub publish_queue: usize,
    /// The stream that logs control-channel announcements (see `control_log`).
    pub control_log: String,
    /// About how many announcements the log keeps.
    pub control_log_max: usize,
    /// How long a confirmed publish waits for Redis's answer.
    pub command_timeout: Duration,
}

/// A command's error; a timeout of the shared connection (see `redis_shared`) is reported as
/// [`BrokerError::timed_out`]: the command may still have run.
/// A command's error. The connection was up when the command was written (a failure to get
/// one is not mapped here), so an I/O error other than a refused connect may have come after
/// Redis ran it: its outcome is unknown, like a timeout's.
fn broker_error(e: redis::RedisError) -> BrokerError {
    if e.is_timeout() || e.to_string().contains(crate::redis_shared::TIMED_OUT) {
        BrokerError::timed_out()
    } else if e.is_connection_dropped() || (e.is_io_error() && !e.is_connection_refusal()) {
        BrokerError::unanswered(e)
    } else {
        BrokerError(e.to_string())
    }
}

/// `publish`, failing with [`BrokerError::timed_out`] past `limit`.
fn bounded(
    limit: Duration,
    publish: impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static,
) -> BoxFuture<Result<(), BrokerError>> {
    Box::pin(async move {
        tokio::time::timeout(limit, publish)
            .await
            .unwrap_or_else(|_| Err(BrokerError::timed_out()))
    })
}

/// `step`, failing with [`BrokerError::timed_out`] past [`COMMAND_TIMEOUT`]: the reader's own
/// commands, which must not hang it on a connection that stopped answering.
async fn within<T>(step: impl std::future::Future<Output = T>) -> Result<T, BrokerError> {
    tokio::time::timeout(COMMAND_TIMEOUT, step)
        .await
        .map_err(|_| BrokerError::timed_out())
}

/// Control-log entries read per round trip when looking one up.
const LOG_PAGE: usize = 500;

/// Longest wait for a SUBSCRIBE/UNSUBSCRIBE reply before the connection counts as stalled.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

enum Command {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(Vec<String>),
}

/// Handle to the broker's tasks.
pub struct RedisBroker {
    // Unbounded on purpose: subscription commands are control-plane (one per thread that gains
    // its first or loses its last local session), they must be enqueued under the hub's lock
    // without awaiting, and their order matters. Chat traffic never goes through it.
    commands: mpsc::UnboundedSender<Command>,
    publishes: mpsc::Sender<(String, Bytes)>,
    healthy: Arc<AtomicBool>,
    cancel: CancellationToken,
    metrics: Metrics,
    /// Publishes share one connection (see `redis_shared`): no pool check per publish.
    redis: SharedRedis,
    /// The control log's key and its length.
    log: (String, usize),
    /// Bound on a confirmed publish: the shared connection's own (5 s per command) is longer
    /// than a leave or logout should wait on each of its attempts.
    command_timeout: Duration,
}

impl RedisBroker {
    /// Start the reader and publisher tasks. Returns once the first connection is up, so a
    /// node does not report ready (or accept sessions) on a broker that never connected.
    pub async fn start(
        opts: RedisBrokerOptions,
        pool: deadpool_redis::Pool,
        inbound: Weak<dyn Inbound>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, BrokerError> {
        let client =
            redis::Client::open(opts.url.as_str()).map_err(|e| BrokerError(e.to_string()))?;
        // Fail fast at start-up when Redis is unreachable (no lazy pool hiding an outage).
        let first = tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError("timed out connecting to redis".into()))?
            .map_err(|e| BrokerError(e.to_string()))?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (pub_tx, pub_rx) = mpsc::channel(opts.publish_queue);
        let healthy = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let reader = Reader {
            client,
            opts: opts.clone(),
            inbound,
            commands: cmd_rx,
            wanted: HashSet::new(),
            healthy: healthy.clone(),
            metrics: metrics.clone(),
            pool: pool.clone(),
            cancel: cancel.clone(),
            control_last: None,
            control_seen: control_log::RecentIds::new(opts.control_log_max),
            control_gap: false,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(reader.run(Some(first), ready_tx));
        let redis = SharedRedis::new(pool.clone());
        tokio::spawn(publisher(
            redis.clone(),
            pub_rx,
            metrics.clone(),
            cancel.clone(),
        ));
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        Ok(Arc::new(Self {
            log: (opts.control_log.clone(), opts.control_log_max),
            command_timeout: opts.command_timeout,
            commands: cmd_tx,
            publishes: pub_tx,
            healthy,
            cancel,
            metrics,
            redis,
        }))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, channel: String, payload: Bytes) {
        if self.publishes.try_send((channel, payload)).is_err() {
            self.metrics.publish_failures.inc();
        }
    }

    fn publish_logged(
        &self,
        channel: String,
        payload: Bytes,
    ) -> BoxFuture<Result<(), BrokerError>> {
        let shared = self.redis.clone();
        let (log, max) = self.log.clone();
        bounded(self.command_timeout, async move {
            let mut conn = shared.get().await.map_err(|e| BrokerError(e.to_string()))?;
            redis::Script::new(control_log::APPEND_AND_PUBLISH)
                .key(&log)
                .arg(&channel)
                .arg(payload.as_ref())
                .arg(max.max(1))
                .invoke_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(broker_error)
        })
    }

    fn was_logged(&self, event_id: u128) -> BoxFuture<Result<bool, BrokerError>> {
        let shared = self.redis.clone();
        let (log, max) = self.log.clone();
        Box::pin(async move {
            let mut conn = shared.get().await.map_err(|e| BrokerError(e.to_string()))?;
            // Newest first, a page at a time: the attempt looked for was made moments ago.
            let mut before = String::from("+");
            let mut read = 0;
            while read < max.max(1) {
                let page: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
                    .arg(&log)
                    .arg(&before)
                    .arg("-")
                    .arg("COUNT")
                    .arg(LOG_PAGE)
                    .query_async(&mut conn)
                    .await
                    .map_err(broker_error)?;
                let Some((last, _)) = page.last() else {
                    return Ok(false);
                };
                before = format!("({last}");
                read += page.len();
                let found = page.iter().any(|(_, fields)| {
                    fields.chunks_exact(2).any(|kv| {
                        kv[0] == b"p" && control_log::event_id_of(&kv[1]) == Some(event_id)
                    })
                });
                if found {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    fn subscribe(&self, channels: Vec<String>) -> oneshot::Receiver<Result<(), BrokerError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Subscribe(_, tx))) =
            self.commands.send(Command::Subscribe(channels, tx))
        {
            let _ = tx.send(Err(BrokerError("broker stopped".into())));
        }
        rx
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        let _ = self.commands.send(Command::Unsubscribe(channels));
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// Publishes in pipelines: whatever is queued when the connection is free goes out in one
/// round trip (one write syscall for many publishes under load).
async fn publisher(
    shared: SharedRedis,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    const MAX_BATCH: usize = 512;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = cancel.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for (channel, payload) in batch.iter() {
            pipe.publish(channel, payload.as_ref()).ignore();
        }
        let result = match shared.get().await {
            Ok(mut conn) => pipe
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            // The messages are stored; every subscribed node's sweep will find the gap.
            tracing::warn!(error = %e, lost = batch.len(), "publish failed");
            metrics.publish_failures.inc_by(batch.len() as u64);
        }
        batch.clear();
    }
}

struct Reader {
    client: redis::Client,
    opts: RedisBrokerOptions,
    inbound: Weak<dyn Inbound>,
    commands: mpsc::UnboundedReceiver<Command>,
    wanted: HashSet<String>,
    healthy: Arc<AtomicBool>,
    metrics: Metrics,
    pool: deadpool_redis::Pool,
    cancel: CancellationToken,
    /// The last control-log entry handled (see `control_log`); `None` until the first
    /// subscription is up.
    control_last: Option<(u64, u64)>,
    /// The event ids of the control announcements handled lately (see `control_log`).
    control_seen: control_log::RecentIds,
    /// The control log was found trimmed past `control_last`, and the replay that found it
    /// has not reached the log's end yet (see `replay_control_log`).
    control_gap: bool,
}

enum Ended {
    Disconnected,
    Stalled,
    Cancelled,
}

impl Reader {
    async fn run(mut self, mut first: Option<redis::aio::PubSub>, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut attempt: u32 = 0;
        loop {
            let conn = match first.take() {
                Some(c) => Ok(c),
                None => {
                    tokio::time::timeout(Duration::from_secs(5), self.client.get_async_pubsub())
                        .await
                        .map_err(|_| "connect timed out".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                }
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    self.healthy.store(false, Ordering::Relaxed);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, attempt, "pub/sub connect failed");
                    if !self.backoff(attempt).await {
                        return;
                    }
                    continue;
                }
            };
            let (mut sink, mut stream) = conn.split();
            let mut all: Vec<String> = vec![
                self.opts.control_channel.clone(),
                self.opts.probe_channel.clone(),
            ];
            all.extend(self.wanted.iter().cloned());
            let mut ok = true;
            for chunk in all.chunks(1000) {
                // Bounded: a connection that accepts bytes but never answers is a stall too.
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "resubscribe failed");
                        ok = false;
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("resubscribe timed out");
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                attempt = attempt.saturating_add(1);
                if !self.backoff(attempt).await {
                    return;
                }
                continue;
            }
            if ready.is_some() {
                // Announcements from now on arrive live; older ones are not this node's. Without
                // this mark a later reconnect would have nothing to read the log back from.
                match self.redis_now().await {
                    Some(now) => self.control_last = Some(now),
                    None => {
                        tracing::warn!("Redis's clock not read (TIME); reconnecting");
                        ok = false;
                    }
                }
            } else if let Err(e) = self.replay_control_log().await {
                // What was announced while this node was not subscribed must be handled before
                // anything new: carrying on would skip it for good (the live announcements that
                // follow move the mark past it), leaving a leaver's or a logged-out user's
                // sessions here in their threads. Try again with a fresh connection.
                tracing::warn!(error = %e, "control log not read back; reconnecting");
                self.metrics.control_replay_failures.inc();
                ok = false;
            }
            if !ok {
                self.healthy.store(false, Ordering::Relaxed);
                attempt = attempt.saturating_add(1);
                if !self.backoff(attempt).await {
                    return;
                }
                continue;
            }
            self.metrics.subscriptions.set(self.wanted.len() as i64);
            self.healthy.store(true, Ordering::Relaxed);
            if let Some(r) = ready.take() {
                let _ = r.send(());
            } else {
                self.metrics.pubsub_reconnects.inc();
                tracing::info!(channels = all.len(), "pub/sub reconnected and resubscribed");
            }
            if let Some(inbound) = self.inbound.upgrade() {
                inbound.on_resubscribed();
            }
            let ended = self.pump(&mut sink, &mut stream).await;
            self.healthy.store(false, Ordering::Relaxed);
            match ended {
                Ended::Cancelled => return,
                Ended::Stalled => {
                    self.metrics.pubsub_stalls.inc();
                    tracing::warn!("pub/sub stalled (probe not echoed); reconnecting");
                }
                Ended::Disconnected => tracing::warn!("pub/sub connection lost; reconnecting"),
            }
            attempt = 1;
            if !self.backoff(attempt).await {
                return;
            }
        }
    }

    /// Whether a control announcement with this log id is new here (and remember it). Those
    /// published without the log always are.
    fn first_time(&mut self, id: Option<(u64, u64)>) -> bool {
        let Some(id) = id else { return true };
        if self.control_last.is_some_and(|last| id <= last) {
            return false;
        }
        self.control_last = Some(id);
        true
    }

    /// Redis's clock as a log id: every entry appended from now on is above it.
    async fn redis_now(&self) -> Option<(u64, u64)> {
        let read = async {
            let mut conn = self.pool.get().await.ok()?;
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut *conn).await.ok()?;
            Some((secs * 1000 + micros / 1000, 0))
        };
        within(read).await.ok().flatten()
    }

    /// Hand the inbound, in order, the control announcements logged after the last one handled.
    /// An error means the log could not be read to its end; what was handed over stays handled
    /// (the mark moved past it), so a retry reads on from there.
    async fn replay_control_log(&mut self) -> Result<(), BrokerError> {
        let Some((ms, seq)) = self.control_last else {
            return Ok(());
        };
        let Some(inbound) = self.inbound.upgrade() else {
            return Ok(());
        };
        let mut conn = within(self.pool.get())
            .await?
            .map_err(|e| BrokerError(e.to_string()))?;
        // Kept across a failed replay: the entries read before it move the mark past the
        // trimmed stretch, and the retry could no longer tell.
        self.control_gap |= self.log_trimmed_past((ms, seq), &mut conn).await?;
        let mut after = format!("{ms}-{seq}");
        loop {
            // Entries as `[id, [field, value, …]]`; the event is the value of field `p`.
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.opts.control_log)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(1000);
            let read = cmd.query_async::<Vec<(String, Vec<Vec<u8>>)>>(&mut *conn);
            let entries = within(read).await?.map_err(broker_error)?;
            if entries.is_empty() {
                break;
            }
            for (id, fields) in entries {
                let event = fields
                    .chunks_exact(2)
                    .find(|kv| kv[0] == b"p")
                    .map(|kv| kv[1].as_slice());
                let published = event.and_then(|e| control_log::as_published(&id, e));
                let fresh = self.first_time(control_log::parse_id(&id))
                    && event
                        .is_some_and(|e| self.control_seen.first_time(control_log::event_id_of(e)));
                after = id;
                if let (Some(p), true) = (published, fresh) {
                    self.metrics.control_replayed.inc();
                    inbound.on_message(&self.opts.control_channel, p);
                }
            }
        }
        if std::mem::take(&mut self.control_gap) {
            self.metrics.control_lost.inc();
            tracing::warn!(
                max = self.opts.control_log_max,
                "the control log was trimmed past what this node missed; restarting its sessions"
            );
            inbound.on_control_lost();
        }
        Ok(())
    }

    /// Whether the control log has lost entries logged after `last` (the last one this node
    /// handled, or Redis's clock when it first subscribed): the oldest entry kept is newer
    /// than `last`, and the log has been trimmed at all. A log that Redis lost in a restart
    /// and that has not been trimmed since holds everything announced after the restart —
    /// before it, nothing was logged that this node could have read.
    async fn log_trimmed_past(
        &self,
        last: (u64, u64),
        conn: &mut deadpool_redis::Connection,
    ) -> Result<bool, BrokerError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.opts.control_log);
        let info = within(cmd.query_async::<HashMap<String, redis::Value>>(&mut **conn)).await?;
        let Ok(info) = info else {
            return Ok(false); // no log (nothing announced since Redis started), or a Redis without it
        };
        let number = |k: &str| info.get(k).and_then(|v| u64::from_redis_value(v).ok());
        let oldest = info
            .get("recorded-first-entry-id")
            .and_then(|v| String::from_redis_value(v).ok())
            .and_then(|id| control_log::parse_id(&id));
        Ok(match (oldest, number("entries-added"), number("length")) {
            (Some(oldest), Some(added), Some(length)) => oldest > last && added > length,
            _ => false,
        })
    }

    /// Sleep with exponential backoff and full jitter, still taking subscription commands (so
    /// sessions are never blocked by an outage). Returns false when cancelled.
    async fn backoff(&mut self, attempt: u32) -> bool {
        let cap = self.opts.reconnect_max.as_millis() as u64;
        let base = self.opts.reconnect_min.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.min(16)).min(cap).max(1);
        let wait = Duration::from_millis(rand::thread_rng().gen_range(0..=exp));
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                _ = self.cancel.cancelled() => return false,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(chs, ack)) => {
                        self.wanted.extend(chs);
                        let _ = ack.send(Err(BrokerError("redis unavailable".into())));
                    }
                    Some(Command::Unsubscribe(chs)) => {
                        for c in chs { self.wanted.remove(&c); }
                    }
                },
            }
        }
    }

    async fn pump(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        stream: &mut redis::aio::PubSubStream,
    ) -> Ended {
        let mut probe = tokio::time::interval(self.opts.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_echo = Instant::now();
        let probe_channel = self.opts.probe_channel.clone();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ended::Disconnected };
                    let channel = msg.get_channel_name();
                    if channel == probe_channel {
                        last_echo = Instant::now();
                        continue;
                    }
                    if channel == self.opts.control_channel {
                        let payload = msg.get_payload_bytes();
                        if !self.first_time(control_log::id_of(payload))
                            || !self.control_seen.first_time(control_log::event_id_of(payload))
                        {
                            continue;
                        }
                    }
                    if let Some(inbound) = self.inbound.upgrade() {
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        inbound.on_message(channel, payload);
                    }
                }
                n = self.commands.recv_many(&mut batch, 1024) => {
                    if n == 0 { return Ended::Cancelled; }
                    match tokio::time::timeout(COMMAND_TIMEOUT, self.apply(sink, &mut batch)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "subscription command failed");
                            return Ended::Disconnected;
                        }
                        Err(_) => return Ended::Stalled,
                    }
                }
                _ = probe.tick() => {
                    if last_echo.elapsed() > self.opts.probe_timeout {
                        return Ended::Stalled;
                    }
                    let pool = self.pool.clone();
                    let ch = probe_channel.clone();
                    tokio::spawn(async move {
                        if let Ok(mut conn) = pool.get().await {
                            let _: Result<(), _> = redis::cmd("PUBLISH").arg(&ch).arg("p")
                                .query_async(&mut *conn).await;
                        }
                    });
                }
            }
        }
    }

    /// Apply queued commands, batched: consecutive subscribes go out as one SUBSCRIBE.
    async fn apply(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        batch: &mut Vec<Command>,
    ) -> redis::RedisResult<()> {
        let mut subs: Vec<String> = Vec::new();
        let mut acks = Vec::new();
        let mut result = Ok(());
        for cmd in batch.drain(..) {
            match cmd {
                Command::Subscribe(chs, ack) => {
                    for c in chs {
                        if self.wanted.insert(c.clone()) {
                            subs.push(c);
                        }
                    }
                    acks.push(ack);
                }
                Command::Unsubscribe(chs) => {
                    // Flush pending subscribes first to keep the order.
                    if result.is_ok() && !subs.is_empty() {
                        result = sink.subscribe(std::mem::take(&mut subs)).await;
                    }
                    let gone: Vec<String> =
                        chs.into_iter().filter(|c| self.wanted.remove(c)).collect();
                    if result.is_ok() && !gone.is_empty() {
                        result = sink.unsubscribe(gone).await;
                    }
                }
            }
        }
        if result.is_ok() && !subs.is_empty() {
            result = sink.subscribe(subs).await;
        }
        self.metrics.subscriptions.set(self.wanted.len() as i64);
        for ack in acks {
            let _ = ack.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| BrokerError(e.to_string())),
            );
        }
        result
    }
}
