//! `fanout`: C clients spread over the nodes, in rooms of K whose members sit on different nodes,
//! send at an open-loop offered rate R (messages/s in total) for a measured window after a
//! warm-up. Every body carries its send time; every receiver records send→deliver latency.
//! Loss and duplicates are counted exactly: each client keeps a bitset of the `seq`s it got,
//! each sender the `seq`s it was acknowledged, and after a drain every acknowledged message is
//! checked against every other member of its room.
//!
//! "Open loop" means the schedule never waits for the server: message `k` of client `j` leaves
//! at `t0 + (k·C + j)/R` whatever happened to earlier ones, so a slow server shows up as latency,
//! loss or unacknowledged sends rather than as a politely lowered rate.

use crate::conn::{Hello, WsStream};
use crate::fleet::{Api, Fleet, FleetSpec};
use crate::procstat::{self, CpuWindow, Watched};
use crate::scrape::{self, MetricsDelta};
use crate::stats::{self, round, Clock, LatencyMs};
use crate::target::Node;
use crate::wire::{self, Phase, SeqSet};
use crate::{BenchError, Result};
use confab_protocol::ThreadId;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// What to run.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// The nodes (clients are assigned round-robin).
    pub nodes: Vec<Node>,
    /// How many clients (one user and one WebSocket each).
    pub clients: usize,
    /// Members per room.
    pub room_size: usize,
    /// Offered rate, messages per second over all clients.
    pub rate: f64,
    /// Sending before the measured window (counted for loss, not for figures).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// After sending stops, wait for outstanding acks and deliveries until this long passes
    /// without any arriving ...
    pub drain: Duration,
    /// ... or this long in all.
    pub drain_max: Duration,
    /// Body length in bytes (at least the timestamp).
    pub body_bytes: usize,
    /// Processes whose CPU and memory to measure; names starting with `node` are the servers.
    pub watched: Vec<Watched>,
    /// `/metrics` URLs to scrape before and after the window.
    pub metrics: Vec<String>,
    /// Setup HTTP requests in flight.
    pub setup_concurrency: usize,
    /// WebSocket handshakes in flight.
    pub connect_concurrency: usize,
    /// A name for this run in the output.
    pub label: String,
}

impl FanoutConfig {
    /// Defaults for `nodes`: 1,000 clients, rooms of 10, 1,000 msgs/s, 2 s warm-up, 10 s window.
    pub fn new(nodes: Vec<Node>) -> Self {
        Self {
            nodes,
            clients: 1000,
            room_size: 10,
            rate: 1000.0,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(10),
            drain_max: Duration::from_secs(60),
            body_bytes: 64,
            watched: Vec::new(),
            metrics: Vec::new(),
            setup_concurrency: 32,
            connect_concurrency: 64,
            label: String::from("fanout"),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(BenchError::Invalid("no nodes".into()));
        }
        if self.room_size < 2 || self.clients < self.room_size {
            return Err(BenchError::Invalid(
                "rooms need at least 2 members and clients >= room size".into(),
            ));
        }
        if self.clients > crate::bounds::MAX_CLIENTS {
            return Err(BenchError::Invalid(format!(
                "at most {} clients",
                crate::bounds::MAX_CLIENTS
            )));
        }
        if !(self.rate > 0.0 && self.rate <= crate::bounds::MAX_RATE) {
            return Err(BenchError::Invalid(format!(
                "rate must be in (0, {}]",
                crate::bounds::MAX_RATE
            )));
        }
        for (n, d) in [
            ("warmup", self.warmup),
            ("duration", self.duration),
            ("drain", self.drain),
            ("drain_max", self.drain_max),
        ] {
            crate::secs(n, d.as_secs_f64())?;
        }
        if self.duration.is_zero() {
            return Err(BenchError::Invalid("duration must be positive".into()));
        }
        for m in &self.metrics {
            crate::target::require_loopback(m)?;
        }
        Ok(())
    }
}

