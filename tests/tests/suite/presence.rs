//! Presence: online/offline events across nodes, multi-device, the grace period, the query
//! endpoint and its authorization, drained nodes, and SIGKILLed and restarted node processes.

use chrono::{DateTime, Utc};
use confab_protocol::UserRef;
use confab_tests::process::NodeProcess;
use confab_tests::{both_backends, Backend, Cluster, Http, Ws};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A `presence` frame about `user` with `status`.
pub(crate) fn presence_of(user: &UserRef, status: &'static str) -> impl Fn(&Value) -> bool {
    let id = json!(user.id);
    move |f| f["type"] == "presence" && f["user_id"] == id && f["status"] == status
}

/// Any `presence` frame about `user`.
fn any_presence_of(user: &UserRef) -> impl Fn(&Value) -> bool {
    let id = json!(user.id);
    move |f| f["type"] == "presence" && f["user_id"] == id
}

fn last_seen(f: &Value) -> DateTime<Utc> {
    f["last_seen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no last_seen in {f}"))
}

/// `GET /api/v1/presence?user_ids=…` as `token`.
pub(crate) async fn query(http: &Http, token: &str, users: &[&UserRef]) -> (u16, Value) {
    let ids: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
    http.get(
        &format!("/api/v1/presence?user_ids={}", ids.join(",")),
        Some(token),
    )
    .await
}

both_backends!(
    online_and_offline_reach_co_members_on_other_nodes,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        c.http(0).create_thread(&at, &[&bob], None).await;
        let mut alice = c.ws(0, &at).await;

        let bob_ws = c.ws(1, &bt).await;
        let on = alice.recv_until(presence_of(&bob, "online")).await;
        assert!(on["last_seen"].is_null(), "{on}");

        let closed_at = Utc::now();
        bob_ws.close().await;
        let off = alice.recv_until(presence_of(&bob, "offline")).await;
        let seen = last_seen(&off);
        assert!(
            seen >= closed_at - chrono::Duration::seconds(1) && seen <= Utc::now(),
            "last_seen {seen} vs close at {closed_at}"
        );
        // Exactly once.
        alice
            .expect_none(any_presence_of(&bob), Duration::from_millis(1500))
            .await;
        c.stop().await;
    }
);

both_backends!(
    a_user_stays_online_until_their_last_device_leaves,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        c.http(0).create_thread(&at, &[&bob], None).await;
        let mut alice = c.ws(0, &at).await;

        let phone = c.ws(0, &bt).await;
        alice.recv_until(presence_of(&bob, "online")).await;
        let laptop = c.ws(1, &bt).await;
        // The second device changes nothing for anyone.
        alice
            .expect_none(any_presence_of(&bob), Duration::from_millis(500))
            .await;

        phone.close().await;
        // Well past the grace period (300 ms): still online, because the laptop is.
        alice
            .expect_none(any_presence_of(&bob), Duration::from_millis(1500))
            .await;
        let (s, body) = query(&c.http(1), &at, &[&bob]).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body[0]["status"], "online", "{body}");

        laptop.close().await;
        alice.recv_until(presence_of(&bob, "offline")).await;
        alice
            .expect_none(any_presence_of(&bob), Duration::from_millis(1000))
            .await;
        c.stop().await;
    }
);

both_backends!(
    users_who_share_no_thread_hear_nothing,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let (dave, _dt) = c.user("dave").await;
        c.http(0).create_thread(&at, &[&bob], None).await;
        // Carol has threads, just none with bob.
        c.http(0).create_thread(&ct, &[&dave], None).await;
        let mut alice = c.ws(0, &at).await;
        let mut carol_ws = c.ws(1, &ct).await;

        let bob_ws = c.ws(1, &bt).await;
        alice.recv_until(presence_of(&bob, "online")).await;
        bob_ws.close().await;
        alice.recv_until(presence_of(&bob, "offline")).await;
        // Alice heard both; carol (on bob's node) heard nothing about bob, nor about alice.
        carol_ws
            .expect_none(|f| f["type"] == "presence", Duration::from_millis(800))
            .await;
        c.stop().await;
    }
);

