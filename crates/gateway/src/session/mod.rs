//! One WebSocket session: a single `select!` over inbound frames, the outbound queue, the
//! client's sends waiting for their commits (see `sending`), the heartbeat and close requests.
//! The loop returns why it ended; cleanup runs once after it.
//!
//! Delivery guarantee per session: for each thread it keeps a cursor (the last `seq` written).
//! A message at or below the cursor is a duplicate and dropped; one above `cursor + 1` means a
//! hole, filled from the database before the message is written. So a session writes every
//! thread in order without holes or duplicates whatever the broker does.

mod dispatch;
mod features;
mod sending;

use crate::auth::AuthUser;
use crate::hub::{Outbound, SessionHandle, SessionShared};
use crate::mailbox::{Mailbox, Port};
use crate::outbox::Outbox;
use crate::ratelimit::TokenBucket;
use crate::state::AppState;
use actix_ws::{CloseCode, Message as WsMessage, MessageStream, ProtocolError, TryText};
use bytestring::ByteString;
use confab_protocol::{CloseReason, ServerFrame, SessionId, ThreadId};
use foldhash::{HashMap, HashMapExt};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options the client chose at the upgrade.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions {
    /// Hold live delivery until the client's `resume` frame (or a timeout), so replayed
    /// messages come before live ones.
    pub hold_for_resume: bool,
}

/// How long the close frame may wait for room in a stalled connection's buffers.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How many queued deliveries a session writes in one turn of its loop before it looks at its
/// other work (client frames, answers, the heartbeat) again.
const DELIVERIES_PER_TURN: usize = 32;

/// How long a session holding for `resume` waits before starting live delivery anyway.
const RESUME_HOLD: Duration = Duration::from_secs(10);

/// A live session's state.
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) auth: AuthUser,
    pub(crate) state: Arc<AppState>,
    pub(crate) ws: actix_ws::Session,
    /// Last `seq` written per thread the user is in.
    pub(crate) cursors: HashMap<ThreadId, i64>,
    pub(crate) holding: bool,
    /// Sends waiting for their commit, and frames held behind them.
    pipeline: sending::Pipeline,
    shared: Arc<SessionShared>,
    frames: TokenBucket,
    strikes: u32,
}

/// Why the loop ended, when the peer is already gone (nothing to send).
pub(crate) enum End {
    Close(CloseReason),
    PeerGone,
    /// The start failed before the upgrade was answered: the client gets an HTTP refusal.
    Refused,
}

/// Run a session to completion, on the actix worker that accepted the upgrade. `started` hears
/// whether the session started — registered with the hub, joined to its user's threads,
/// announced, its hello queued — before the upgrade is answered (the handler waits for it).
///
/// Why before the answer: the hello is then queued when the `101` response is written, and both
/// leave in one write — a connect costs the node one send and the client one wake-up fewer,
/// most of what a connect costs the client beyond the TCP handshake. And a node that cannot
/// start a session (its database or Redis unreachable) refuses it the way every other refusal
/// of `/ws` is made — an HTTP status with a JSON body — instead of upgrading only to close.
///
/// Why a task of its own and not the handler's future: actix drops a handler's future when its
/// client goes away, and a start cut short there would leave the session registered and
/// announced with nobody to clean it up. Here the start always finishes, and so does the
/// clean-up: after a failed start (before `started` hears of it), or when nobody is waiting
/// for the answer any more.
pub async fn run(
    state: Arc<AppState>,
    auth: AuthUser,
    ws: actix_ws::Session,
    stream: MessageStream,
    opts: ConnectOptions,
    started: tokio::sync::oneshot::Sender<Result<(), crate::error::Error>>,
) {
    let id = SessionId::new();
    let settings = state.settings.clone();
    let outbox = Arc::new(Outbox::new(settings.session.outbound_queue));
    let shared = Arc::new(SessionShared::default());
    let tag = token_tag(&auth.token_hash);
    // Sessions on actix workers get deliveries through their worker's mailbox (0 turns the
    // hand-off off: the broker's thread then queues to each session directly). A node on one
    // thread has no other thread to hand to: the broker queues to its sessions itself, which
    // saves a lock, a queue and a task turn per delivery (measured, two single-thread nodes at
    // 10,000 msgs/s, 9 paired rounds: node CPU 8.28 → 7.87 s on average, lower in 7 pairs).
    let max = settings.delivery.worker_mailbox_max;
    let mailbox = (max > 0 && !state.single_thread).then(|| Mailbox::current(max));
    let port = Port::new(
        outbox.clone(),
        shared.clone(),
        state.metrics.slow_consumer_disconnects.clone(),
        mailbox,
    );
    let cap = settings.limits.max_sessions_per_user;
    if let Err(held) = state
        .hub
        .register(SessionHandle::new(id, auth.user.id, tag, port), cap)
    {
        state.metrics.connects_refused.inc();
        let _ = started.send(Err(crate::error::Error::RateLimited(format!(
            "this user already has {held} sessions open on this node \
             (limits.max_sessions_per_user = {cap}); close one first"
        ))));
        return;
    }
    state.metrics.connections_open.inc();
    state.metrics.sessions_opened.inc();
    let auth_user = auth.user.id;
    let mut session = Session {
        id,
        auth,
        state: state.clone(),
        ws,
        cursors: HashMap::new(),
        holding: opts.hold_for_resume,
        pipeline: sending::Pipeline::new(auth_user),
        shared,
        frames: TokenBucket::new(settings.limits.frames_per_sec, settings.limits.frames_burst),
        strikes: 0,
    };
    // Start-up and clean-up are boxed so that only while they run do they take memory: an
    // idle session's task is sized by the largest state it can be in, and these hold database
    // and Redis futures (measured with size_of_val: the task went from 11,960 to 5,072 bytes;
    // with the loop's handlers boxed too, `run`'s future is 1,824 bytes, -Zprint-type-sizes).
    let end = match Box::pin(session.start()).await {
        Err(reason) => {
            outbox.close();
            Box::pin(finish(session, state, End::Refused)).await;
            // Cleaned up before the client hears of it.
            let _ = started.send(Err(crate::error::Error::Unavailable(format!(
                "cannot start a session: {}",
                reason.description()
            ))));
            return;
        }
        Ok(()) => {
            if started.send(Ok(())).is_err() {
                // The client left before its upgrade was answered.
                End::PeerGone
            } else {
                session.run_loop(&outbox, stream).await
            }
        }
    };
    // Whatever the hub still hands over is for nobody now.
    outbox.close();
    Box::pin(finish(session, state, end)).await;
}

