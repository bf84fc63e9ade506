//! Dependency outages: Redis down or silently stalled, Postgres unable to answer a session's
//! start. Private Redis instances only — the shared servers are never touched.

use crate::presence::{presence_of, query};
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

/// Two nodes on a private Redis; node 1 reaches it through a proxy the test can freeze (replies
/// stop), hold (requests wait) or cut.
async fn node1_behind_a_proxy(
    tweak: impl Fn(&mut confab_gateway::Settings),
) -> (PrivateRedis, Proxy, Cluster) {
    node_behind_a_proxy(1, tweak).await
}

/// Two nodes on a private Redis; node `proxied_node` reaches it through a proxy.
async fn node_behind_a_proxy(
    proxied_node: usize,
    tweak: impl Fn(&mut confab_gateway::Settings),
) -> (PrivateRedis, Proxy, Cluster) {
    let redis = PrivateRedis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let direct = redis.url();
    let proxied = proxy.redis_url();
    let c = Cluster::start_each(Backend::Cluster, 2, |i, s| {
        s.redis.url = SecretString::from(if i == proxied_node {
            proxied.clone()
        } else {
            direct.clone()
        });
        tweak(s);
    })
    .await;
    (redis, proxy, c)
}

/// After a refused leave that may have gone out: bob's session on node 1 is closed with 1012
/// (resync), and the session he opens again gets the thread's next message — he is still a
/// member, and receiving.
async fn sent_back_still_a_member(
    c: &Cluster,
    a: &mut confab_tests::Ws,
    b: &mut confab_tests::Ws,
    bt: &str,
    thread: confab_protocol::ThreadId,
) {
    assert_eq!(b.expect_close(Duration::from_secs(15)).await, Some(1012));
    let mut b = c.ws(1, bt).await;
    a.send_msg(thread, "s1", "still yours").await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("still yours"), Some(1))
    );
}

/// Alice and bob, and a room of the two that alice made through node 0: `(alice's token, bob,
/// bob's token, the room)`.
async fn alice_and_bob_in(
    c: &Cluster,
    room: Option<&str>,
) -> (
    String,
    confab_protocol::UserRef,
    String,
    confab_protocol::ThreadId,
) {
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], room).await;
    (at, bob, bt, thread)
}