both_backends!(
    a_quick_reconnect_sends_neither_offline_nor_online,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| s.presence.offline_grace_ms = 1500).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        c.http(0).create_thread(&at, &[&bob], None).await;
        let mut alice = c.ws(0, &at).await;
        let bob_ws = c.ws(1, &bt).await;
        alice.recv_until(presence_of(&bob, "online")).await;

        bob_ws.close().await;
        // Let the close land (well inside the 1.5 s grace) before coming back on the other node.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (s, body) = query(&c.http(0), &at, &[&bob]).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body[0]["status"], "online", "within the grace: {body}");
        let bob_again = c.ws(0, &bt).await;
        alice
            .expect_none(any_presence_of(&bob), Duration::from_millis(2500))
            .await;

        // The grace period does end: a real disconnect is reported.
        bob_again.close().await;
        let started = Instant::now();
        alice.recv_until(presence_of(&bob, "offline")).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1200),
            "offline came before the grace period: {:?}",
            started.elapsed()
        );
        c.stop().await;
    }
);

both_backends!(
    presence_query_answers_for_co_members_and_self,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (dave, _dt) = c.user("dave").await;
        c.http(0)
            .create_thread(&at, &[&bob, &dave], Some("crew"))
            .await;
        let mut alice_ws = c.ws(0, &at).await;
        let bob_ws = c.ws(1, &bt).await;
        alice_ws.recv_until(presence_of(&bob, "online")).await;

        let (s, body) = query(&c.http(1), &at, &[&bob, &dave, &alice, &bob]).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            body,
            json!([
                {"user_id": bob.id, "status": "online", "last_seen": null},
                {"user_id": dave.id, "status": "offline", "last_seen": null},
                {"user_id": alice.id, "status": "online", "last_seen": null},
            ])
        );

        bob_ws.close().await;
        let off = alice_ws.recv_until(presence_of(&bob, "offline")).await;
        let (s, body) = query(&c.http(0), &at, &[&bob]).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body[0]["status"], "offline", "{body}");
        assert_eq!(
            body[0]["last_seen"]
                .as_str()
                .and_then(|s| s.parse::<DateTime<Utc>>().ok()),
            Some(last_seen(&off)),
            "{body} vs {off}"
        );
        c.stop().await;
    }
);

both_backends!(
    presence_query_refuses_strangers_and_more_than_100_ids,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, _bt) = c.user("bob").await;
        let (dave, _dt) = c.user("dave").await;
        let (carol, ct) = c.user("carol").await;
        c.http(0)
            .create_thread(&at, &[&bob, &dave], Some("crew"))
            .await;
        c.http(0).create_thread(&ct, &[&dave], None).await;
        let http = c.http(0);

        for users in [vec![&carol], vec![&bob, &carol]] {
            let (s, body) = query(&http, &at, &users).await;
            assert_eq!(s, 403, "{body}");
            assert_eq!(body["code"], "forbidden", "{body}");
        }
        // Sharing a thread with dave does not make carol visible to bob's friends, nor bob to
        // carol.
        let (s, body) = query(&http, &ct, &[&bob]).await;
        assert_eq!(
            (s, body["code"].clone()),
            (403, json!("forbidden")),
            "{body}"
        );

        // 100 ids are fine (duplicates answered once) …
        let hundred: Vec<&UserRef> = (0..100)
            .map(|i| if i % 2 == 0 { &bob } else { &dave })
            .collect();
        let (s, body) = query(&http, &at, &hundred).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
        // … 101 are too many.
        let mut too_many = hundred.clone();
        too_many.push(&bob);
        let (s, body) = query(&http, &at, &too_many).await;
        assert_eq!(
            (s, body["code"].clone()),
            (413, json!("too_large")),
            "{body}"
        );

        for path in [
            "/api/v1/presence?user_ids=",
            "/api/v1/presence?user_ids=not-a-uuid",
            "/api/v1/presence",
        ] {
            let (s, body) = http.get(path, Some(&at)).await;
            assert_eq!(
                (s, body["code"].clone()),
                (400, json!("bad_request")),
                "{path}: {body}"
            );
        }
        let (s, _) = http
            .get(&format!("/api/v1/presence?user_ids={}", bob.id), None)
            .await;
        assert_eq!(s, 401);
        c.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_users_go_offline_promptly() {
    let mut c = Cluster::start(Backend::Cluster, 2).await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    c.http(0).create_thread(&at, &[&bob], None).await;
    let mut alice = c.ws(0, &at).await;
    let _bob_ws = c.ws(1, &bt).await;
    alice.recv_until(presence_of(&bob, "online")).await;

    let node1 = c.nodes.remove(1);
    let started = Instant::now();
    node1.stop().await;
    alice.recv_until(presence_of(&bob, "offline")).await;
    // Far sooner than the heartbeat TTL would allow if the node had not said goodbye… and once.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    alice
        .expect_none(any_presence_of(&bob), Duration::from_millis(1500))
        .await;
    c.stop().await;
}

