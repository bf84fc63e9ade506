//! `idle`: open N idle authenticated WebSockets to one node (spread over several 127.0.0.x
//! source addresses so ephemeral ports never run out), hold them, and report the node's resident
//! memory per connection (RSS delta ÷ N) and the rate at which sessions were established
//! (upgrade + authentication + `hello`).

use crate::conn::{self, ConnectOpts, WsStream};
use crate::fleet::{Api, Fleet, FleetSpec};
use crate::procstat::{self, CpuWindow, Watched};
use crate::scrape::{self, MetricsDelta};
use crate::stats::round;
use crate::target::Node;
use crate::{BenchError, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    /// The node.
    pub node: Node,
    /// Register users and create rooms through this node instead (so the measured node's heap
    /// holds no setup garbage for connections to reuse).
    pub setup_node: Option<Node>,
    /// Its pid (for RSS); without it only the connect rate is measured.
    pub pid: Option<u32>,
    /// Connections to open.
    pub connections: usize,
    /// Distinct users (connections are spread over them round-robin).
    pub users: usize,
    /// Users per room (0: users in no thread).
    pub room_size: usize,
    /// Most connections per source address.
    pub per_source: usize,
    /// Handshakes in flight.
    pub concurrency: usize,
    /// Setup HTTP requests in flight.
    pub setup_concurrency: usize,
    /// How long to hold the connections before measuring.
    pub hold: Duration,
    /// `/metrics` URLs to scrape.
    pub metrics: Vec<String>,
    /// Other processes (Redis, Postgres) whose CPU to measure while connecting.
    pub aux: Vec<Watched>,
    /// A name for this run.
    pub label: String,
}

/// What an idle run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// Always `idle`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// Connections open at the measurement.
    pub connections: usize,
    /// Distinct users.
    pub users: usize,
    /// Rooms the users are in.
    pub rooms: usize,
    /// Source addresses used.
    pub sources: usize,
    /// Registering users and creating rooms, seconds.
    pub setup_s: f64,
    /// From the first handshake to the last `hello`, seconds.
    pub connect_s: f64,
    /// Sessions established per second.
    pub connects_per_sec: f64,
    /// Handshakes refused and retried (503 or failed connects).
    pub retried: u64,
    /// Node RSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// Node RSS with every connection open, KiB.
    pub rss_after_kib: u64,
    /// (after − before) ÷ connections, KiB.
    pub rss_per_conn_kib: f64,
    /// Node RSS with half the connections open, KiB.
    pub rss_half_kib: u64,
    /// (after − half) ÷ the second half's connections: the marginal cost of one more
    /// connection, KiB.
    pub rss_marginal_kib: f64,
    /// Connections that closed during the hold.
    pub closed_during_hold: u64,
    /// CPU of the node and the helpers during the connect phase.
    pub connect_cpu: CpuWindow,
    /// The load tester's own RSS, KiB.
    pub bench_rss_kib: u64,
    /// `/metrics` deltas over the connect phase and hold.
    pub metrics: Vec<MetricsDelta>,
}

impl IdleReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "idle[{}]: {} connections ({} users, {} sources) in {:.2} s = {:.0} connects/s; \
             node RSS {} → {} KiB = {:.2} KiB per connection ({:.2} KiB marginal); {} closed \
             during hold",
            self.label,
            self.connections,
            self.users,
            self.sources,
            self.connect_s,
            self.connects_per_sec,
            self.rss_before_kib,
            self.rss_after_kib,
            self.rss_per_conn_kib,
            self.rss_marginal_kib,
            self.closed_during_hold
        )
    }
}

async fn read_until_closed(mut ws: WsStream, closed: Arc<AtomicU64>) {
    while let Some(Ok(_)) = ws.next().await {}
    closed.fetch_add(1, Ordering::Relaxed);
}