/// Poll `GET path` on node `i` as `token` until it answers `want`.
async fn wait_status(c: &Cluster, i: usize, path: &str, token: &str, want: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.http(i).get(path, Some(token)).await.0 != want {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acked_while_redis_is_down_reach_members_when_it_is_back() {
    let c = acked_while_redis_is_down(3, |_| {}).await;
    c.stop().await;
}

/// A gap longer than `delivery.repair_page_max` is read a page at a time, each page right after
/// the one before: the member still gets every message in order, without waiting for a sweep
/// (an hour away here) or a later message to reveal the rest. One repair at a time
/// (`delivery.repair_concurrency`) is enough: a page gives its turn back before the next one
/// asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_gap_is_read_back_in_pages_one_after_the_other() {
    let c = acked_while_redis_is_down(7, |s| {
        s.delivery.repair_page_max = 2;
        s.delivery.repair_concurrency = 1;
        s.delivery.sweep_interval_ms = 3_600_000;
    })
    .await;
    let node_repairs = c
        .node(1)
        .state
        .metrics
        .gap_repairs
        .with_label_values(&["node"])
        .get();
    // Seqs 2-8 in pages of 2: four reads (the sweep after the reconnect starts them).
    assert!(node_repairs >= 4, "{node_repairs} node repairs");
    c.stop().await;
}

/// A gap longer than a session's queue still reaches a client that reads: the next page waits
/// until the thread's sessions have room for it in their queues. Here a queue holds 4
/// frames, a page 3, and a session holds what it is given for 300 ms before writing it
/// (`session.write_delay_ms`): a page handed out straight after the one before would overflow
/// bob's queue and close him as a slow consumer. A message sent live after the gap (held
/// behind it on node 1, so every page's drain finds a hole before it) must not change that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_a_session_queue_is_paced_to_the_session() {
    let c = Cluster::start_with(Backend::Cluster, 2, |s| {
        s.session.outbound_queue = 4;
        s.session.write_delay_ms = 300;
        s.delivery.repair_page_max = 3;
        s.delivery.sweep_interval_ms = 200;
    })
    .await;
    let (alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], Some("paced")).await;
    let mut b = c.ws(1, &bt).await;
    // Stored without a publish, as if pub/sub had lost them: only node 1's sweep finds them.
    let store = &c.node(0).state.store;
    for i in 0..10 {
        let stored = store
            .send_message(thread, alice.id, &format!("k{i}"), &format!("m{i}"))
            .await;
        assert!(
            matches!(stored, Ok(confab_persistence::SendOutcome::Stored(_))),
            "{stored:?}"
        );
    }
    // Over HTTP: a socket of alice's would bring bob a presence event, one frame more in the
    // 4 his queue holds.
    let (status, ack) = c
        .http(0)
        .post(
            &format!("/api/v1/threads/{thread}/messages"),
            Some(&at),
            serde_json::json!({"client_msg_id": "k10", "body": "m10"}),
        )
        .await;
    assert_eq!(
        (status, &ack["seq"]),
        (201, &serde_json::json!(11)),
        "{ack}"
    );
    for i in 0..11 {
        let f = b
            .recv_until_within(|f| f["type"] == "message", Duration::from_secs(10))
            .await;
        assert_eq!(
            (f["seq"].as_i64(), f["body"].as_str()),
            (Some(i + 1), Some(format!("m{i}").as_str()))
        );
    }
    c.stop().await;
}

