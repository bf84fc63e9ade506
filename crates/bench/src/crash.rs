//! `crash`: a node is SIGKILLed with its users connected; how long until the surviving nodes
//! tell everyone who shares a thread with them that they are offline (MISSION.md: "no ghosts",
//! ≤ 30 s). Rooms of K spread over the nodes, as `fanout` spreads them: the members on the
//! victim node are the victims, the members on the other nodes watch. Before the kill every
//! victim must be online (asked over HTTP on a surviving node); after it, each watcher records
//! when it got the `offline` event of each victim of its room, and at the end the surviving
//! nodes are asked again: a victim still `online` there is a ghost.
//!
//! Nothing here is sent to the dead node after the kill; the victims' connections are dropped
//! as they are (the kernel closed the server's side when the process died).

use crate::conn;
use crate::fleet::{Api, Fleet, FleetSpec};
use crate::stats::{self, round, Clock, LatencyMs};
use crate::target::Node;
use crate::{BenchError, Result};
use confab_protocol::api::UserPresence;
use confab_protocol::{PresenceStatus, ServerFrame, UserId};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// Most user ids per presence query (the server's default `presence.max_query_users`).
const QUERY_CHUNK: usize = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct CrashConfig {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Which of `nodes` is killed (index).
    pub victim: usize,
    /// The victim node's process id (checked to be a process named `confab` before it is
    /// killed).
    pub victim_pid: u32,
    /// Users in total.
    pub clients: usize,
    /// Members per room.
    pub room_size: usize,
    /// How long to wait after the kill for every offline event.
    pub deadline: Duration,
    /// How long the victims may take to show as online before the kill.
    pub settle: Duration,
    /// Setup HTTP requests in flight.
    pub setup_concurrency: usize,
    /// Handshakes in flight.
    pub connect_concurrency: usize,
    /// A name for this run.
    pub label: String,
}

/// What a crash measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Always `crash`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// Nodes, the victim included.
    pub nodes: usize,
    /// Users connected to the victim node when it was killed.
    pub victims: usize,
    /// Users on the surviving nodes who share a room with victims.
    pub watchers: usize,
    /// (watcher, victim) pairs sharing a room: each owes one `offline` event.
    pub pairs: u64,
    /// Pairs whose `offline` event arrived within the deadline.
    pub cleared: u64,
    /// Pairs without one (ghosts as a watcher sees them).
    pub missing: u64,
    /// `offline` events beyond the first per pair.
    pub repeated: u64,
    /// `online` events about a victim after the kill (a flap: nobody reconnected them).
    pub flapped: u64,
    /// Victims the surviving nodes still called online after the events (or the deadline).
    pub ghosts: usize,
    /// Victims the survivors could not be asked about (a failed query).
    pub unknown: usize,
    /// From the kill until the last pair cleared, seconds (the deadline when some never did).
    pub time_to_all_offline_s: f64,
    /// Kill → `offline` per pair.
    pub offline_ms: LatencyMs,
    /// Seconds the deadline allowed.
    pub deadline_s: f64,
}

impl CrashReport {
    /// Nothing left behind: every pair cleared, no victim online anywhere, no flaps.
    pub fn clean(&self) -> bool {
        self.pairs > 0
            && self.missing == 0
            && self.ghosts == 0
            && self.unknown == 0
            && self.flapped == 0
    }

    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "crash[{}]: node SIGKILLed with {} users; {} watchers saw all offline in {:.1} s \
             (p50 {:.1} s, max {:.1} s); {} of {} events missing, {} repeated, {} flaps; \
             {} ghosts, {} unknown",
            self.label,
            self.victims,
            self.watchers,
            self.time_to_all_offline_s,
            self.offline_ms.p50 / 1000.0,
            self.offline_ms.max / 1000.0,
            self.missing,
            self.pairs,
            self.repeated,
            self.flapped,
            self.ghosts,
            self.unknown
        )
    }
}

/// What one watcher saw after the kill.
#[derive(Default)]
struct Seen {
    /// Victim → µs after the kill of its first `offline`.
    offline_at: HashMap<UserId, u64>,
    repeated: u64,
    flapped: u64,
}

