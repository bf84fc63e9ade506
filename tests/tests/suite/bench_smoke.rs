//! The load tester's smoke runs: `confab-bench`'s scenarios, used as a library, against two real
//! nodes on Postgres + Redis. They must account for every message exactly (nothing lost, nothing
//! duplicated, every send acknowledged), and a killed node's users must all go offline within
//! the presence design bound. No speed is asserted here; `make bench` measures speed.

use confab_bench::crash::{self, CrashConfig};
use confab_bench::fanout::{self, FanoutConfig};
use confab_bench::storm::{self, StormConfig};
use confab_bench::target::Node;
use confab_tests::process::NodeProcess;
use confab_tests::{Backend, Cluster};
use std::time::Duration;

/// Two nodes whose rate limits are out of the way: the load tester measures fan-out, not the
/// limiter.
async fn unlimited_cluster() -> Cluster {
    Cluster::start_with(Backend::Cluster, 2, |s| {
        s.limits.frames_per_sec = 100_000.0;
        s.limits.frames_burst = 100_000.0;
        s.limits.user_sends_per_sec = 100_000.0;
        s.limits.user_sends_burst = 100_000.0;
        s.database.max_connections = 10;
    })
    .await
}

/// The smoke run's fanout: 40 clients in rooms of 5, 200 msgs/s for 2.5 s.
fn small_fanout(nodes: Vec<Node>, metrics: Vec<String>, label: &str) -> FanoutConfig {
    let mut cfg = FanoutConfig::new(nodes);
    cfg.clients = 40;
    cfg.room_size = 5;
    cfg.rate = 200.0;
    cfg.warmup = Duration::from_millis(500);
    cfg.duration = Duration::from_secs(2);
    cfg.drain = Duration::from_secs(15);
    cfg.metrics = metrics;
    cfg.label = label.into();
    cfg
}

/// Members sit on every node, so every node delivered (its scrape says so).
fn every_node_delivered(r: &fanout::FanoutReport) {
    for m in &r.metrics {
        let delivered = m
            .counters
            .get("confab_messages_delivered_total")
            .copied()
            .unwrap_or(0.0);
        assert!(delivered > 0.0, "node {} delivered nothing: {m:?}", m.url);
    }
}

