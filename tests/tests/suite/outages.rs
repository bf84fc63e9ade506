//! Dependency outages: Redis down or silently stalled, Postgres unable to answer a session's
//! start. Private Redis instances only — the shared servers are never touched.

use confab_tests::process::PrivateRedis;
use confab_tests::proxy::Proxy;
use confab_tests::{raw_upgrade, refused_upgrade};
use confab_tests::{Backend, Cluster};
use secrecy::SecretString;
use std::time::Duration;

async fn wait_ready(c: &Cluster, i: usize, want: u16, within: Duration) {
    let h = c.http(i);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (s, body) = h.get("/readyz", None).await;
        if s == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz stayed {s} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acked_while_redis_is_down_reach_members_when_it_is_back() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let c = Cluster::start_with(Backend::Cluster, 2, |s| {
        s.redis.url = SecretString::from(url.clone());
        s.redis.reconnect_max_ms = 300;
    })
    .await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], None).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    a.send_msg(thread, "r1", "before").await;
    b.recv_until(|f| f["body"] == "before").await;
    wait_ready(&c, 1, 200, Duration::from_secs(5)).await;

    redis.stop();
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    // Postgres is fine: sends are stored and acknowledged during the outage.
    for i in 0..3 {
        let ack = a
            .send_msg(thread, &format!("d{i}"), &format!("during{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    redis.restart().await;
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    // The same WebSocket (it was never dropped) gets them, in order, exactly once.
    for i in 0..3 {
        let f = b.recv_until(|f| f["type"] == "message").await;
        assert_eq!(f["body"], format!("during{i}"));
        assert_eq!(f["seq"], 2 + i);
    }
    // And live delivery works again.
    a.send_msg(thread, "r2", "after").await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("after"), Some(5))
    );
    assert!(c.node(1).state.metrics.pubsub_reconnects.get() >= 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_stalled_subscription_is_detected_and_repaired() {
    let redis = PrivateRedis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let direct = redis.url();
    let proxied = proxy.redis_url();
    let c = Cluster::start_each(Backend::Cluster, 2, |i, s| {
        s.redis.url = SecretString::from(if i == 1 {
            proxied.clone()
        } else {
            direct.clone()
        });
        s.redis.probe_interval_ms = 200;
        s.redis.probe_timeout_ms = 1000;
        s.redis.reconnect_max_ms = 300;
    })
    .await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], None).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    a.send_msg(thread, "s1", "before").await;
    b.recv_until(|f| f["body"] == "before").await;

    // The connection stays open but nothing comes back.
    proxy.freeze();
    a.send_msg(thread, "s2", "during the stall").await;
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    let stalls = c.node(1).state.metrics.pubsub_stalls.get();
    assert!(stalls >= 1, "stall not detected");
    proxy.thaw();
    wait_ready(&c, 1, 200, Duration::from_secs(20)).await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("during the stall"), Some(2))
    );
    a.send_msg(thread, "s3", "after").await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(f["seq"], 3);
    c.stop().await;
}

/// A node that cannot read a user's threads refuses the WebSocket before upgrading it — 503
/// `unavailable` with `Retry-After`, like every other refusal of `/ws` — and keeps no trace of
/// the session; once the database answers again the same token connects and gets its hello.
/// (The database is made unable to answer by a lock on `thread_members` held by this test, with
/// the node's statements limited to 1.5 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_start_is_refused_before_the_upgrade() {
    let c = Cluster::start_with(Backend::Cluster, 1, |s| {
        let url = format!(
            "{}?options[statement_timeout]=1500",
            secrecy::ExposeSecret::expose_secret(&s.database.url)
        );
        s.database.url = SecretString::from(url);
    })
    .await;
    let (_u, token) = c.user("blocked").await;
    let (_db, tx) = lock_thread_members(&c).await;

    let (status, retry, body) = refused_upgrade(&c.node(0).http_base(), &token).await;
    assert_eq!(status, 503, "not upgraded: {body}");
    assert!(retry >= 1, "Retry-After must be set");
    assert_eq!(body["code"], "unavailable", "{body}");
    let m = &c.node(0).state.metrics;
    assert_eq!(m.connects_refused.get(), 1);
    assert_eq!(m.connections_open.get(), 0, "the session left nothing open");
    assert_eq!(c.node(0).state.hub.session_count(), 0, "nor in the hub");

    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    let ws = c.ws(0, &token).await; // reads the hello
    assert!(ws.hello["session_id"].is_string(), "{}", ws.hello);
    assert_eq!(m.connections_open.get(), 1);
    ws.close().await;
    c.stop().await;
}