/// Alice (node 0) and bob (node 1) share a room on a private Redis; alice sends `n` messages
/// while Redis is down (stored and acknowledged: Postgres is fine). Once Redis is back, bob's
/// WebSocket — never dropped — gets them in order, exactly once, and live delivery resumes.
/// `tweak` adjusts both nodes.
async fn acked_while_redis_is_down(
    n: i64,
    tweak: impl Fn(&mut confab_gateway::Settings),
) -> Cluster {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let c = Cluster::start_with(Backend::Cluster, 2, |s| {
        s.redis.url = SecretString::from(url.clone());
        s.redis.reconnect_max_ms = 300;
        tweak(s);
    })
    .await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, None).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    a.send_msg(thread, "r1", "before").await;
    b.recv_until(|f| f["body"] == "before").await;
    wait_ready(&c, 1, 200, Duration::from_secs(5)).await;

    redis.stop();
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    for i in 0..n {
        let ack = a
            .send_msg(thread, &format!("d{i}"), &format!("during{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    redis.restart().await;
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    for i in 0..n {
        let f = b.recv_until(|f| f["type"] == "message").await;
        assert_eq!(f["body"], format!("during{i}"));
        assert_eq!(f["seq"], 2 + i);
    }
    a.send_msg(thread, "r2", "after").await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("after"), Some(2 + n))
    );
    assert!(c.node(1).state.metrics.pubsub_reconnects.get() >= 1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_stalled_subscription_is_detected_and_repaired() {
    let (_redis, proxy, c) = node1_behind_a_proxy(|s| {
        s.redis.probe_interval_ms = 200;
        s.redis.probe_timeout_ms = 1000;
        s.redis.reconnect_max_ms = 300;
    })
    .await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, None).await;
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
    let (_redis, proxy, c) = node1_behind_a_proxy(|_| {}).await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, Some("late announcement")).await;
    let (carol, ct) = c.user("carol").await;
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
    wait_status(&c, 0, &history, &ct, 200, "the join was never committed").await;
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

/// The mirror case: a member who left never gets a message stored after the leave, even when
/// that message could reach the leaver's node before the leave's announcement. The leave is made
/// on node 1, whose requests to Redis are held back; bob's session is on node 0, where alice
/// sends. The leave is announced before it is stored, so while the announcement is held bob is
/// still a member (announced after, he was out at once, and alice's next message reached him
/// ahead of the announcement — this test's first version caught that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_after_a_leave_never_reaches_the_leaver() {
    let (_redis, proxy, c) = node1_behind_a_proxy(|_| {}).await;
    let (at, bob, bt, thread) = alice_and_bob_in(&c, Some("early leaver")).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(0, &bt).await;
    a.send_msg(thread, "s1", "first").await;
    b.recv_until(|f| f["body"] == "first").await;

    proxy.hold_requests();
    let leaver = {
        let h = c.http(1);
        let bt = bt.clone();
        tokio::spawn(async move {
            h.delete(&format!("/api/v1/threads/{thread}/members/me"), Some(&bt))
                .await
        })
    };
    let history = format!("/api/v1/threads/{thread}/messages");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, body) = c.http(0).get(&history, Some(&bt)).await;
    assert_eq!(
        s, 200,
        "bob was removed before the leave was announced: {body}"
    );
    proxy.release_requests();
    let (s, body) = leaver.await.unwrap_or_else(|e| panic!("leave task: {e}"));
    assert_eq!(s, 204, "{body}");
    let (s, body) = c.http(0).get(&history, Some(&bt)).await;
    assert_eq!(s, 403, "bob is out once the leave answered: {body}");
    let ack = a.send_msg(thread, "s2", "after bob left").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    // Everything bob's session writes up to its `member_left`, and a while after.
    let mut seen = Vec::new();
    loop {
        let f = b
            .next_frame(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no member_left; bob saw {seen:?}"));
        let done = f["type"] == "member_left" && f["user_id"] == bob.id.to_string();
        seen.push(f);
        if done {
            break;
        }
    }
    while let Some(f) = b.next_frame(Duration::from_millis(500)).await {
        seen.push(f);
    }
    assert!(
        !seen.iter().any(|f| f["type"] == "message" && f["seq"] == 2),
        "the leaver got a message stored after the leave: {seen:?}"
    );
    c.stop().await;
}

/// A leave whose removal the database refuses, after delivery to the leaver already stopped:
/// the leaver's sessions are closed with 1012 (reconnect and resume), so a member is never left
/// connected to a thread that no longer reaches them, and their new sessions get the thread
/// again (the nodes forget the `leaving` announcement). The refusal is a trigger in this test's
/// own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_the_database_refuses_sends_the_leavers_sessions_back_to_resume() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, Some("sticky")).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(0, &bt).await;
    a.send_msg(thread, "s1", "first").await;
    b.recv_until(|f| f["body"] == "first").await;
    let db = c.node(0).state.store.connection();
    for sql in [
        "CREATE FUNCTION refuse_leaves() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'leaves refused by this test'; END $$",
        "CREATE TRIGGER refuse_leaves BEFORE DELETE ON thread_members \
         FOR EACH ROW EXECUTE FUNCTION refuse_leaves()",
    ] {
        db.execute(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let (s, body) = c
        .http(1)
        .delete(&format!("/api/v1/threads/{thread}/members/me"), Some(&bt))
        .await;
    assert!(s >= 500, "the leave failed: {s} {body}");
    assert_eq!(b.expect_close(Duration::from_secs(5)).await, Some(1012));
    let (s, body) = c
        .http(0)
        .get(&format!("/api/v1/threads/{thread}/messages"), Some(&bt))
        .await;
    assert_eq!(s, 200, "bob is still a member: {body}");
    let mut b = c.ws(1, &bt).await;
    a.send_msg(thread, "s2", "still here").await;
    let f = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("still here"), Some(2))
    );
    c.stop().await;
}