/// Everything one fanout run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FanoutReport {
    /// Always `fanout`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// Nodes driven.
    pub nodes: usize,
    /// Clients connected.
    pub clients: usize,
    /// Members per room.
    pub room_size: usize,
    /// Rooms.
    pub rooms: usize,
    /// The offered rate asked for, messages/s.
    pub rate_offered: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Registering users and creating rooms, seconds.
    pub setup_s: f64,
    /// Opening every WebSocket, seconds.
    pub connect_s: f64,
    /// Sends written in the measured window.
    pub sent: u64,
    /// Sends written in total (warm-up included).
    pub sent_total: u64,
    /// Sends written per second in the window (the offered rate actually achieved).
    pub sent_per_sec: f64,
    /// Acks received in total.
    pub acked_total: u64,
    /// Acks received per second in the window (messages durably stored per second).
    pub acked_per_sec: f64,
    /// Error replies to sends, by code.
    pub send_errors: BTreeMap<String, u64>,
    /// Sends with neither ack nor error by the end of the drain.
    pub unacked: u64,
    /// How long the drain after the window took, seconds.
    pub drain_s: f64,
    /// Deliveries owed: every acknowledged message × every other member of its room.
    pub expected_deliveries: u64,
    /// Of those, received.
    pub delivered: u64,
    /// Of those, not received on the connection by the end of the drain (a real client would
    /// reconnect and resume; the load tester does not, so a dropped client's messages count here).
    pub lost: u64,
    /// `message` frames received more than once by the same client.
    pub duplicated: u64,
    /// Messages received after a higher `seq` of the same thread.
    pub out_of_order: u64,
    /// Deliveries of sends whose ack never arrived (not owed, not lost).
    pub delivered_unacked: u64,
    /// Copies of their own messages the senders' sessions should receive (echoes; the server
    /// writes these too, they are not counted as deliveries).
    pub echoes_expected: u64,
    /// Echoes received.
    pub echoes_received: u64,
    /// Deliveries (to other members) received per second in the window.
    pub delivered_per_sec: f64,
    /// Send → delivery to another member, measured-window messages only.
    pub latency_ms: LatencyMs,
    /// Send → ack.
    pub ack_latency_ms: LatencyMs,
    /// How late the load generator wrote sends against its schedule.
    pub send_lag_ms: LatencyMs,
    /// Clients whose connection ended during the run, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// CPU and memory of the watched processes over the window.
    pub cpu: CpuWindow,
    /// CPU seconds of the gateway nodes in the window.
    pub server_cpu_s: f64,
    /// Deliveries in the window ÷ gateway CPU seconds.
    pub deliveries_per_server_cpu_s: f64,
    /// Frames written (deliveries + echoes) in the window ÷ gateway CPU seconds.
    pub frames_per_server_cpu_s: f64,
    /// Deliveries ÷ (gateway + every other watched process) CPU seconds.
    pub deliveries_per_stack_cpu_s: f64,
    /// Whether every ack and owed delivery arrived before the drain ended.
    pub drained: bool,
    /// `/metrics` deltas over the window.
    pub metrics: Vec<MetricsDelta>,
}

impl FanoutReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "fanout[{}]: {} clients, rooms of {}, offered {:.0}/s (sent {:.0}/s, acked {:.0}/s); \
             delivered {:.0}/s; lost {} dup {} of {}; p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms \
             max {:.2} ms; server CPU {:.2} s → {:.0} deliveries/CPU-s",
            self.label,
            self.clients,
            self.room_size,
            self.rate_offered,
            self.sent_per_sec,
            self.acked_per_sec,
            self.delivered_per_sec,
            self.lost,
            self.duplicated,
            self.expected_deliveries,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
            self.server_cpu_s,
            self.deliveries_per_server_cpu_s
        )
    }

    /// Whether the run delivered everything owed, once, with every send acknowledged.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unacked == 0
            && self.send_errors.is_empty()
            && self.disconnects.is_empty()
            && self.expected_deliveries > 0
    }
}

/// Register, connect and run one fanout.
pub async fn run(cfg: &FanoutConfig) -> Result<FanoutReport> {
    cfg.validate()?;
    let api = Api::new();
    let started = Instant::now();
    let fleet = Fleet::build(
        &api,
        cfg.nodes.clone(),
        &FleetSpec {
            users: cfg.clients,
            room_size: cfg.room_size,
            concurrency: cfg.setup_concurrency,
        },
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let conns = fleet.connect_everyone(cfg.connect_concurrency).await?;
    let connect_s = started.elapsed().as_secs_f64();
    let mut report = drive(cfg, &fleet, conns, &api).await;
    report.setup_s = round(setup_s, 3);
    report.connect_s = round(connect_s, 3);
    Ok(report)
}

/// Counters every task bumps; the coordinator polls them to know when the drain is over.
struct Shared {
    sent: AtomicU64,
    sent_measured: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    expected: AtomicU64,
    writers_done: AtomicUsize,
    latency: Mutex<Histogram<u64>>,
    ack_latency: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            sent_measured: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            writers_done: AtomicUsize::new(0),
            latency: Mutex::new(stats::histogram()),
            ack_latency: Mutex::new(stats::histogram()),
            lag: Mutex::new(stats::histogram()),
        }
    }
}