/// A client that goes away while its session is starting leaves nothing behind: the start runs
/// on a task of its own (actix drops a handler's future when its client leaves), finishes, and
/// cleans up when nobody waits for its answer. The start is held by a lock on `thread_members`
/// while the client resets its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_session_starts_leaves_nothing_behind() {
    let c = Cluster::start(Backend::Cluster, 1).await;
    let (_u, token) = c.user("leaver").await;
    let (_db, tx) = lock_thread_members(&c).await;

    let m = &c.node(0).state.metrics;
    let tcp = raw_upgrade(c.node(0).port, &token).await;
    wait_for("the session to start starting", || {
        m.connections_open.get() == 1
    })
    .await;
    // A reset, not a polite close: the node's dispatcher sees the error and drops the request.
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(300)).await;

    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    wait_for("the session to be cleaned up", || {
        m.connections_open.get() == 0 && c.node(0).state.hub.session_count() == 0
    })
    .await;
    // And the node serves the same user as before.
    let ws = c.ws(0, &token).await;
    assert!(ws.hello["session_id"].is_string(), "{}", ws.hello);
    ws.close().await;
    c.stop().await;
}

/// Poll `done` every 20 ms for up to 10 s.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hold `thread_members` locked against everything (reads too) until the returned transaction
/// ends: a session's start, which reads the user's threads, then waits — or times out.
async fn lock_thread_members(
    c: &Cluster,
) -> (sea_orm::DatabaseConnection, sea_orm::DatabaseTransaction) {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let db_url = c.db_url.clone().unwrap_or_default();
    let db = Database::connect(db_url.as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    tx.execute_unprepared("LOCK TABLE thread_members IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (db, tx)
}

/// A member added to a thread starts receiving it after the join's `last_seq` — also when a
/// message sent right after the join reaches a node before the join's announcement does (the
/// announcement is published by the node that made the join, the message by the sender's
/// node; Redis orders them by arrival). Here the join is made on node 1, whose requests to Redis
/// are held back, and the message is sent on node 0, where carol is connected and the thread
/// already has local sessions: node 0 hands the message to them before it hears of carol. Her
/// session must still get it, without waiting for a later message to reveal the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_overtakes_the_join_announcement_still_reaches_the_new_member() {
    let redis = PrivateRedis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let direct = redis.url();
    let proxied = proxy.redis_url();
    let c = Cluster::start_each(Backend::Cluster, 2, |i, s| {
        s.redis.url = SecretString::from(if i == 1 {
            proxied.clone()
        } else {
            direct.clone()
        });
    })
    .await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let (carol, ct) = c.user("carol").await;
    let thread = c
        .http(0)
        .create_thread(&at, &[&bob], Some("late announcement"))
        .await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(0, &bt).await;
    let mut cw = c.ws(0, &ct).await;
    a.send_msg(thread, "s1", "first").await;
    b.recv_until(|f| f["body"] == "first").await;

    proxy.hold_requests();
    let adder = {
        let h = c.http(1);
        let at = at.clone();
        let body = serde_json::json!({"user_ids": [carol.id.to_string()]});
        tokio::spawn(async move {
            h.post(
                &format!("/api/v1/threads/{thread}/members"),
                Some(&at),
                body,
            )
            .await
        })
    };
    // The join is committed (carol may read the thread) while its announcement is held.
    let history = format!("/api/v1/threads/{thread}/messages");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.http(0).get(&history, Some(&ct)).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the join was never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = a.send_msg(thread, "s2", "second").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    b.recv_until(|f| f["body"] == "second").await;
    proxy.release_requests();
    let (s, body) = adder
        .await
        .unwrap_or_else(|e| panic!("add members task: {e}"));
    assert_eq!(s, 200, "{body}");

    cw.recv_until(|f| f["type"] == "thread_created").await;
    let f = cw
        .recv_until_within(|f| f["type"] == "message", Duration::from_secs(5))
        .await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("second"), Some(2)),
        "{f}"
    );
    c.stop().await;
}
