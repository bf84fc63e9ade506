//! `storm`: everyone reconnects at once, as after a node dies. Rooms of K: one member per room is
//! a sender that stays connected, the other K−1 are storm clients. The senders send, the storm
//! clients drop their connections abruptly (no close frame), more messages are stored while
//! they are away, then every storm client reconnects at the same instant (by default to another
//! node) with `?resume=1` and a `resume` frame, while the senders keep sending live. Reports the
//! time until the last client got `resumed`, and — counting exactly with a `seq` bitset per
//! client — whether anything was lost or duplicated.

use crate::conn::{self, ConnectOpts, WsStream};
use crate::fleet::{Api, Fleet, FleetSpec};
use crate::stats::{self, round, Clock, LatencyMs};
use crate::target::Node;
use crate::wire::{self, SeqSet};
use crate::{BenchError, Result};
use confab_protocol::{ClientFrame, ResumePoint, ServerFrame, ThreadId};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// What to run.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Users in total (one sender per room, the rest storm clients).
    pub clients: usize,
    /// Members per room.
    pub room_size: usize,
    /// Messages per room before the storm.
    pub before: usize,
    /// Messages per room stored while the storm clients are away.
    pub while_away: usize,
    /// Messages per room sent live while they reconnect.
    pub live: usize,
    /// Reconnect to the next node instead of the same one (as after a node died).
    pub move_node: bool,
    /// Bound on the whole reconnection.
    pub deadline: Duration,
    /// Setup HTTP requests in flight.
    pub setup_concurrency: usize,
    /// Handshakes in flight for the first connect (the storm itself has no limit).
    pub connect_concurrency: usize,
    /// A name for this run.
    pub label: String,
}

/// What a storm measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    /// Always `storm`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// Nodes.
    pub nodes: usize,
    /// Clients that dropped and reconnected.
    pub clients: usize,
    /// Rooms (one sender each).
    pub rooms: usize,
    /// Members per room.
    pub room_size: usize,
    /// Whether clients reconnected to another node.
    pub moved_node: bool,
    /// Messages stored in all rooms (before, while away, live, after).
    pub messages: u64,
    /// Deliveries owed to storm clients.
    pub expected_deliveries: u64,
    /// Received.
    pub delivered: u64,
    /// Never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Clients that got `resumed`.
    pub resumed: usize,
    /// Clients that could not reconnect within the bound.
    pub failed: usize,
    /// Handshakes refused or failed and retried.
    pub connect_retries: u64,
    /// Messages the server replayed in `resume`.
    pub replayed: u64,
    /// Threads whose replay was truncated.
    pub truncated: u64,
    /// From the reconnect signal until the last client got `resumed`, ms.
    pub time_to_all_resumed_ms: f64,
    /// Per-client reconnect → `resumed` time.
    pub resume_ms: LatencyMs,
}

impl StormReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "storm[{}]: {} clients reconnected at once{}; all resumed in {:.0} ms \
             (p50 {:.0} ms, p99 {:.0} ms); {} replayed; lost {} dup {} of {}; {} failed, {} retries",
            self.label,
            self.clients,
            if self.moved_node { " to another node" } else { "" },
            self.time_to_all_resumed_ms,
            self.resume_ms.p50,
            self.resume_ms.p99,
            self.replayed,
            self.lost,
            self.duplicated,
            self.expected_deliveries,
            self.failed,
            self.connect_retries
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Connected,
    Drop,
    Reconnect,
    Stop,
}

struct Shared {
    delivered: AtomicU64,
    dropped: AtomicU64,
    resumed: AtomicU64,
    finished: AtomicU64,
    retries: AtomicU64,
    replayed: AtomicU64,
    truncated: AtomicU64,
    resume_hist: Mutex<hdrhistogram::Histogram<u64>>,
}

#[derive(Default)]
struct ClientOut {
    seqs: SeqSet,
    duplicated: u64,
    resumed_at_us: Option<u64>,
    failed: Option<String>,
}

struct ClientPlan {
    thread: ThreadId,
    node_after: Node,
    token: String,
    deadline: Duration,
}

fn record(out: &mut ClientOut, shared: &Shared, text: &str) {
    if let Some(f) = wire::peek(text) {
        if f.kind == "message" {
            if let Some(seq) = f.seq {
                if out.seqs.insert(seq) {
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    out.duplicated += 1;
                }
            }
        }
    }
}

/// The highest `seq` up to which nothing is missing.
fn contiguous(seqs: &SeqSet) -> i64 {
    let mut s = 0;
    while seqs.contains(s + 1) {
        s += 1;
    }
    s
}