/// Read a watcher's frames until told to stop; after the kill, note its victims' presence.
async fn watch_room(
    mut ws: conn::WsStream,
    victims: Vec<UserId>,
    mut killed: watch::Receiver<Option<u64>>,
    clock: Clock,
    cleared: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        let text = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            m = ws.next() => match m {
                Some(Ok(WsMsg::Text(t))) => t,
                Some(Ok(_)) => continue,
                _ => break,
            },
        };
        let Some(kill_us) = *killed.borrow_and_update() else {
            continue;
        };
        if !text.contains("\"presence\"") {
            continue;
        }
        let Ok(ServerFrame::Presence {
            user_id, status, ..
        }) = serde_json::from_str::<ServerFrame>(&text)
        else {
            continue;
        };
        if !victims.contains(&user_id) {
            continue;
        }
        match status {
            PresenceStatus::Offline => {
                // The first one counts; a repeat keeps it.
                match seen.offline_at.entry(user_id) {
                    Entry::Occupied(_) => seen.repeated += 1,
                    Entry::Vacant(e) => {
                        e.insert(clock.now_us().saturating_sub(kill_us));
                        cleared.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            PresenceStatus::Online => seen.flapped += 1,
        }
    }
    seen
}

/// How many of `users` a surviving node calls online, asked as `token` (a member of their
/// room) in chunks; `Err` with the number it could not ask about.
async fn count_online(
    api: &Api,
    node: &Node,
    token: &str,
    users: &[UserId],
) -> std::result::Result<usize, usize> {
    let mut online = 0;
    for chunk in users.chunks(QUERY_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|u| u.to_string()).collect();
        let url = format!("{}/api/v1/presence?user_ids={}", node.http, ids.join(","));
        let resp = api.client().get(&url).bearer_auth(token).send().await;
        let Ok(resp) = resp else {
            return Err(users.len());
        };
        if !resp.status().is_success() {
            return Err(users.len());
        }
        let Ok(statuses) = resp.json::<Vec<UserPresence>>().await else {
            return Err(users.len());
        };
        online += statuses
            .iter()
            .filter(|p| p.status == PresenceStatus::Online)
            .count();
    }
    Ok(online)
}

/// A room as the crash sees it: who watches (on a survivor) and who dies with the node.
struct RoomPlan {
    /// The room's members on surviving nodes (indices into the fleet's users).
    watchers: Vec<usize>,
    victims: Vec<UserId>,
}

/// Send SIGKILL to `pid` after checking that it is a `confab` process: a wrong pid on the
/// command line must not kill something else.
fn kill_node(pid: u32) -> Result<()> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|e| BenchError::Invalid(format!("process {pid}: {e}")))?;
    // Exactly the gateway's binary name (this crate's own test binaries start with `confab`).
    if comm.trim() != "confab" {
        return Err(BenchError::Invalid(format!(
            "process {pid} is {:?}, not a confab node",
            comm.trim()
        )));
    }
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(BenchError::Invalid(format!("kill -KILL {pid}: {status}")));
    }
    Ok(())
}