/// Run the idle scenario.
pub async fn run(cfg: &IdleConfig) -> Result<IdleReport> {
    if cfg.connections == 0 || cfg.connections > crate::bounds::MAX_CLIENTS {
        return Err(BenchError::Invalid(format!(
            "connections must be 1 to {}",
            crate::bounds::MAX_CLIENTS
        )));
    }
    crate::secs("hold", cfg.hold.as_secs_f64())?;
    for m in &cfg.metrics {
        crate::target::require_loopback(m)?;
    }
    let users = cfg.users.clamp(1, cfg.connections);
    let api = Api::new();
    let started = Instant::now();
    let fleet = Fleet::build(
        &api,
        vec![cfg.setup_node.clone().unwrap_or_else(|| cfg.node.clone())],
        &FleetSpec {
            users,
            room_size: cfg.room_size,
            concurrency: cfg.setup_concurrency,
        },
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    // Let the setup's garbage settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = cfg.pid.and_then(|p| procstat::rss_kib(p).ok()).unwrap_or(0);
    let scrape_a = scrape::scrape_all(api.client(), &cfg.metrics).await;

    let sources = conn::sources_for(cfg.connections, cfg.per_source);
    let per_source = cfg.connections.div_ceil(sources.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let retried = Arc::new(AtomicU64::new(0));
    let mut watched: Vec<Watched> = cfg
        .pid
        .map(|pid| Watched {
            name: "node0".into(),
            pid,
            tree: false,
            filter: None,
        })
        .into_iter()
        .collect();
    watched.extend(cfg.aux.iter().cloned());
    let closed = Arc::new(AtomicU64::new(0));
    let open = |range: std::ops::Range<usize>| {
        let retried = retried.clone();
        let closed = closed.clone();
        let sources = &sources;
        let fleet = &fleet;
        futures_util::stream::iter(range)
            .map(move |i| {
                let user = &fleet.users[i % users];
                let opts = ConnectOpts {
                    source: sources.get(i / per_source).copied(),
                    read_buffer: 4096,
                    ..ConnectOpts::default()
                };
                let node = cfg.node.clone();
                let token = user.token.clone();
                let retried = retried.clone();
                let closed = closed.clone();
                async move {
                    let (ws, _, refused) =
                        conn::connect_retrying(&node, &token, &opts, deadline).await?;
                    retried.fetch_add(u64::from(refused), Ordering::Relaxed);
                    // A reader from the start, as a real idle client has: unread pings and
                    // presence events would sit in the node's buffers and inflate its memory.
                    Ok::<_, conn::ConnectError>(tokio::spawn(read_until_closed(ws, closed)))
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect::<Vec<_>>()
    };
    // Two halves: the second half's growth is the marginal cost of a connection, free of the
    // heap the setup left behind (which the first connections reuse).
    let half = cfg.connections / 2;
    let cpu_a = procstat::snapshot(&watched);
    let started = Instant::now();
    let mut results = open(0..half).await;
    let first_s = started.elapsed().as_secs_f64();
    let cpu_b = procstat::snapshot(&watched);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_half = cfg.pid.and_then(|p| procstat::rss_kib(p).ok()).unwrap_or(0);
    let cpu_c = procstat::snapshot(&watched);
    let started = Instant::now();
    results.extend(open(half..cfg.connections).await);
    let connect_s = first_s + started.elapsed().as_secs_f64();
    let cpu_d = procstat::snapshot(&watched);
    let mut connect_cpu = CpuWindow::between(&watched, &cpu_a, &cpu_b);
    let second = CpuWindow::between(&watched, &cpu_c, &cpu_d);
    for (p, q) in connect_cpu.processes.iter_mut().zip(&second.processes) {
        p.cpu_s = round(p.cpu_s + q.cpu_s, 2);
        p.rss_kib = q.rss_kib;
    }
    connect_cpu.bench_cpu_s = round(connect_cpu.bench_cpu_s + second.bench_cpu_s, 2);
    connect_cpu.machine_cpu_s = round(connect_cpu.machine_cpu_s + second.machine_cpu_s, 2);
    let mut tasks = Vec::with_capacity(results.len());
    let mut failure = None;
    for r in results {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        for t in tasks {
            t.abort();
        }
        return Err(BenchError::Ws(e.to_string()));
    }
    tokio::time::sleep(cfg.hold).await;
    let rss_after = cfg.pid.and_then(|p| procstat::rss_kib(p).ok()).unwrap_or(0);
    let scrape_b = scrape::scrape_all(api.client(), &cfg.metrics).await;
    let bench_rss = procstat::rss_kib(std::process::id()).unwrap_or(0);
    let closed_during_hold = closed.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let n = cfg.connections;
    Ok(IdleReport {
        scenario: "idle".into(),
        label: cfg.label.clone(),
        connections: n,
        users,
        rooms: fleet.rooms.len(),
        sources: sources.len(),
        setup_s: round(setup_s, 3),
        connect_s: round(connect_s, 3),
        connects_per_sec: round(n as f64 / connect_s.max(1e-9), 0),
        retried: retried.load(Ordering::Relaxed),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_kib: if cfg.pid.is_some() {
            round(rss_after.saturating_sub(rss_before) as f64 / n as f64, 3)
        } else {
            0.0
        },
        rss_half_kib: rss_half,
        rss_marginal_kib: if cfg.pid.is_some() && n > half {
            round(
                rss_after.saturating_sub(rss_half) as f64 / (n - half) as f64,
                3,
            )
        } else {
            0.0
        },
        closed_during_hold,
        connect_cpu,
        bench_rss_kib: bench_rss,
        metrics: scrape::deltas(&cfg.metrics, &scrape_a, &scrape_b),
    })
}