/// The sum of `family{kind="threads",…}` on a node's `/metrics`.
async fn thread_lookups(http: &Http, family: &str) -> f64 {
    let (status, text) = http.get_text("/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    let prefix = format!("{family}{{kind=\"threads\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Read frames until a `presence` frame with `status` has come for every user in `users`.
async fn presence_of_all(ws: &mut Ws, users: &[UserRef], status: &'static str) {
    let mut missing: HashSet<String> = users.iter().map(|u| u.id.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(f) = ws.next_frame(left).await else {
            panic!("no {status} presence for {} users", missing.len());
        };
        if f["type"] == "presence" && f["status"] == status {
            missing.remove(f["user_id"].as_str().unwrap_or_default());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_disconnect_settles_every_offline_through_the_batched_lookups() {
    // After a crowd disconnects at once (a node's clients dropping, a load balancer resetting),
    // every offline settles in the same moment and needs the user's threads. One query each
    // took the whole database pool: 19,000 closes stalled the node's connects for seconds
    // (5,678 pool waits over 2 s, measured). They go through the connect lookups' batching.
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (_alice, at) = c.user("alice").await;
    const N: usize = 40;
    let mut crowd = Vec::new();
    for i in 0..N {
        crowd.push(c.user(&format!("crowd{i}")).await);
    }
    let users: Vec<UserRef> = crowd.iter().map(|(u, _)| u.clone()).collect();
    let refs: Vec<&UserRef> = users.iter().collect();
    c.http(0).create_thread(&at, &refs, Some("crowd")).await;
    let mut alice = c.ws(0, &at).await;
    let mut sockets = Vec::new();
    for (_, token) in &crowd {
        sockets.push(c.ws(1, token).await);
    }
    presence_of_all(&mut alice, &users, "online").await;

    let node1 = c.http(1);
    let keys_before = thread_lookups(&node1, "confab_db_lookups_total").await;
    let queries_before = thread_lookups(&node1, "confab_db_lookup_queries_total").await;
    futures_util::future::join_all(sockets.into_iter().map(Ws::close)).await;
    // Every offline still reaches the co-member.
    presence_of_all(&mut alice, &users, "offline").await;
    let keys = thread_lookups(&node1, "confab_db_lookups_total").await - keys_before;
    let queries = thread_lookups(&node1, "confab_db_lookup_queries_total").await - queries_before;
    assert!(
        keys >= N as f64,
        "{N} offlines settled, but only {keys} thread lookups went through the batching"
    );
    assert!(queries <= keys, "{queries} queries for {keys} lookups");
    eprintln!("{N} offlines: {keys} thread lookups in {queries} queries");
    c.stop().await;
}

/// `confab` processes sharing a fresh database and a fresh Redis prefix, with presence timers
/// short enough for a test (also used by the load tester's crash smoke run).
pub(crate) struct ProcessCluster {
    db: String,
    prefix: String,
    ttl_ms: u64,
}

pub(crate) const HEARTBEAT_MS: u64 = 200;
pub(crate) const GRACE_MS: u64 = 300;

impl ProcessCluster {
    /// A fresh database and prefix; the nodes' heartbeat keys live `ttl_ms`.
    pub(crate) async fn new(ttl_ms: u64) -> Self {
        Self {
            db: confab_tests::create_database(&confab_tests::pg_admin_url()).await,
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            ttl_ms,
        }
    }

    /// Start a node named `name` (a restart under the same name is the same node).
    pub(crate) async fn start(&self, name: &str) -> NodeProcess {
        NodeProcess::start(&[
            ("CONFAB__DATABASE__URL", self.db.clone()),
            ("CONFAB__REDIS__URL", confab_tests::redis_url()),
            ("CONFAB__REDIS__KEY_PREFIX", self.prefix.clone()),
            ("CONFAB__NODE__ID", format!("{}-{name}", self.prefix)),
            ("CONFAB__CLUSTER__REPLICAS", "2".into()),
            (
                "CONFAB__PRESENCE__HEARTBEAT_INTERVAL_MS",
                HEARTBEAT_MS.to_string(),
            ),
            ("CONFAB__PRESENCE__NODE_TTL_MS", self.ttl_ms.to_string()),
            ("CONFAB__PRESENCE__OFFLINE_GRACE_MS", GRACE_MS.to_string()),
            ("CONFAB__AUTH__ARGON2_MEMORY_KIB", "256".into()),
            ("CONFAB__AUTH__ARGON2_ITERATIONS", "1".into()),
        ])
        .await
    }
}

fn unique(name: &str) -> String {
    format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_users_go_offline_once_within_the_bound_and_its_restart_is_clean() {
    const TTL_MS: u64 = 1000;
    let pc = ProcessCluster::new(TTL_MS).await;
    let n0 = pc.start("a").await;
    let mut n1 = pc.start("b").await;
    let h0 = Http::new(n0.http_base());
    let (_alice, at) = h0.register_and_login(&unique("alice"), "password123").await;
    let (bob, bt) = h0.register_and_login(&unique("bob"), "password123").await;
    let (carol, ct) = h0.register_and_login(&unique("carol"), "password123").await;
    let thread = h0.create_thread(&at, &[&bob, &carol], Some("crew")).await;

    let mut alice = Ws::connect(&n0.ws_base(), &at).await;
    let _bob_ws = Ws::connect(&n1.ws_base(), &bt).await;
    alice.recv_until(presence_of(&bob, "online")).await;
    // Carol has two devices: one on each node. Losing one node must not take her offline.
    let _carol_phone = Ws::connect(&n1.ws_base(), &ct).await;
    alice.recv_until(presence_of(&carol, "online")).await;
    let _carol_laptop = Ws::connect(&n0.ws_base(), &ct).await;

    n1.kill9();
    let killed = Instant::now();
    // Worst case: the heartbeat key expires (TTL), a survivor's next sweep (heartbeat interval),
    // then the grace period; plus slack for a loaded test machine.
    let bound = Duration::from_millis(TTL_MS + HEARTBEAT_MS + GRACE_MS) + Duration::from_secs(3);
    let off = alice
        .recv_until_within(presence_of(&bob, "offline"), bound)
        .await;
    let took = killed.elapsed();
    assert!(took <= bound, "offline after {took:?}");
    assert!(
        took >= Duration::from_millis(TTL_MS / 2),
        "offline after {took:?}: before the heartbeat could have expired?"
    );
    assert!(last_seen(&off) <= Utc::now());
    // Exactly once, and nothing about carol, who still has her laptop.
    alice
        .expect_none(
            |f| {
                f["type"] == "presence"
                    && (f["user_id"] == json!(bob.id) || f["user_id"] == json!(carol.id))
            },
            Duration::from_millis(2000),
        )
        .await;
    let (s, body) = query(&h0, &at, &[&bob, &carol]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body[0]["status"], "offline", "{body}");
    assert_eq!(body[1]["status"], "online", "{body}");

    // Restarted under the same name: it serves, counts bob again, and forgets him again.
    let n1 = pc.start("b").await;
    let mut bob_ws = Ws::connect(&n1.ws_base(), &bt).await;
    alice.recv_until(presence_of(&bob, "online")).await;
    let ack = bob_ws.send_msg(thread, "back", "I'm back").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    alice
        .recv_until(|f| f["type"] == "message" && f["body"] == "I'm back")
        .await;
    bob_ws.close().await;
    alice.recv_until(presence_of(&bob, "offline")).await;
    let (s, body) = query(&h0, &at, &[&bob, &carol]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body[0]["status"], "offline", "nobody stuck online: {body}");
    assert_eq!(body[1]["status"], "online", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_name_clears_what_its_previous_life_left() {
    // A heartbeat TTL far longer than the test: only the restart itself can clear bob.
    let pc = ProcessCluster::new(120_000).await;
    let n0 = pc.start("a").await;
    let mut n1 = pc.start("b").await;
    let h0 = Http::new(n0.http_base());
    let (_alice, at) = h0.register_and_login(&unique("alice"), "password123").await;
    let (bob, bt) = h0.register_and_login(&unique("bob"), "password123").await;
    h0.create_thread(&at, &[&bob], None).await;
    let mut alice = Ws::connect(&n0.ws_base(), &at).await;
    let _bob_ws = Ws::connect(&n1.ws_base(), &bt).await;
    alice.recv_until(presence_of(&bob, "online")).await;

    n1.kill9();
    // Nobody can tell yet: the dead node's heartbeat is still within its TTL.
    alice
        .expect_none(any_presence_of(&bob), Duration::from_millis(1000))
        .await;
    let n1 = pc.start("b").await;
    alice.recv_until(presence_of(&bob, "offline")).await;
    alice
        .expect_none(any_presence_of(&bob), Duration::from_millis(1500))
        .await;
    let (s, body) = query(&h0, &at, &[&bob]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body[0]["status"], "offline", "{body}");

    // And the restarted node counts new sessions normally.
    let bob_ws = Ws::connect(&n1.ws_base(), &bt).await;
    alice.recv_until(presence_of(&bob, "online")).await;
    bob_ws.close().await;
    alice.recv_until(presence_of(&bob, "offline")).await;
}