/// A session the leaver opens *while* the leave is under way — after its announcement, before
/// the removal is stored — reads the thread among its own and must still be kept out of it:
/// otherwise a message stored after the removal, reaching its node before the `left`
/// announcement, would be handed to it. The test holds the removal on a row lock, opens the
/// session, then lets the removal through while node 1 (which made the leave) cannot reach Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_during_a_leave_gets_nothing_stored_after_it() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    let (_redis, proxy, c) = node1_behind_a_proxy(|_| {}).await;
    let (at, bob, bt, thread) = alice_and_bob_in(&c, Some("slow leave")).await;
    let mut a = c.ws(0, &at).await;
    a.send_msg(thread, "s1", "first").await;

    // Bob's membership row locked: the leave's removal waits for it.
    let db = c.node(0).state.store.connection();
    let lock = db.begin().await.unwrap_or_else(|e| panic!("begin: {e}"));
    lock.execute(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT 1 FROM thread_members WHERE thread_id = '{}' AND user_id = '{}' FOR UPDATE",
            thread.0, bob.id.0
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("lock: {e}"));
    let leaver = {
        let h = c.http(1);
        let bt = bt.clone();
        tokio::spawn(async move {
            h.delete(&format!("/api/v1/threads/{thread}/members/me"), Some(&bt))
                .await
        })
    };
    // Once node 0 has heard the `leaving` announcement, bob opens a session there.
    let hub = &c.node(0).state.hub;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !hub.is_leaving(bob.id, thread) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never heard the leaving"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut b = c.ws(0, &bt).await;
    proxy.hold_requests();
    lock.rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    let history = format!("/api/v1/threads/{thread}/messages");
    wait_status(&c, 0, &history, &bt, 403, "the removal was never stored").await;
    let ack = a.send_msg(thread, "s2", "after bob left").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    b.expect_none(
        |f| f["type"] == "message" && f["thread_id"] == thread.to_string(),
        Duration::from_millis(700),
    )
    .await;
    proxy.release_requests();
    let (s, body) = leaver.await.unwrap_or_else(|e| panic!("leave task: {e}"));
    assert_eq!(s, 204, "{body}");
    b.recv_until(|f| f["type"] == "member_left").await;
    c.stop().await;
}