fn nodes(c: &Cluster) -> Vec<Node> {
    c.nodes
        .iter()
        .map(|n| Node::parse(&n.http_base()).unwrap_or_else(|e| panic!("node url: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fanout_across_two_nodes_delivers_every_message_once() {
    let c = unlimited_cluster().await;
    let cfg = small_fanout(
        nodes(&c),
        c.nodes.iter().map(|n| n.http_base()).collect(),
        "smoke",
    );
    let r = fanout::run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("fanout failed: {e}"));
    eprintln!("{}", r.summary());

    // 200 msgs/s for 2.5 s: about 500 sends; each owed to the 4 other members of its room.
    assert_eq!(r.rooms, 8);
    assert!(r.sent_total >= 400, "{r:?}");
    assert_eq!(
        r.acked_total, r.sent_total,
        "every send acknowledged: {r:?}"
    );
    assert_eq!(r.unacked, 0, "{r:?}");
    assert!(r.send_errors.is_empty(), "{:?}", r.send_errors);
    assert_eq!(r.expected_deliveries, r.acked_total * 4, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert_eq!(r.out_of_order, 0, "{r:?}");
    assert_eq!(r.delivered, r.expected_deliveries);
    assert!(r.disconnects.is_empty(), "{:?}", r.disconnects);
    assert!(r.drained);
    assert!(r.clean());
    assert!(r.latency_ms.count > 0, "measured-window latencies recorded");
    assert_eq!(r.metrics.len(), 2);
    every_node_delivered(&r);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_reconnect_storm_resumes_everyone_without_loss() {
    let c = unlimited_cluster().await;
    let cfg = StormConfig {
        nodes: nodes(&c),
        clients: 30,
        room_size: 5,
        before: 3,
        while_away: 3,
        live: 3,
        move_node: true,
        deadline: Duration::from_secs(30),
        setup_concurrency: 8,
        connect_concurrency: 16,
        label: "smoke".into(),
    };
    let r = storm::run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("storm failed: {e}"));
    eprintln!("{}", r.summary());
    assert_eq!(r.clients, 24, "one sender per room of 5, the rest storm");
    assert_eq!(r.resumed, 24, "{r:?}");
    assert_eq!(r.failed, 0, "{r:?}");
    // 3 + 3 + 3 + 1 final messages in each of 6 rooms, owed to 4 storm clients each.
    assert_eq!(r.messages, 60, "{r:?}");
    assert_eq!(r.expected_deliveries, 240, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    assert!(
        r.replayed >= 24 * 3,
        "the messages stored while away were replayed: {r:?}"
    );
    c.stop().await;
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// `server.single_thread`: two node processes that serve everything on their own thread (no
/// actix worker, no acceptor thread) deliver every message of a small fanout exactly once, and
/// drain and exit cleanly on SIGTERM. One is told to (`true`, with two workers asked for); the
/// other chooses it (`auto`, the default) because it may run on one CPU only. With two CPUs,
/// `auto` also chooses it for one worker asked for, and keeps worker threads for one per CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_single_thread_node_processes_deliver_every_message_once_and_drain() {
    let db = confab_tests::create_database(&confab_tests::pg_admin_url()).await;
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let envs = |name: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CONFAB__DATABASE__URL", db.clone()),
            ("CONFAB__DATABASE__MAX_CONNECTIONS", "10".into()),
            ("CONFAB__REDIS__URL", confab_tests::redis_url()),
            ("CONFAB__REDIS__KEY_PREFIX", prefix.clone()),
            ("CONFAB__NODE__ID", format!("{prefix}-{name}")),
            ("CONFAB__AUTH__ARGON2_MEMORY_KIB", "256".into()),
            ("CONFAB__AUTH__ARGON2_ITERATIONS", "1".into()),
            ("CONFAB__LIMITS__FRAMES_PER_SEC", "100000".into()),
            ("CONFAB__LIMITS__FRAMES_BURST", "100000".into()),
            ("CONFAB__LIMITS__USER_SENDS_PER_SEC", "100000".into()),
            ("CONFAB__LIMITS__USER_SENDS_BURST", "100000".into()),
            ("CONFAB__SHUTDOWN__DRAIN_TIMEOUT_SECS", "5".into()),
        ]
    };
    let with = |name: &str, extra: &[(&'static str, &str)]| {
        let mut e = envs(name);
        e.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        e
    };
    let told = with(
        "a",
        &[
            ("CONFAB__SERVER__SINGLE_THREAD", "true"),
            ("CONFAB__SERVER__WORKERS", "2"),
        ],
    );
    let mut procs = vec![
        NodeProcess::start(&told).await,
        NodeProcess::start_on_one_cpu(&with("b", &[("CONFAB__SERVER__WORKERS", "0")])).await,
    ];
    let has_actix_threads = |p: &NodeProcess| {
        let names = thread_names(p.child.id());
        (names.iter().any(|n| n.starts_with("actix-")), names)
    };
    for p in &procs {
        let (threaded, names) = has_actix_threads(p);
        assert!(
            !threaded,
            "a single-thread node runs no actix worker or acceptor thread: {names:?}"
        );
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        // `auto` with more than one CPU: one worker asked for serves on the node's own thread,
        // one per CPU keeps actix's threads.
        let mut one = NodeProcess::start(&with("c", &[("CONFAB__SERVER__WORKERS", "1")])).await;
        let mut per_cpu = NodeProcess::start(&with("d", &[("CONFAB__SERVER__WORKERS", "0")])).await;
        let (one_threaded, one_names) = has_actix_threads(&one);
        let (per_cpu_threaded, per_cpu_names) = has_actix_threads(&per_cpu);
        one.kill9();
        per_cpu.kill9();
        assert!(
            !one_threaded,
            "one worker asked for: the node's own thread: {one_names:?}"
        );
        assert!(
            per_cpu_threaded,
            "a worker per CPU, two CPUs: worker threads: {per_cpu_names:?}"
        );
    }
    let nodes: Vec<Node> = procs
        .iter()
        .map(|p| Node::parse(&p.http_base()).unwrap_or_else(|e| panic!("node url: {e}")))
        .collect();
    let cfg = small_fanout(
        nodes,
        procs.iter().map(|p| p.http_base()).collect(),
        "single-thread",
    );
    let r = fanout::run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("fanout failed: {e}"));
    eprintln!("{}", r.summary());
    assert!(r.sent_total >= 400, "{r:?}");
    assert_eq!(r.acked_total, r.sent_total, "{r:?}");
    assert_eq!(r.expected_deliveries, r.acked_total * 4, "{r:?}");
    assert_eq!(r.delivered, r.expected_deliveries, "{r:?}");
    assert_eq!((r.lost, r.duplicated, r.out_of_order), (0, 0, 0), "{r:?}");
    assert!(r.clean(), "{r:?}");
    every_node_delivered(&r);

    // SIGTERM: the drain runs and the process exits by itself, successfully.
    for p in &mut procs {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(p.child.id().to_string())
            .status();
    }
    for p in &mut procs {
        let mut status = None;
        for _ in 0..200 {
            if let Ok(Some(s)) = p.child.try_wait() {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = status.unwrap_or_else(|| panic!("node {} did not exit within 20 s", p.port));
        assert!(status.success(), "node {} exited with {status}", p.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_crash_clears_every_killed_users_presence_within_the_bound() {
    use crate::presence::{ProcessCluster, GRACE_MS, HEARTBEAT_MS};
    const TTL_MS: u64 = 1000;
    let pc = ProcessCluster::new(TTL_MS).await;
    let n0 = pc.start("a").await;
    let n1 = pc.start("b").await;
    let node =
        |p: &NodeProcess| Node::parse(&p.http_base()).unwrap_or_else(|e| panic!("node url: {e}"));
    let cfg = CrashConfig {
        nodes: vec![node(&n0), node(&n1)],
        victim: 1,
        victim_pid: n1.child.id(),
        clients: 20,
        room_size: 5,
        deadline: Duration::from_secs(30),
        settle: Duration::from_secs(20),
        setup_concurrency: 8,
        connect_concurrency: 16,
        label: "smoke".into(),
    };
    let r = crash::run(&cfg)
        .await
        .unwrap_or_else(|e| panic!("crash failed: {e}"));
    eprintln!("{}", r.summary());
    // 4 rooms of 5, members alternating over the 2 nodes: 3 watchers and 2 victims in two
    // rooms, 2 and 3 in the others.
    assert_eq!((r.victims, r.watchers, r.pairs), (10, 10, 24), "{r:?}");
    assert!(r.clean(), "{r:?}");
    assert_eq!(r.repeated, 0, "{r:?}");
    // The design bound (TTL, one sweep interval, the grace) plus slack for a loaded machine;
    // and not before the dead node's heartbeat could have expired.
    let bound = (TTL_MS + HEARTBEAT_MS + GRACE_MS) as f64 / 1000.0 + 3.0;
    assert!(r.time_to_all_offline_s <= bound, "{r:?}");
    assert!(r.offline_ms.p50 >= (TTL_MS / 2) as f64, "{r:?}");
    drop(n0);
}
