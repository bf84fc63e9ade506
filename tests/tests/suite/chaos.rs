//! The chaos suite: three gateway processes on a private Redis and a private Postgres, clients
//! in shared threads sending all along, while a node is SIGKILLed, Redis and Postgres restart,
//! every node is rolled (drain, then start), and a client stalls. At the end every acknowledged
//! message must have reached every member exactly once and in `seq` order.
//!
//! `make test` runs a short form; `make chaos` sets `CONFAB_CHAOS_SECS` for a longer one.

use confab_tests::chaos::{Client, Figures, Ports};
use confab_tests::process::{NodeProcess, PrivatePostgres, PrivateRedis};
use confab_tests::{create_database, Http};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Env {
    db: String,
    redis: String,
    prefix: String,
}

async fn start_node(env: &Env, name: &str) -> NodeProcess {
    let envs: Vec<(&str, String)> = vec![
        ("CONFAB__DATABASE__URL", env.db.clone()),
        ("CONFAB__DATABASE__ACQUIRE_TIMEOUT_MS", "1000".into()),
        ("CONFAB__REDIS__URL", env.redis.clone()),
        ("CONFAB__REDIS__KEY_PREFIX", env.prefix.clone()),
        ("CONFAB__REDIS__RECONNECT_MAX_MS", "500".into()),
        ("CONFAB__REDIS__PROBE_INTERVAL_MS", "500".into()),
        ("CONFAB__REDIS__PROBE_TIMEOUT_MS", "2000".into()),
        ("CONFAB__NODE__ID", name.into()),
        ("CONFAB__CLUSTER__REPLICAS", "3".into()),
        ("CONFAB__AUTH__ARGON2_MEMORY_KIB", "256".into()),
        ("CONFAB__AUTH__ARGON2_ITERATIONS", "1".into()),
        ("CONFAB__LIMITS__FRAMES_PER_SEC", "10000".into()),
        ("CONFAB__LIMITS__FRAMES_BURST", "10000".into()),
        ("CONFAB__LIMITS__USER_SENDS_PER_SEC", "10000".into()),
        ("CONFAB__LIMITS__USER_SENDS_BURST", "10000".into()),
        ("CONFAB__SESSION__OUTBOUND_QUEUE", "64".into()),
        ("CONFAB__DELIVERY__SWEEP_INTERVAL_MS", "500".into()),
        ("CONFAB__SHUTDOWN__DRAIN_TIMEOUT_SECS", "5".into()),
        ("CONFAB__PRESENCE__HEARTBEAT_INTERVAL_MS", "500".into()),
        ("CONFAB__PRESENCE__NODE_TTL_MS", "2000".into()),
    ];
    NodeProcess::start(&envs).await
}