/// An event about a message a node still holds (it arrived after a hole the node is repairing)
/// waits behind that message: deleted while held, the message must reach the client before its
/// `message_deleted`, or the client would show it as it was published. The hole is a publish
/// lost while Redis was down; a long `delivery.gap_grace_ms` keeps it open while alice sends and
/// deletes the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_about_a_held_message_waits_for_the_message() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let c = Cluster::start_with(Backend::Cluster, 2, |s| {
        s.redis.url = SecretString::from(url.clone());
        s.redis.reconnect_max_ms = 300;
        s.delivery.gap_grace_ms = 5000;
    })
    .await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, None).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    a.send_msg(thread, "r1", "before").await;
    b.recv_until(|f| f["body"] == "before").await;

    redis.stop();
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    let ack = a.send_msg(thread, "lost", "published into the void").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    redis.restart().await;
    wait_ready(&c, 0, 200, Duration::from_secs(15)).await;
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    let ack = a.send_msg(thread, "doomed", "soon deleted").await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let id = ack["id"].as_str().unwrap_or_default().to_owned();
    let (s, body) = c
        .http(0)
        .delete(&format!("/api/v1/messages/{id}"), Some(&at))
        .await;
    assert!(s == 200 || s == 204, "delete: {s} {body}");

    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|f: &serde_json::Value| f["type"] == "message_deleted")
    {
        let f = b
            .next_frame(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no message_deleted; bob saw {seen:?}"));
        seen.push(f);
    }
    let order: Vec<(String, i64)> = seen
        .iter()
        .filter(|f| f["thread_id"] == thread.to_string())
        .map(|f| {
            (
                f["type"].as_str().unwrap_or_default().to_owned(),
                f["seq"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("message".to_owned(), 2),
            ("message".to_owned(), 3),
            ("message_deleted".to_owned(), 3)
        ],
        "{seen:?}"
    );
    c.stop().await;
}

/// With Redis unreachable, a leave and a logout are refused (503) and change nothing: made
/// unannounced, the leaver's sessions would go on receiving the thread, and the logged-out
/// token's sessions on other nodes would stay open. Once Redis is back both go through, and
/// their announcements reach the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_and_logouts_wait_for_redis_rather_than_go_unannounced() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let c = Cluster::start_with(Backend::Cluster, 2, |s| {
        s.redis.url = SecretString::from(url.clone());
        s.redis.reconnect_max_ms = 300;
    })
    .await;
    let (_at, bob, bt, thread) = alice_and_bob_in(&c, Some("outage")).await;
    let (_carol, ct) = c.user("carol").await;
    let mut b = c.ws(1, &bt).await;
    let mut cw = c.ws(1, &ct).await;
    let history = format!("/api/v1/threads/{thread}/messages");
    let leave = format!("/api/v1/threads/{thread}/members/me");

    redis.stop();
    wait_ready(&c, 0, 503, Duration::from_secs(10)).await;
    let (s, body) = c.http(0).delete(&leave, Some(&bt)).await;
    assert_eq!(s, 503, "leave during the outage: {body}");
    assert_eq!(c.http(0).get(&history, Some(&bt)).await.0, 200, "bob left");
    let (s, body) = c.http(0).delete("/api/v1/sessions", Some(&ct)).await;
    assert_eq!(s, 503, "logout during the outage: {body}");
    let (s, body) = c.http(0).get("/api/v1/users/me", Some(&ct)).await;
    assert_eq!(s, 200, "carol's token was revoked: {body}");

    redis.restart().await;
    wait_ready(&c, 0, 200, Duration::from_secs(15)).await;
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    let (s, body) = c.http(0).delete(&leave, Some(&bt)).await;
    assert_eq!(s, 204, "{body}");
    let f = b.recv_until(|f| f["type"] == "member_left").await;
    assert_eq!(f["user_id"], bob.id.to_string());
    let (s, body) = c.http(0).delete("/api/v1/sessions", Some(&ct)).await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(cw.expect_close(Duration::from_secs(5)).await, Some(1008));
    c.stop().await;
}

/// A member added while the node making the join cannot reach Redis: the join is stored, and
/// its announcement waits in that node's backlog until Redis is reachable again — dropped, the
/// new member's open session on another node would never hear of the thread (no later message
/// reveals it). Once it arrives the session gets `thread_created` and what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_announced_while_its_node_cannot_reach_redis_arrives_once_it_can() {
    let (_redis, proxy, c) = node_behind_a_proxy(0, |s| s.redis.reconnect_max_ms = 300).await;
    let (at, _bob, _bt, thread) = alice_and_bob_in(&c, Some("added in the dark")).await;
    let (carol, ct) = c.user("carol").await;
    let mut a = c.ws(0, &at).await;
    let mut cw = c.ws(1, &ct).await;

    proxy.cut();
    let (s, body) = c
        .http(0)
        .post(
            &format!("/api/v1/threads/{thread}/members"),
            Some(&at),
            serde_json::json!({"user_ids": [carol.id.to_string()]}),
        )
        .await;
    assert_eq!(s, 200, "the join is stored: {body}");
    cw.expect_none(
        |f| f["type"] == "thread_created",
        Duration::from_millis(300),
    )
    .await;

    proxy.restore();
    let f = cw
        .recv_until_within(|f| f["type"] == "thread_created", Duration::from_secs(10))
        .await;
    assert_eq!(f["thread"]["id"], thread.to_string(), "{f}");
    wait_ready(&c, 0, 200, Duration::from_secs(15)).await;
    a.send_msg(thread, "a1", "welcome").await;
    let f = cw.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("welcome"), Some(1))
    );
    c.stop().await;
}

