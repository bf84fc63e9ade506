//! The Redis membership mirror: every connect warms it, and a stale entry never outranks the
//! database (guards against a future read of the mirror at connect trusting it alone).

use confab_tests::{Backend, Cluster};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_mirror_entry_never_lets_a_former_member_in() {
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let (carol, _ct) = c.user("carol").await;
    let thread = c
        .http(0)
        .create_thread(&at, &[&bob, &carol], Some("mirror"))
        .await;
    // Bob connects once (warming his mirror entry), then leaves the room.
    drop(c.ws(1, &bt).await);
    let (s, _) = c
        .http(1)
        .delete(&format!("/api/v1/threads/{thread}/members/me"), Some(&bt))
        .await;
    assert_eq!(s, 204);
    // Put the thread back into his mirror entry behind the gateway's back.
    let mut conn = confab_tests::redis_conn(&confab_tests::redis_url()).await;
    let key = format!("{}:threads:{}", c.prefix, bob.id);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    assert!(
        members.iter().any(|m| m == "-"),
        "the mirror was never warmed: {members:?}"
    );
    let _: () = redis::cmd("SADD")
        .arg(&key)
        .arg(thread.to_string())
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut b = c.ws(1, &bt).await;
    let mut a = c.ws(0, &at).await;
    a.send_msg(thread, "m1", "not for bob").await;
    b.expect_none(|f| f["type"] == "message", Duration::from_millis(1500))
        .await;
    assert_eq!(c.node(1).state.hub.local_session_count(bob.id), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_mirror_falls_back_to_the_database() {
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], None).await;
    let mut conn = confab_tests::redis_conn(&confab_tests::redis_url()).await;
    // As after a Redis restart: the mirror holds nothing.
    let key = format!("{}:threads:{}", c.prefix, bob.id);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap_or(());
    let mut b = c.ws(1, &bt).await;
    let mut a = c.ws(0, &at).await;
    a.send_msg(thread, "m1", "still reaches bob").await;
    b.recv_until(|f| f["body"] == "still reaches bob").await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    assert!(
        members.contains(&thread.to_string()) && members.iter().any(|m| m == "-"),
        "not re-warmed: {members:?}"
    );
    c.stop().await;
}