/// Clean-up after the loop, exactly once.
async fn finish(mut session: Session, state: Arc<AppState>, end: End) {
    let id = session.id;
    if let End::Close(_) = end {
        // Sends already taken get their answer before the close (a drain promises it).
        let _ = tokio::time::timeout(CLOSE_WAIT, session.flush_sends()).await;
    }
    state.hub.unregister(id);
    let user = session.auth.user.id;
    crate::presence::Announcer::new(&state)
        .closed(user, id)
        .await;
    state.metrics.connections_open.dec();
    let code = match &end {
        End::Close(r) => r.code(),
        End::PeerGone => 1006,
        End::Refused => {
            // Never upgraded: a refused connect, not a disconnect.
            state.metrics.connects_refused.inc();
            return;
        }
    };
    state
        .metrics
        .disconnects
        .with_label_values(&[&code.to_string()])
        .inc();
    if let End::Close(reason) = end {
        // Bounded: a client that stopped reading must not pin this task forever.
        let close = session.ws.close(Some(actix_ws::CloseReason {
            code: CloseCode::from(reason.code()),
            description: Some(reason.description().to_owned()),
        }));
        let _ = tokio::time::timeout(CLOSE_WAIT, close).await;
    }
}

fn token_tag(hash: &str) -> u64 {
    u64::from_str_radix(hash.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

impl Session {
    /// Join the user's threads (subscribed before the heads are read: see `Hub::join`), then
    /// greet the client.
    async fn start(&mut self) -> Result<(), CloseReason> {
        let user = self.auth.user.id;
        let threads = self.state.chat.user_threads(user).await.map_err(|e| {
            tracing::warn!(error = %e, "session start failed");
            CloseReason::TryAgainLater
        })?;
        // The mirror's warm is a Redis write nothing here depends on: beside the join it
        // costs a connect no round trip of its own.
        let (heads, ()) = tokio::join!(
            self.state.hub.join(self.id, &threads),
            self.state.chat.warm_mirror(user, &threads)
        );
        let heads = heads.map_err(|e| {
            tracing::warn!(error = %e, "session start failed");
            CloseReason::TryAgainLater
        })?;
        self.cursors = heads;
        crate::presence::Announcer::new(&self.state)
            .opened(user, self.id, self.cursors.keys().copied().collect())
            .await;
        let s = &self.state.settings;
        let hello = ServerFrame::Hello {
            protocol: confab_protocol::PROTOCOL_VERSION,
            session_id: self.id,
            user: self.auth.user.clone(),
            node_id: self.state.node_id.clone(),
            heartbeat_ms: s.session.heartbeat_interval_ms,
            max_frame_bytes: s.limits.max_frame_bytes,
        };
        self.reply(&hello).await.map_err(|_| CloseReason::Normal)
    }

    async fn run_loop(&mut self, outbox: &Outbox, mut stream: MessageStream) -> End {
        let shared = self.shared.clone();
        let s = self.state.settings.clone();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(
            s.session.heartbeat_interval_ms.max(10),
        ));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let timeout = Duration::from_millis(s.session.heartbeat_timeout_ms);
        let max_inflight = s.session.max_inflight_sends.max(1);
        let mut last_heard = Instant::now();
        // Boxed, and only while the session holds: inline, the timer would size every
        // session's task for a wait most sessions never make.
        let mut hold_until = self
            .holding
            .then(|| Box::pin(tokio::time::sleep(RESUME_HOLD)));
        // The flush window (`session.write_delay_ms`): when something is queued, wait, then
        // write all that queued meanwhile in one turn — the frames reach the socket's body
        // together and leave in one write (one system call, one wake-up of the connection's
        // task, instead of one per frame). The window's timer is boxed and exists only while a
        // window is open, like `hold_until`. Without a delay the session always flushes.
        let write_delay = Duration::from_millis(s.session.write_delay_ms);
        let mut flushing = write_delay.is_zero();
        let mut window: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if !self.holding && hold_until.is_some() {
                hold_until = None; // released by the client's `resume`
            }
            // Unbiased on purpose: a client that keeps sending must not starve its own
            // deliveries into a slow-consumer close, and a busy outbound queue must not starve
            // the client's frames, pongs or the answers to its sends either.
            tokio::select! {
                reason = shared.closed() => return End::Close(reason),
                // Most deliveries and answers go straight into the socket's channel without
                // waiting (`try_deliver`, `try_finish_send`): no future at all. The rest (a
                // full channel, a hole to fill, frames held behind a send) take the async
                // handlers, boxed: inline, every idle session's task would be sized for them
                // (the loop's future went from 2,096 to 944 bytes, -Zprint-type-sizes).
                // What queued meanwhile follows in the same turn, up to a budget, before the
                // other branches get their turn again.
                out = outbox.recv(), if !self.holding && flushing => {
                    let mut next = Some(out);
                    let mut budget = DELIVERIES_PER_TURN;
                    while let Some(out) = next.take() {
                        match self.try_deliver(out) {
                            Ok(None) => {}
                            Ok(Some(out)) => {
                                if let Err(end) = Box::pin(self.route(out)).await {
                                    return end;
                                }
                            }
                            Err(end) => return end,
                        }
                        budget -= 1;
                        if budget > 0 {
                            next = outbox.try_recv();
                        }
                    }
                    // With a window, flush until the queue is empty (more than a turn's budget
                    // may have queued in it); what queues after that opens the next window.
                    if !write_delay.is_zero() && outbox.is_empty() {
                        flushing = false;
                    }
                }
                // The first frame queued for a closed window opens it; the frames are only
                // looked at, not taken, so pushes into the non-empty queue wake nobody.
                _ = outbox.ready(), if !self.holding && !flushing && window.is_none() => {
                    window = Some(Box::pin(tokio::time::sleep(write_delay)));
                }
                _ = async { if let Some(w) = window.as_mut() { w.await } }, if window.is_some() => {
                    window = None;
                    flushing = true;
                }
                reply = self.pipeline.next_reply(), if self.pipeline.len() > 0 => {
                    if let Some(reply) = reply {
                        match self.try_finish_send(reply) {
                            Ok(None) => {}
                            Ok(Some(answer)) => {
                                if let Err(end) = Box::pin(self.write_answer(answer)).await {
                                    return end;
                                }
                            }
                            Err(end) => return end,
                        }
                    }
                }
                // With max_inflight sends waiting, stop reading: that is the client's backpressure.
                msg = stream.next(), if self.pipeline.len() < max_inflight => {
                    last_heard = Instant::now();
                    let result = match msg {
                        None => return End::PeerGone,
                        // A well-formed `send` (most of what a busy client sends) is taken
                        // without waiting: `start_send` only queues it. Anything else is
                        // boxed: the client-frame handlers (history, reads, reactions…) hold
                        // database futures; inline they would size every idle session's task
                        // for the largest of them. One allocation per such frame instead.
                        Some(Ok(m)) => match self.try_take_send(m) {
                            None => Ok(()),
                            Some(m) => Box::pin(self.on_ws_message(m)).await,
                        },
                        Some(Err(e)) => Err(protocol_error_reason(&e)),
                    };
                    if let Err(end) = result {
                        return end;
                    }
                }
                _ = async { if let Some(h) = hold_until.as_mut() { h.await } },
                    if self.holding && hold_until.is_some() => {
                    self.holding = false;
                }
                _ = heartbeat.tick() => {
                    // Not reading while sends wait is our doing, not the client's silence.
                    if last_heard.elapsed() > timeout && self.pipeline.len() < max_inflight {
                        return End::Close(CloseReason::HeartbeatTimeout);
                    }
                    // The token was checked once, at the upgrade; a session must not outlive
                    // it. Checked here rather than with a timer of its own, which would grow
                    // every idle session's task for an event weeks away: the session closes
                    // within one heartbeat interval of the expiry.
                    if chrono::Utc::now() >= self.auth.expires_at {
                        return End::Close(CloseReason::PolicyViolation);
                    }
                    if self.ws.ping(b"").await.is_err() {
                        return End::PeerGone;
                    }
                }
            }
        }
    }

    async fn on_ws_message(&mut self, msg: WsMessage) -> Result<(), End> {
        match msg {
            WsMessage::Text(text) => self.on_text(text).await,
            WsMessage::Binary(_) => {
                self.error(
                    None,
                    confab_protocol::ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text frames",
                )
                .await
            }
            WsMessage::Ping(bytes) => {
                if !self.frames.try_take() {
                    // A ping flood costs a write each; beyond the frame budget they are ignored.
                    return self.strike().await;
                }
                self.ws.pong(&bytes).await.map_err(|_| End::PeerGone)
            }
            WsMessage::Pong(_) | WsMessage::Nop => Ok(()),
            WsMessage::Close(_) => Err(End::Close(CloseReason::Normal)),
            WsMessage::Continuation(_) => {
                self.error(
                    None,
                    confab_protocol::ErrorCode::BadRequest,
                    "fragmented frames are not supported",
                )
                .await
            }
        }
    }

    async fn on_text(&mut self, text: ByteString) -> Result<(), End> {
        let limits = &self.state.settings.limits;
        if text.len() > limits.max_frame_bytes {
            let max = limits.max_frame_bytes;
            return self
                .error(
                    None,
                    confab_protocol::ErrorCode::TooLarge,
                    &format!("frame of {} bytes exceeds {max}", text.len()),
                )
                .await;
        }
        if !self.frames.try_take() {
            let req = dispatch::peek_req(&text);
            self.error(
                req,
                confab_protocol::ErrorCode::RateLimited,
                "too many frames; slow down",
            )
            .await?;
            return self.strike().await;
        }
        self.strikes = 0;
        self.on_frame(&text).await
    }

    async fn strike(&mut self) -> Result<(), End> {
        self.strikes += 1;
        if self.strikes >= self.state.settings.limits.rate_limit_strikes {
            return Err(End::Close(CloseReason::RateLimited));
        }
        Ok(())
    }

    /// Write what the hub handed over, keeping each thread in order without holes.
    async fn deliver(&mut self, out: Outbound) -> Result<(), End> {
        match out {
            Outbound::Seq {
                thread, seq, frame, ..
            } => {
                let Some(&cursor) = self.cursors.get(&thread) else {
                    return Ok(());
                };
                if seq <= cursor {
                    return Ok(());
                }
                if seq > cursor + 1 {
                    // Boxed for the same reason as the client-frame handlers: rare, and large.
                    Box::pin(self.fill_gap(thread, cursor, seq)).await?;
                }
                self.write(frame).await?;
                self.state.metrics.deliveries.inc();
                self.cursors.insert(thread, seq);
                Ok(())
            }
            Outbound::Thread {
                thread,
                exclude,
                frame,
            } => {
                if self.cursors.contains_key(&thread) && exclude != Some(self.auth.user.id) {
                    self.write(frame).await?;
                }
                Ok(())
            }
            Outbound::Direct(frame) => self.write(frame).await,
            Outbound::Joined {
                thread,
                last_seq,
                handed,
            } => {
                let cursor = *self.cursors.entry(thread).or_insert(last_seq);
                if handed > cursor {
                    // Sent after the join but handed out before this session was added (the
                    // message reached the node ahead of the join's announcement): nothing
                    // later may be needed to reveal the hole, so it is read back now.
                    Box::pin(self.fill_gap(thread, cursor, handed + 1)).await?;
                }
                Ok(())
            }
            Outbound::Left { thread } => {
                self.cursors.remove(&thread);
                Ok(())
            }
        }
    }

    /// Write messages `(after, before)` of a thread from the database, a page
    /// (`delivery.repair_page_max`) at a time.
    async fn fill_gap(&mut self, thread: ThreadId, after: i64, before: i64) -> Result<(), End> {
        self.state
            .metrics
            .gap_repairs
            .with_label_values(&["session"])
            .inc();
        let page = self.state.settings.delivery.repair_page_max.max(1);
        let mut after = after;
        loop {
            let msgs = self
                .state
                .store
                .messages_between(thread, after, before, page)
                .await
                .map_err(|e| {
                    // Writing past a hole would break the promise; reconnect-and-resume keeps it.
                    tracing::warn!(error = %e, "session gap fill failed; asking client to resume");
                    End::Close(CloseReason::ServiceRestart)
                })?;
            let full = msgs.len() as u64 >= page;
            for m in msgs {
                let seq = m.seq;
                self.write(ByteString::from(ServerFrame::Message(m).to_json()))
                    .await?;
                self.state.metrics.deliveries.inc();
                self.cursors.insert(thread, seq);
                after = seq;
            }
            if !full || after + 1 >= before {
                return Ok(());
            }
        }
    }

    /// Write one frame. The write waits when the client does not read; it races the close
    /// request so a slow consumer (closed by the hub when its queue overflows) or a drain is
    /// never stuck behind a full socket.
    async fn write(&mut self, frame: ByteString) -> Result<(), End> {
        let shared = self.shared.clone();
        tokio::select! {
            biased;
            r = self.ws.text(frame) => {
                r.map_err(|_| End::PeerGone)?;
                self.state.metrics.frames_sent.inc();
                Ok(())
            }
            reason = shared.closed() => Err(End::Close(reason)),
        }
    }

    /// Send a reply or event built here.
    pub(crate) async fn reply(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.write(ByteString::from(frame.to_json())).await
    }

    /// Send an error frame (the session stays open).
    pub(crate) async fn error(
        &mut self,
        req: Option<String>,
        code: confab_protocol::ErrorCode,
        message: &str,
    ) -> Result<(), End> {
        let frame = self.error_frame(req, code, message);
        self.reply(&frame).await
    }

    /// An error frame, counted as a refusal.
    pub(crate) fn error_frame(
        &self,
        req: Option<String>,
        code: confab_protocol::ErrorCode,
        message: &str,
    ) -> ServerFrame {
        self.state
            .metrics
            .refused
            .with_label_values(&[code.as_str()])
            .inc();
        ServerFrame::error(req, code, message)
    }

    /// Queue a frame on the socket if its channel has room; gives the frame back if not (then
    /// [`Session::write`] waits for room).
    fn try_write(&mut self, frame: ByteString) -> Result<Option<ByteString>, End> {
        match self.ws.try_text(frame) {
            Ok(()) => {
                self.state.metrics.frames_sent.inc();
                Ok(None)
            }
            Err(TryText::Full(frame)) => Ok(Some(frame)),
            Err(TryText::Closed) => Err(End::PeerGone),
        }
    }

    /// The common case of [`Session::route`] without waiting: the thread's next message, not
    /// held behind a send, to a socket whose channel has room (duplicates are dropped here
    /// too). Anything else comes back, for `route`.
    fn try_deliver(&mut self, out: Outbound) -> Result<Option<Outbound>, End> {
        if self.pipeline.must_hold(&out) {
            return Ok(Some(out));
        }
        let Outbound::Seq {
            thread,
            seq,
            frame,
            sender,
        } = out
        else {
            return Ok(Some(out));
        };
        let Some(&cursor) = self.cursors.get(&thread) else {
            return Ok(None);
        };
        if seq <= cursor {
            return Ok(None);
        }
        // A hole (`seq` beyond the next) goes to `route`, which fills it from the database.
        let frame = if seq == cursor + 1 {
            match self.try_write(frame)? {
                None => {
                    self.state.metrics.deliveries.inc();
                    self.cursors.insert(thread, seq);
                    return Ok(None);
                }
                Some(frame) => frame,
            }
        } else {
            frame
        };
        Ok(Some(Outbound::Seq {
            thread,
            seq,
            frame,
            sender,
        }))
    }
}

fn protocol_error_reason(e: &ProtocolError) -> End {
    match e {
        ProtocolError::Overflow => End::Close(CloseReason::TooBig),
        ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            End::Close(CloseReason::UnsupportedData)
        }
        ProtocolError::Io(_) => End::PeerGone,
        _ => End::Close(CloseReason::PolicyViolation),
    }
}