fn secs() -> u64 {
    std::env::var("CONFAB_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
        .max(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_reaches_every_member_exactly_once_in_order_through_chaos() {
    let total = secs();
    let step = Duration::from_millis(total * 1000 / 10);
    let mut pg = PrivatePostgres::start().await;
    let mut redis = PrivateRedis::start().await;
    let env = Env {
        db: create_database(&pg.admin_url()).await,
        redis: redis.url(),
        prefix: format!("chaos{}", uuid::Uuid::new_v4().simple()),
    };
    let names = ["chaos-a", "chaos-b", "chaos-c"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(start_node(&env, n).await);
    }
    let ports = Ports::default();
    ports.set(nodes.iter().map(|n| n.port).collect());

    // 12 users in 3 shared threads (everyone in every thread).
    let http = Http::new(nodes[0].http_base());
    let mut users = Vec::new();
    for i in 0..12 {
        let name = format!(
            "chaos{i}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        users.push(http.register_and_login(&name, "password123").await);
    }
    let others: Vec<&confab_protocol::UserRef> = users[1..].iter().map(|(u, _)| u).collect();
    let mut threads = Vec::new();
    for t in 0..3 {
        threads.push(
            http.create_thread(&users[0].1, &others, Some(&format!("chaos room {t}")))
                .await,
        );
    }

    let figures = Arc::new(Figures::default());
    let stop_sending = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let stalls: Vec<Arc<AtomicBool>> = (0..users.len())
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut tasks = Vec::new();
    for (i, (_u, token)) in users.iter().enumerate() {
        let client = Client {
            token: token.clone(),
            threads: threads.clone(),
            index: i,
            stop_sending: stop_sending.clone(),
            finish: finish.clone(),
            stall: stalls[i].clone(),
            interval: Duration::from_millis(150),
        };
        tasks.push(tokio::spawn(client.run(ports.clone(), figures.clone())));
    }

    tokio::time::sleep(step).await;
    eprintln!("chaos: SIGKILL {}", names[2]);
    nodes[2].kill9();
    ports.set(vec![nodes[0].port, nodes[1].port]);
    tokio::time::sleep(step).await;
    nodes[2] = start_node(&env, names[2]).await;
    ports.set(nodes.iter().map(|n| n.port).collect());

    eprintln!("chaos: stall a client");
    stalls[5].store(true, Ordering::Relaxed);
    tokio::time::sleep(step).await;

    eprintln!("chaos: restart redis");
    redis.stop();
    tokio::time::sleep(step / 2).await;
    redis.restart().await;
    stalls[5].store(false, Ordering::Relaxed);
    tokio::time::sleep(step).await;

    eprintln!("chaos: restart postgres");
    pg.stop().await;
    tokio::time::sleep(step / 2).await;
    pg.restart().await;
    tokio::time::sleep(step).await;

    eprintln!("chaos: rolling restart");
    for i in 0..nodes.len() {
        let live: Vec<u16> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.port)
            .collect();
        ports.set(live);
        nodes[i].terminate().await;
        nodes[i] = start_node(&env, names[i]).await;
        ports.set(nodes.iter().map(|n| n.port).collect());
        tokio::time::sleep(step / 3).await;
    }
    tokio::time::sleep(step).await;

    // Stop creating messages; wait for every one to be acknowledged (clients retry).
    stop_sending.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // A client may be between "tick fired" and "message created" when the flag flips: wait
    // until the count of created messages is stable and every one of them is acknowledged.
    let mut stable = 0;
    let mut seen = u64::MAX;
    while stable < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends never acknowledged: created {} acked {}",
            figures.created.load(Ordering::Relaxed),
            figures.acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let created = figures.created.load(Ordering::Relaxed);
        let acked = figures.acked.load(Ordering::Relaxed);
        if created == seen && acked == created {
            stable += 1;
        } else {
            stable = 0;
        }
        seen = created;
    }
    // Every member must now catch up to every thread's head (node 0 moved in the roll).
    let http = Http::new(nodes[0].http_base());
    let mut heads = Vec::new();
    for t in &threads {
        let (s, page) = http
            .get(
                &format!("/api/v1/threads/{t}/messages?limit=1"),
                Some(&users[0].1),
            )
            .await;
        assert_eq!(s, 200, "{page}");
        heads.push(page["messages"][0]["seq"].as_i64().unwrap_or(0));
    }
    let expected: u64 = heads.iter().map(|h| *h as u64).sum::<u64>() * users.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while figures.delivered.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finish.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|e| panic!("client task: {e}")));
    }

    let f = &figures;
    let closes = f
        .closes
        .lock()
        .map(|c| format!("{c:?}"))
        .unwrap_or_default();
    eprintln!(
        "chaos figures: created {} sent {} acked {} refused {} delivered {} (expected {expected}) duplicates {} lost {} reconnects {} closes {closes}",
        f.created.load(Ordering::Relaxed),
        f.sent.load(Ordering::Relaxed),
        f.acked.load(Ordering::Relaxed),
        f.refused.load(Ordering::Relaxed),
        f.delivered.load(Ordering::Relaxed),
        f.duplicates.load(Ordering::Relaxed),
        f.lost.load(Ordering::Relaxed),
        f.reconnects.load(Ordering::Relaxed),
    );
    assert_eq!(
        f.duplicates.load(Ordering::Relaxed),
        0,
        "duplicates delivered"
    );
    assert_eq!(f.lost.load(Ordering::Relaxed), 0, "holes in delivery");
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.unacked, 0, "client {i} has unacknowledged sends");
        for (t, head) in threads.iter().zip(&heads) {
            assert_eq!(
                o.last.get(t).copied().unwrap_or(0),
                *head,
                "client {i} did not reach the head of {t}"
            );
        }
        for (t, seq) in &o.acked {
            let head = threads
                .iter()
                .position(|x| x == t)
                .map(|p| heads[p])
                .unwrap_or(0);
            assert!(
                *seq >= 1 && *seq <= head,
                "acked seq {seq} beyond head {head}"
            );
        }
    }
    assert_eq!(f.delivered.load(Ordering::Relaxed), expected);
    assert!(
        f.reconnects.load(Ordering::Relaxed) > 0,
        "the faults never forced a reconnect"
    );
    for n in nodes.iter_mut() {
        n.terminate().await;
    }
}