async fn storm_client(
    mut ws: WsStream,
    plan: ClientPlan,
    mut stage: watch::Receiver<Stage>,
    shared: Arc<Shared>,
    clock: Clock,
) -> ClientOut {
    let mut out = ClientOut::default();
    // Connected: read until told to drop.
    loop {
        tokio::select! {
            biased;
            _ = stage.wait_for(|s| *s >= Stage::Drop) => break,
            m = ws.next() => match m {
                Some(Ok(WsMsg::Text(t))) => record(&mut out, &shared, &t),
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    // Abrupt: no close frame, just the TCP connection gone, as when a node dies.
    drop(ws);
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    if stage.wait_for(|s| *s >= Stage::Reconnect).await.is_err() {
        return out;
    }
    let start = clock.now_us();
    let deadline = tokio::time::Instant::now() + plan.deadline;
    let opts = ConnectOpts {
        resume: true,
        ..ConnectOpts::default()
    };
    let mut ws = match conn::connect_retrying(&plan.node_after, &plan.token, &opts, deadline).await
    {
        Ok((ws, _, retries)) => {
            shared
                .retries
                .fetch_add(u64::from(retries), Ordering::Relaxed);
            ws
        }
        Err(e) => {
            out.failed = Some(e.to_string());
            shared.finished.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    };
    let resume = ClientFrame::Resume {
        req: "resume".into(),
        threads: vec![ResumePoint {
            thread_id: plan.thread,
            last_seq: contiguous(&out.seqs),
            last_change: None,
        }],
    };
    let text = serde_json::to_string(&resume).unwrap_or_default();
    if let Err(e) = ws.send(WsMsg::Text(text.into())).await {
        out.failed = Some(format!("resume send: {e}"));
        shared.finished.fetch_add(1, Ordering::Relaxed);
        return out;
    }
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await;
        let t = match m {
            Ok(Some(Ok(WsMsg::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => {
                out.failed = Some("connection ended before resumed".into());
                break;
            }
            Err(_) => {
                out.failed = Some("no resumed before the deadline".into());
                break;
            }
        };
        if t.contains("\"resumed\"") {
            if let Ok(ServerFrame::Resumed { threads, .. }) = serde_json::from_str(&t) {
                let now = clock.now_us();
                out.resumed_at_us = Some(now);
                for r in threads {
                    shared
                        .replayed
                        .fetch_add(u64::from(r.replayed), Ordering::Relaxed);
                    shared
                        .truncated
                        .fetch_add(u64::from(r.truncated), Ordering::Relaxed);
                }
                {
                    let mut h = shared.resume_hist.lock().unwrap_or_else(|p| p.into_inner());
                    stats::record(&mut h, now.saturating_sub(start));
                }
                shared.resumed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        record(&mut out, &shared, &t);
    }
    shared.finished.fetch_add(1, Ordering::Relaxed);
    if out.failed.is_some() {
        return out;
    }
    loop {
        tokio::select! {
            biased;
            _ = stage.wait_for(|s| *s >= Stage::Stop) => break,
            m = ws.next() => match m {
                Some(Ok(WsMsg::Text(t))) => record(&mut out, &shared, &t),
                Some(Ok(_)) => {}
                _ => { out.failed = Some("connection ended after resume".into()); break }
            },
        }
    }
    out
}

/// A room's sender: sends and waits for acks, ignoring everything else.
struct Sender {
    ws: WsStream,
    thread: ThreadId,
    next: u64,
    acked: Vec<i64>,
}

impl Sender {
    async fn send(&mut self, n: usize, spacing: Duration) -> Result<()> {
        for _ in 0..n {
            self.next += 1;
            let k = self.next;
            let frame = wire::send_frame(
                format!("s{k}"),
                self.thread,
                format!("s{k}"),
                format!("storm {k}"),
            );
            self.ws
                .send(WsMsg::Text(frame.into()))
                .await
                .map_err(|e| BenchError::Ws(format!("sender: {e}")))?;
            let want = format!("s{k}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let m = tokio::time::timeout_at(deadline, self.ws.next())
                    .await
                    .map_err(|_| BenchError::Timeout("ack of a storm send".into()))?;
                let Some(Ok(WsMsg::Text(t))) = m else {
                    match m {
                        Some(Ok(_)) => continue,
                        _ => return Err(BenchError::Ws("sender connection ended".into())),
                    }
                };
                let Some(f) = wire::peek(&t) else { continue };
                if f.req.as_deref() != Some(want.as_str()) {
                    continue;
                }
                match (f.kind.as_ref(), f.seq) {
                    ("ack", Some(seq)) => {
                        self.acked.push(seq);
                        break;
                    }
                    _ => return Err(BenchError::Ws(format!("send refused: {t}"))),
                }
            }
            if !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
        }
        Ok(())
    }
}

async fn send_all(senders: &mut [Sender], n: usize, spacing: Duration) -> Result<()> {
    let results =
        futures_util::future::join_all(senders.iter_mut().map(|s| s.send(n, spacing))).await;
    results.into_iter().collect()
}

async fn wait_for(counter: &AtomicU64, target: u64, bound: Duration) -> bool {
    let until = Instant::now() + bound;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Run the storm.
pub async fn run(cfg: &StormConfig) -> Result<StormReport> {
    if cfg.room_size < 2 || cfg.clients < cfg.room_size {
        return Err(BenchError::Invalid(
            "storm needs rooms of at least 2 and clients >= room size".into(),
        ));
    }
    crate::secs("deadline", cfg.deadline.as_secs_f64())?;
    let api = Api::new();
    let (fleet, conns) = Fleet::connected(
        &api,
        cfg.nodes.clone(),
        &FleetSpec {
            users: cfg.clients,
            room_size: cfg.room_size,
            concurrency: cfg.setup_concurrency,
        },
        cfg.connect_concurrency,
    )
    .await?;
    let clock = Clock::start();
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        truncated: AtomicU64::new(0),
        resume_hist: Mutex::new(stats::histogram()),
    });
    let (stage_tx, stage_rx) = watch::channel(Stage::Connected);
    let n = cfg.nodes.len();
    let mut senders: Vec<Sender> = Vec::new();
    let mut clients = Vec::new();
    for (i, (ws, _)) in conns.into_iter().enumerate() {
        let user = &fleet.users[i];
        let Some(room) = user.room else { continue };
        let thread = fleet.rooms[room].thread;
        if fleet.rooms[room].members.first() == Some(&i) {
            senders.push(Sender {
                ws,
                thread,
                next: 0,
                acked: Vec::new(),
            });
            continue;
        }
        let node_after = if cfg.move_node {
            (user.node + 1) % n
        } else {
            user.node
        };
        let plan = ClientPlan {
            thread,
            node_after: fleet.nodes[node_after].clone(),
            token: user.token.clone(),
            deadline: cfg.deadline,
        };
        clients.push((
            room,
            tokio::spawn(storm_client(
                ws,
                plan,
                stage_rx.clone(),
                shared.clone(),
                clock,
            )),
        ));
    }
    let storm_clients = clients.len() as u64;
    let per_message = |room_members: usize| room_members as u64 - 1;
    let owed = |senders: &[Sender]| -> u64 {
        senders
            .iter()
            .zip(&fleet.rooms)
            .map(|(s, r)| s.acked.len() as u64 * per_message(r.members.len()))
            .sum()
    };

    send_all(&mut senders, cfg.before, Duration::ZERO).await?;
    wait_for(&shared.delivered, owed(&senders), Duration::from_secs(30)).await;
    let _ = stage_tx.send(Stage::Drop);
    wait_for(&shared.dropped, storm_clients, Duration::from_secs(30)).await;
    send_all(&mut senders, cfg.while_away, Duration::ZERO).await?;

    // The storm: every client at once, while the senders keep sending live.
    let storm_start = clock.now_us();
    let _ = stage_tx.send(Stage::Reconnect);
    let live = cfg.live;
    let live_task = tokio::spawn(async move {
        let r = send_all(&mut senders, live, Duration::from_millis(50)).await;
        (senders, r)
    });
    wait_for(
        &shared.finished,
        storm_clients,
        cfg.deadline + Duration::from_secs(5),
    )
    .await;
    let (mut senders, live_result) = live_task
        .await
        .map_err(|e| BenchError::Ws(format!("live senders: {e}")))?;
    live_result?;
    // A last message per room: once it is everywhere, everything before it must be too.
    send_all(&mut senders, 1, Duration::ZERO).await?;
    wait_for(&shared.delivered, owed(&senders), Duration::from_secs(30)).await;
    let _ = stage_tx.send(Stage::Stop);

    let mut report = StormReport {
        scenario: "storm".into(),
        label: cfg.label.clone(),
        nodes: n,
        clients: clients.len(),
        rooms: senders.len(),
        room_size: cfg.room_size,
        moved_node: cfg.move_node,
        messages: senders.iter().map(|s| s.acked.len() as u64).sum(),
        ..Default::default()
    };
    let room_sender: std::collections::HashMap<usize, usize> = senders
        .iter()
        .enumerate()
        .filter_map(|(si, s)| {
            fleet
                .rooms
                .iter()
                .position(|r| r.thread == s.thread)
                .map(|r| (r, si))
        })
        .collect();
    let mut last_resume = storm_start;
    for (room, task) in clients {
        let out = task.await.unwrap_or_default();
        report.duplicated += out.duplicated;
        match out.resumed_at_us {
            Some(t) => {
                report.resumed += 1;
                last_resume = last_resume.max(t);
            }
            None => report.failed += 1,
        }
        if let Some(&si) = room_sender.get(&room) {
            for &seq in &senders[si].acked {
                report.expected_deliveries += 1;
                report.delivered += u64::from(out.seqs.contains(seq));
            }
        }
    }
    report.lost = report.expected_deliveries - report.delivered;
    report.connect_retries = shared.retries.load(Ordering::Relaxed);
    report.replayed = shared.replayed.load(Ordering::Relaxed);
    report.truncated = shared.truncated.load(Ordering::Relaxed);
    report.time_to_all_resumed_ms = round((last_resume - storm_start) as f64 / 1000.0, 1);
    report.resume_ms = LatencyMs::of(&shared.resume_hist.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(report)
}
