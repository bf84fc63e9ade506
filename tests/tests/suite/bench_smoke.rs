//! The load tester's smoke run: `confab-bench`'s fanout, used as a library, against two real
//! nodes on Postgres + Redis. It must account for every message exactly (nothing lost, nothing
//! duplicated, every send acknowledged). No speed is asserted here; `make bench` measures speed.

use confab_bench::fanout::{self, FanoutConfig};
use confab_bench::storm::{self, StormConfig};
use confab_bench::target::Node;
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

fn nodes(c: &Cluster) -> Vec<Node> {
    c.nodes
        .iter()
        .map(|n| Node::parse(&n.http_base()).unwrap_or_else(|e| panic!("node url: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fanout_across_two_nodes_delivers_every_message_once() {
    let c = unlimited_cluster().await;
    let mut cfg = FanoutConfig::new(nodes(&c));
    cfg.clients = 40;
    cfg.room_size = 5;
    cfg.rate = 200.0;
    cfg.warmup = Duration::from_millis(500);
    cfg.duration = Duration::from_secs(2);
    cfg.drain = Duration::from_secs(15);
    cfg.metrics = c.nodes.iter().map(|n| n.http_base()).collect();
    cfg.label = "smoke".into();
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
    // Members sit on both nodes, so both nodes delivered (the scrape saw it).
    assert_eq!(r.metrics.len(), 2);
    for m in &r.metrics {
        let delivered = m
            .counters
            .get("confab_messages_delivered_total")
            .copied()
            .unwrap_or(0.0);
        assert!(delivered > 0.0, "node {} delivered nothing: {m:?}", m.url);
    }
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