/// Cut node 1 off Redis, wait until it says so, and add `user` to `thread` through node 0
/// (as `token`, a member): the join is announced while node 1 cannot hear it.
async fn add_while_node1_is_cut(
    c: &Cluster,
    proxy: &Proxy,
    token: &str,
    thread: confab_protocol::ThreadId,
    user: &confab_protocol::UserRef,
) {
    proxy.cut();
    wait_ready(c, 1, 503, Duration::from_secs(10)).await;
    let (s, body) = c
        .http(0)
        .post(
            &format!("/api/v1/threads/{thread}/members"),
            Some(token),
            serde_json::json!({"user_ids": [user.id.to_string()]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
}

/// The new member's session hears that it is in `thread` now.
async fn hears_thread_created(ws: &mut confab_tests::Ws, thread: confab_protocol::ThreadId) {
    let f = ws
        .recv_until_within(|f| f["type"] == "thread_created", Duration::from_secs(15))
        .await;
    assert_eq!(f["thread"]["id"], thread.to_string(), "{f}");
}

/// A join announced while another node's pub/sub connection is down (here: node 1's Redis
/// connections cut) is not delivered there by pub/sub, which keeps nothing. Node 1 reads it
/// back from the control log once its subscription is up again, and the new member's open
/// session there gets `thread_created` and what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_announced_while_a_node_resubscribes_is_read_back_from_the_control_log() {
    let (_redis, proxy, c) = node1_behind_a_proxy(|s| s.redis.reconnect_max_ms = 300).await;
    let (at, _bob, _bt, thread) = alice_and_bob_in(&c, Some("added while node 1 was away")).await;
    let (carol, ct) = c.user("carol").await;
    let mut a = c.ws(0, &at).await;
    let mut cw = c.ws(1, &ct).await;

    add_while_node1_is_cut(&c, &proxy, &at, thread, &carol).await;
    proxy.restore();
    hears_thread_created(&mut cw, thread).await;
    assert!(c.node(1).state.metrics.control_replayed.get() >= 1);
    assert_eq!(
        c.node(1).state.metrics.control_lost.get(),
        0,
        "nothing was lost"
    );
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    a.send_msg(thread, "a1", "welcome").await;
    let f = cw.recv_until(|f| f["type"] == "message").await;
    assert_eq!(
        (f["body"].as_str(), f["seq"].as_i64()),
        (Some("welcome"), Some(1))
    );
    c.stop().await;
}

/// A node that resubscribes but cannot read the control log back (here: the private Redis
/// refuses `XRANGE` for a while, by ACL) does not carry on as if it had: it stays unready and
/// tries again with a fresh connection until the read succeeds, and only then delivers the
/// join it missed. Carrying on skipped the missed announcements for good — a leave among them
/// would have left the leaver's sessions there in the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_read_the_control_log_back_retries_until_it_can() {
    let (redis, proxy, c) = node1_behind_a_proxy(|s| s.redis.reconnect_max_ms = 300).await;
    let admin = confab_tests::redis_conn(&redis.url()).await;
    let (at, _bob, _bt, thread) = alice_and_bob_in(&c, Some("read back late")).await;
    let (carol, ct) = c.user("carol").await;
    let mut cw = c.ws(1, &ct).await;

    add_while_node1_is_cut(&c, &proxy, &at, thread, &carol).await;
    let acl = |rule: &'static str| {
        let mut admin = admin.clone();
        async move {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(rule)
                .query_async(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    acl("-xrange").await;
    proxy.restore();
    let failures = &c.node(1).state.metrics.control_replay_failures;
    wait_for("node 1 to try the read back", || failures.get() >= 2).await;
    let (s, _) = c.http(1).get("/readyz", None).await;
    assert_eq!(s, 503, "unready while what it missed is unread");
    acl("+xrange").await;
    hears_thread_created(&mut cw, thread).await;
    assert_eq!(c.node(1).state.metrics.control_lost.get(), 0);
    wait_ready(&c, 1, 200, Duration::from_secs(15)).await;
    c.stop().await;
}

/// Presence events published while another node's pub/sub connection is down (here: node 1's
/// Redis connections cut) are read back from the control log once node 1 has resubscribed,
/// like membership announcements: alice, connected there, hears that bob came online and then
/// went offline, in that order. Pub/sub alone dropped both, and her view of bob stayed wrong
/// until his next transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_while_a_node_resubscribes_are_read_back_from_the_control_log() {
    let (_redis, proxy, c) = node1_behind_a_proxy(|s| {
        s.redis.reconnect_max_ms = 300;
        s.presence.offline_grace_ms = 100;
    })
    .await;
    let (at, bob, bt, _thread) = alice_and_bob_in(&c, None).await;
    let mut a = c.ws(1, &at).await;

    proxy.cut();
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    let b = c.ws(0, &bt).await;
    b.close().await;
    // Node 0 settles bob's offline once the grace is over, while node 1 is still away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = query(&c.http(0), &at, &[&bob]).await;
        assert_eq!(s, 200, "{body}");
        if body[0]["status"] == "offline" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "bob stayed {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replayed = c.node(1).state.metrics.control_replayed.get();
    proxy.restore();
    a.recv_until_within(presence_of(&bob, "online"), Duration::from_secs(15))
        .await;
    a.recv_until_within(presence_of(&bob, "offline"), Duration::from_secs(5))
        .await;
    assert!(c.node(1).state.metrics.control_replayed.get() >= replayed + 2);
    assert_eq!(
        c.node(1).state.metrics.control_lost.get(),
        0,
        "nothing was lost"
    );
    c.stop().await;
}

/// A node away for longer than the control log keeps (here `redis.control_log_max` = 2, and
/// Redis keeping one entry per stream node, so that trimming is exact) cannot read back what
/// it missed — a leave among it would leave the leaver's sessions there in the thread. It
/// notices that the log was trimmed past the last announcement it handled and closes its
/// sessions with 1012: they reconnect and read their threads from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_for_longer_than_the_control_log_keeps_restarts_its_sessions() {
    let (redis, proxy, c) = node1_behind_a_proxy(|s| {
        s.redis.reconnect_max_ms = 300;
        s.redis.control_log_max = 2;
    })
    .await;
    let mut conn = confab_tests::redis_conn(&redis.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (at, _bob, bt, _thread) = alice_and_bob_in(&c, Some("heard live")).await;
    let (carol, _ct) = c.user("carol").await;
    let mut a = c.ws(1, &at).await;

    proxy.cut();
    wait_ready(&c, 1, 503, Duration::from_secs(10)).await;
    for i in 0..5 {
        c.http(0)
            .create_thread(&bt, &[&carol], Some(&format!("missed {i}")))
            .await;
    }
    proxy.restore();
    assert_eq!(a.expect_close(Duration::from_secs(15)).await, Some(1012));
    assert_eq!(c.node(1).state.metrics.control_lost.get(), 1);
    c.stop().await;
}

/// A leave whose announcement Redis does not confirm in time (here: the requests of node 0,
/// which makes the leave, are held back) is refused with 503 — and since the held announcement
/// may still go out, a resync is queued behind it: once Redis takes both, the nodes stop
/// delivering to bob and then close his sessions (1012), which reconnect into the thread he is
/// still in. Nothing waits for ever on a Redis that does not answer (`redis.command_timeout_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_redis_does_not_confirm_is_refused_and_undone_if_it_goes_out_late() {
    let (_redis, proxy, c) = node_behind_a_proxy(0, |s| s.redis.command_timeout_ms = 300).await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, Some("unconfirmed leave")).await;
    let mut a = c.ws(1, &at).await;
    let mut b = c.ws(1, &bt).await;

    proxy.hold_requests();
    let started = tokio::time::Instant::now();
    let (s, body) = c
        .http(0)
        .delete(&format!("/api/v1/threads/{thread}/members/me"), Some(&bt))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the leave hung"
    );
    let history = format!("/api/v1/threads/{thread}/messages");
    assert_eq!(c.http(1).get(&history, Some(&bt)).await.0, 200, "bob left");

    proxy.release_requests();
    sent_back_still_a_member(&c, &mut a, &mut b, &bt, thread).await;
    c.stop().await;
}