/// Latency samples batched per task so the shared histogram's lock is taken rarely.
struct Samples<'a> {
    buf: Vec<u64>,
    into: &'a Mutex<Histogram<u64>>,
}

impl<'a> Samples<'a> {
    fn new(into: &'a Mutex<Histogram<u64>>) -> Self {
        Self {
            buf: Vec::with_capacity(256),
            into,
        }
    }

    fn push(&mut self, us: u64) {
        self.buf.push(us);
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.into.lock().unwrap_or_else(|p| p.into_inner());
        for &us in &self.buf {
            stats::record(&mut h, us);
        }
        self.buf.clear();
    }
}

impl Drop for Samples<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The schedule window of a run, in clock microseconds.
#[derive(Clone, Copy)]
struct Window {
    t0: u64,
    warm_end: u64,
    end: u64,
}

struct WriterPlan {
    index: usize,
    senders: usize,
    rate: f64,
    thread: ThreadId,
    body_bytes: usize,
}

async fn writer(
    mut sink: SplitSink<WsStream, WsMsg>,
    plan: WriterPlan,
    win: Window,
    clock: Clock,
    shared: Arc<Shared>,
) {
    let mut lag = Samples::new(&shared.lag);
    let total = (win.end - win.t0) as f64;
    let warm = (win.warm_end - win.t0) as f64;
    for k in 0u64.. {
        let offset = (k as f64 * plan.senders as f64 + plan.index as f64) * 1e6 / plan.rate;
        if offset >= total {
            break;
        }
        let due = win.t0 + offset as u64;
        tokio::time::sleep_until(clock.at(due).into()).await;
        let now = clock.now_us();
        lag.push(now.saturating_sub(due));
        let phase = if offset < warm {
            Phase::Warmup
        } else {
            Phase::Measured
        };
        let frame = wire::send_frame(
            wire::send_req(phase, k, now),
            plan.thread,
            format!("c{}-{k}", plan.index),
            wire::body(now, phase, plan.body_bytes),
        );
        if sink.send(WsMsg::Text(frame.into())).await.is_err() {
            break;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if phase == Phase::Measured {
            shared.sent_measured.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(lag);
    shared.writers_done.fetch_add(1, Ordering::Release);
}

/// What one client saw.
#[derive(Default)]
struct ReaderOut {
    acked: Vec<i64>,
    acked_in_window: u64,
    errors: BTreeMap<String, u64>,
    seqs: SeqSet,
    new_non_echo: u64,
    duplicated: u64,
    out_of_order: u64,
    delivered_in_window: u64,
    echoes_in_window: u64,
    closed: Option<String>,
}

struct ReaderPlan {
    me: String,
    others: u64,
}

async fn reader(
    mut stream: SplitStream<WsStream>,
    plan: ReaderPlan,
    win: Window,
    clock: Clock,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ReaderOut {
    let mut out = ReaderOut::default();
    let mut lat = Samples::new(&shared.latency);
    let mut ack_lat = Samples::new(&shared.ack_latency);
    // One wait for the stop for the whole run: made anew for every frame, it registered with
    // the watch's notifier each time (≈ 3 % of the load generator's perf samples at 30,000
    // msgs/s; a 3-round A/B at 15,000 msgs/s did not resolve a difference in its CPU).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stopped => break,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Ok(WsMsg::Text(t))) => t,
            Some(Ok(WsMsg::Close(c))) => {
                out.closed = Some(match c {
                    Some(c) => format!("close {}", u16::from(c.code)),
                    None => "close".into(),
                });
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                out.closed = Some(format!("error: {e}"));
                break;
            }
            None => {
                out.closed = Some("eof".into());
                break;
            }
        };
        let now = clock.now_us();
        let in_window = now >= win.warm_end && now <= win.end;
        let Some(f) = wire::peek(&text) else { continue };
        match f.kind.as_ref() {
            "message" => {
                let Some(seq) = f.seq else { continue };
                let echo = f.sender_id.as_deref() == Some(plan.me.as_str());
                if !out.seqs.insert(seq) {
                    out.duplicated += 1;
                    continue;
                }
                if seq < out.seqs.max() {
                    out.out_of_order += 1;
                }
                if echo {
                    if in_window {
                        out.echoes_in_window += 1;
                    }
                    continue;
                }
                out.new_non_echo += 1;
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if in_window {
                    out.delivered_in_window += 1;
                }
                if let Some((sent, Phase::Measured)) = f.body.as_deref().and_then(wire::parse_body)
                {
                    lat.push(now.saturating_sub(sent));
                }
            }
            "ack" => {
                let Some(seq) = f.seq else { continue };
                out.acked.push(seq);
                if in_window {
                    out.acked_in_window += 1;
                }
                shared.expected.fetch_add(plan.others, Ordering::Relaxed);
                shared.acked.fetch_add(1, Ordering::Relaxed);
                if let Some((_, sent)) = f.req.as_deref().and_then(wire::parse_req) {
                    ack_lat.push(now.saturating_sub(sent));
                }
            }
            "error" if f.req.is_some() => {
                let code = f.code.as_deref().unwrap_or("unknown").to_owned();
                *out.errors.entry(code).or_default() += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    out
}

/// Run the schedule over already connected clients and account for every message.
async fn drive(
    cfg: &FanoutConfig,
    fleet: &Fleet,
    conns: Vec<(WsStream, Hello)>,
    api: &Api,
) -> FanoutReport {
    let clock = Clock::start();
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = clock.now_us() + 300_000;
    let win = Window {
        t0: start,
        warm_end: start + cfg.warmup.as_micros() as u64,
        end: start + (cfg.warmup + cfg.duration).as_micros() as u64,
    };
    let senders = fleet.users.iter().filter(|u| u.room.is_some()).count();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut sender_index = 0;
    for (i, (ws, hello)) in conns.into_iter().enumerate() {
        let Some(room) = fleet.users[i].room else {
            continue;
        };
        let members = fleet.rooms[room].members.len() as u64;
        let (sink, stream) = ws.split();
        writers.push(tokio::spawn(writer(
            sink,
            WriterPlan {
                index: sender_index,
                senders,
                rate: cfg.rate,
                thread: fleet.rooms[room].thread,
                body_bytes: cfg.body_bytes,
            },
            win,
            clock,
            shared.clone(),
        )));
        sender_index += 1;
        readers.push((
            i,
            tokio::spawn(reader(
                stream,
                ReaderPlan {
                    me: hello.user.to_string(),
                    others: members - 1,
                },
                win,
                clock,
                shared.clone(),
                stop_rx.clone(),
            )),
        ));
    }

    tokio::time::sleep_until(clock.at(win.warm_end).into()).await;
    let snap_a = procstat::snapshot(&cfg.watched);
    let scrape_a = scrape::scrape_all(api.client(), &cfg.metrics).await;
    tokio::time::sleep_until(clock.at(win.end).into()).await;
    let snap_b = procstat::snapshot(&cfg.watched);
    let cpu = CpuWindow::between(&cfg.watched, &snap_a, &snap_b);
    let scrape_b = scrape::scrape_all(api.client(), &cfg.metrics).await;

    let drain_start = Instant::now();
    let mut last_progress = drain_start;
    let mut seen = (0, 0);
    let drained = loop {
        let writers_done = shared.writers_done.load(Ordering::Acquire) == writers.len();
        let sent = shared.sent.load(Ordering::Relaxed);
        let answered = shared.acked.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed);
        let owed = shared.expected.load(Ordering::Relaxed);
        let got = shared.delivered.load(Ordering::Relaxed);
        if writers_done && answered >= sent && got >= owed {
            break true;
        }
        let now = Instant::now();
        if (answered, got) != seen {
            seen = (answered, got);
            last_progress = now;
        }
        if now - last_progress >= cfg.drain || now - drain_start >= cfg.drain_max {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain_s = drain_start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for w in &writers {
        w.abort();
    }
    let mut outs: Vec<(usize, ReaderOut)> = Vec::with_capacity(readers.len());
    for (i, r) in readers {
        outs.push((i, r.await.unwrap_or_default()));
    }

    // Exact accounting: every acknowledged message against every member of its room.
    let mut room_acks: Vec<Vec<(i64, usize)>> = vec![Vec::new(); fleet.rooms.len()];
    let mut by_user: BTreeMap<usize, &ReaderOut> = BTreeMap::new();
    for (i, o) in &outs {
        by_user.insert(*i, o);
        if let Some(room) = fleet.users[*i].room {
            room_acks[room].extend(o.acked.iter().map(|&s| (s, *i)));
        }
    }
    let mut r = FanoutReport {
        scenario: "fanout".into(),
        label: cfg.label.clone(),
        nodes: cfg.nodes.len(),
        clients: fleet.users.len(),
        room_size: cfg.room_size,
        rooms: fleet.rooms.len(),
        rate_offered: cfg.rate,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: cfg.duration.as_secs_f64(),
        drained,
        drain_s: round(drain_s, 2),
        ..Default::default()
    };
    let mut owed_delivered_per_user: BTreeMap<usize, u64> = BTreeMap::new();
    for (room, acks) in fleet.rooms.iter().zip(&room_acks) {
        for &m in &room.members {
            let Some(o) = by_user.get(&m) else { continue };
            for &(seq, sender) in acks {
                let got = o.seqs.contains(seq);
                if sender == m {
                    r.echoes_expected += 1;
                    r.echoes_received += u64::from(got);
                } else {
                    r.expected_deliveries += 1;
                    r.delivered += u64::from(got);
                    *owed_delivered_per_user.entry(m).or_default() += u64::from(got);
                }
            }
        }
    }
    r.lost = r.expected_deliveries - r.delivered;
    let secs = cfg.duration.as_secs_f64();
    let mut delivered_window = 0u64;
    let mut echoes_window = 0u64;
    let mut acked_window = 0u64;
    for (i, o) in &outs {
        r.acked_total += o.acked.len() as u64;
        acked_window += o.acked_in_window;
        r.duplicated += o.duplicated;
        r.out_of_order += o.out_of_order;
        delivered_window += o.delivered_in_window;
        echoes_window += o.echoes_in_window;
        r.delivered_unacked += o
            .new_non_echo
            .saturating_sub(owed_delivered_per_user.get(i).copied().unwrap_or(0));
        for (code, n) in &o.errors {
            *r.send_errors.entry(code.clone()).or_default() += n;
        }
        if let Some(reason) = &o.closed {
            *r.disconnects.entry(reason.clone()).or_default() += 1;
        }
    }
    r.sent_total = shared.sent.load(Ordering::Relaxed);
    r.sent = shared.sent_measured.load(Ordering::Relaxed);
    let answered = r.acked_total + r.send_errors.values().sum::<u64>();
    r.unacked = r.sent_total.saturating_sub(answered);
    r.sent_per_sec = round(r.sent as f64 / secs, 1);
    r.acked_per_sec = round(acked_window as f64 / secs, 1);
    r.delivered_per_sec = round(delivered_window as f64 / secs, 1);
    let hist =
        |m: &Mutex<Histogram<u64>>| LatencyMs::of(&m.lock().unwrap_or_else(|p| p.into_inner()));
    r.latency_ms = hist(&shared.latency);
    r.ack_latency_ms = hist(&shared.ack_latency);
    r.send_lag_ms = hist(&shared.lag);
    r.server_cpu_s = round(cpu.cpu_of("node"), 2);
    let stack_cpu: f64 = cpu.processes.iter().map(|p| p.cpu_s).sum();
    if r.server_cpu_s > 0.0 {
        r.deliveries_per_server_cpu_s = round(delivered_window as f64 / r.server_cpu_s, 0);
        r.frames_per_server_cpu_s = round(
            (delivered_window + echoes_window) as f64 / r.server_cpu_s,
            0,
        );
    }
    if stack_cpu > 0.0 {
        r.deliveries_per_stack_cpu_s = round(delivered_window as f64 / stack_cpu, 0);
    }
    r.cpu = cpu;
    r.metrics = scrape::deltas(&cfg.metrics, &scrape_a, &scrape_b);
    r
}