/// Run the crash.
pub async fn run(cfg: &CrashConfig) -> Result<CrashReport> {
    let n = cfg.nodes.len();
    if n < 2 || cfg.victim >= n {
        return Err(BenchError::Invalid(
            "crash needs at least 2 nodes and a victim among them".into(),
        ));
    }
    if cfg.room_size < n || cfg.clients < cfg.room_size {
        return Err(BenchError::Invalid(
            "crash needs rooms with a member on every node (room size >= nodes) and \
             clients >= room size"
                .into(),
        ));
    }
    crate::secs("deadline", cfg.deadline.as_secs_f64())?;
    crate::secs("settle", cfg.settle.as_secs_f64())?;
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
    let plans: Vec<RoomPlan> = fleet
        .rooms
        .iter()
        .map(|r| RoomPlan {
            watchers: r
                .members
                .iter()
                .copied()
                .filter(|&m| fleet.users[m].node != cfg.victim)
                .collect(),
            victims: r
                .members
                .iter()
                .filter(|&&m| fleet.users[m].node == cfg.victim)
                .map(|&m| fleet.users[m].id)
                .collect(),
        })
        .filter(|p| !p.watchers.is_empty() && !p.victims.is_empty())
        .collect();
    if plans.is_empty() {
        return Err(BenchError::Invalid(
            "no room has members on both the victim and a surviving node".into(),
        ));
    }

    let clock = Clock::start();
    let (killed_tx, killed_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let cleared = Arc::new(AtomicU64::new(0));
    let mut victim_conns = Vec::new();
    let mut by_user: HashMap<usize, conn::WsStream> = HashMap::new();
    for (i, (ws, _)) in conns.into_iter().enumerate() {
        if fleet.users[i].node == cfg.victim {
            victim_conns.push(ws);
        } else {
            by_user.insert(i, ws);
        }
    }
    // The watchers read from now on: frames left unread until the kill (the online events of
    // the connects) would otherwise be read after it and taken for flaps.
    let mut tasks = Vec::new();
    let mut pairs = 0u64;
    for p in &plans {
        for &w in &p.watchers {
            let Some(ws) = by_user.remove(&w) else {
                continue;
            };
            pairs += p.victims.len() as u64;
            tasks.push(tokio::spawn(watch_room(
                ws,
                p.victims.clone(),
                killed_rx.clone(),
                clock,
                cleared.clone(),
                stop_rx.clone(),
            )));
        }
    }

    // Every victim online, as a survivor sees it, before anything dies.
    let settle_until = tokio::time::Instant::now() + cfg.settle;
    loop {
        let mut all = true;
        for p in &plans {
            let w = &fleet.users[p.watchers[0]];
            match count_online(&api, &fleet.nodes[w.node], &w.token, &p.victims).await {
                Ok(k) if k == p.victims.len() => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            break;
        }
        if tokio::time::Instant::now() >= settle_until {
            return Err(BenchError::Timeout(
                "the victims never all showed as online before the kill".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Online events still on their way to watchers must be read before the kill, not after it
    // (as flaps).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Timed from just before the signal: the `kill` command itself takes a moment.
    let _ = killed_tx.send(Some(clock.now_us()));
    kill_node(cfg.victim_pid)?;
    drop(victim_conns);
    let until = tokio::time::Instant::now() + cfg.deadline;
    while cleared.load(Ordering::Relaxed) < pairs && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late repeats or flaps right after the last event still count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);

    let mut report = CrashReport {
        scenario: "crash".into(),
        label: cfg.label.clone(),
        nodes: n,
        victims: plans.iter().map(|p| p.victims.len()).sum(),
        watchers: tasks.len(),
        pairs,
        deadline_s: cfg.deadline.as_secs_f64(),
        ..Default::default()
    };
    let mut hist = stats::histogram();
    let mut last = 0u64;
    for t in tasks {
        let seen = t.await.unwrap_or_default();
        report.repeated += seen.repeated;
        report.flapped += seen.flapped;
        for &us in seen.offline_at.values() {
            stats::record(&mut hist, us);
            last = last.max(us);
        }
        report.cleared += seen.offline_at.len() as u64;
    }
    report.missing = report.pairs - report.cleared.min(report.pairs);
    report.time_to_all_offline_s = if report.missing == 0 {
        round(last as f64 / 1e6, 2)
    } else {
        report.deadline_s
    };
    report.offline_ms = LatencyMs::of(&hist);
    for p in &plans {
        let w = &fleet.users[p.watchers[0]];
        match count_online(&api, &fleet.nodes[w.node], &w.token, &p.victims).await {
            Ok(k) => report.ghosts += k,
            Err(k) => report.unknown += k,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_needs_every_pair_cleared_and_no_ghost() {
        let ok = CrashReport {
            pairs: 10,
            cleared: 10,
            ..Default::default()
        };
        assert!(ok.clean());
        assert!(!CrashReport::default().clean(), "nothing measured");
        for broken in [
            CrashReport {
                missing: 1,
                ..ok.clone()
            },
            CrashReport {
                ghosts: 1,
                ..ok.clone()
            },
            CrashReport {
                unknown: 1,
                ..ok.clone()
            },
            CrashReport {
                flapped: 1,
                ..ok.clone()
            },
        ] {
            assert!(!broken.clean(), "{broken:?}");
        }
    }

    #[test]
    fn a_pid_that_is_not_a_confab_node_is_never_killed() {
        // This test process is not `confab`.
        let me = std::process::id();
        match kill_node(me) {
            Err(BenchError::Invalid(m)) => assert!(m.contains("not a confab node"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