/// A join announcement Redis does not confirm in time is retried; the attempts that timed out
/// may run after all (here: every one of them, once Redis answers again). Each carries the
/// announcement's event id, so the other nodes act on it once: one `thread_created`.
#[tokio::test]
async fn an_announcement_retried_after_a_timeout_takes_effect_once() {
    let (_redis, proxy, c) = node_behind_a_proxy(0, |s| s.redis.command_timeout_ms = 300).await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let mut b = c.ws(1, &bt).await;
    // A first announcement loads the announcing script into Redis; until then an attempt is
    // refused (NOSCRIPT) and sends it, which a timed-out attempt never gets to do.
    let first = c.http(0).create_thread(&at, &[&bob], Some("first")).await;
    let f = b.recv_until(|f| f["type"] == "thread_created").await;
    assert_eq!(f["thread"]["id"], serde_json::json!(first), "{f}");

    proxy.hold_requests();
    let http = c.http(0);
    let create = tokio::spawn(async move {
        http.create_thread(&at, &[&bob], Some("announced late"))
            .await
    });
    // The join's directory write waits out the shared connection's 5 s bound first; then three
    // attempts of the announcement time out (300 ms each, with waits), then the backlog's
    // first retries. Without the event id node 1 acted on four of them (four thread_created).
    tokio::time::sleep(Duration::from_millis(7000)).await;
    proxy.release_requests();
    let thread = create.await.unwrap_or_else(|e| panic!("{e}"));
    let f = b
        .recv_until_within(|f| f["type"] == "thread_created", Duration::from_secs(15))
        .await;
    assert_eq!(f["thread"]["id"], serde_json::json!(thread), "{f}");
    b.expect_none(|f| f["type"] == "thread_created", Duration::from_secs(2))
        .await;
    c.stop().await;
}

/// A `leaving` that Redis ran but whose reply never came back (the connection dropped first)
/// has an unknown outcome, like a timed-out one: the leave is refused, and the leaver's
/// sessions — which the other nodes did take out of the thread — are sent back to resume.
#[tokio::test]
async fn a_leave_whose_connection_drops_before_the_reply_is_refused_and_undone() {
    let (_redis, proxy, c) = node_behind_a_proxy(0, |s| s.redis.command_timeout_ms = 5000).await;
    let (at, _bob, bt, thread) = alice_and_bob_in(&c, Some("dropped reply")).await;
    let mut a = c.ws(1, &at).await;
    let mut b = c.ws(1, &bt).await;

    // Redis runs what node 0 sends, but node 0 hears nothing back ...
    proxy.freeze();
    let http = c.http(0);
    let path = format!("/api/v1/threads/{thread}/members/me");
    let token = bt.clone();
    let leave = tokio::spawn(async move { http.delete(&path, Some(&token)).await });
    // ... until its connections drop (and new ones are refused).
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let (s, body) = leave.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, 503, "{body}");
    let history = format!("/api/v1/threads/{thread}/messages");
    assert_eq!(c.http(1).get(&history, Some(&bt)).await.0, 200, "bob left");

    // The `leaving` did reach node 1; the resync queued behind it goes out once node 0
    // reaches Redis again, and bob's session comes back into the thread he is still in.
    proxy.thaw();
    proxy.restore();
    sent_back_still_a_member(&c, &mut a, &mut b, &bt, thread).await;
    c.stop().await;
}
