//! The real-time core: accounts, threads, send → store → ack → fan-out across nodes, history.

use confab_tests::{both_backends, Backend, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

fn is_msg(body: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == "message" && f["body"] == body
}

/// Send a `resume` of one thread from `last_seq`; returns the `seq`s replayed before the
/// `resumed` reply, and the reply.
async fn resume_one(
    ws: &mut confab_tests::Ws,
    thread: confab_protocol::ThreadId,
    last_seq: i64,
) -> (Vec<i64>, Value) {
    ws.send_json(
        json!({"type":"resume","req":"res","threads":[{"thread_id":thread,"last_seq":last_seq}]}),
    )
    .await;
    let mut replayed = Vec::new();
    loop {
        let f = ws
            .recv_until(|f| f["type"] == "message" || f["type"] == "resumed")
            .await;
        if f["type"] == "resumed" {
            return (replayed, f);
        }
        replayed.push(f["seq"].as_i64().unwrap_or(0));
    }
}

both_backends!(
    message_reaches_members_on_other_nodes_and_not_strangers,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;

        let mut a1 = c.ws(0, &at).await;
        let mut a2 = c.ws(1, &at).await; // alice's second device, on the other node
        let mut bob_ws = c.ws(1, &bt).await;
        let mut carol_ws = c.ws(1, &ct).await;

        let ack = a1.send_msg(thread, "m1", "hello bob").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], 1);
        assert_eq!(ack["client_msg_id"], "m1");

        let got = bob_ws.recv_until(is_msg("hello bob")).await;
        assert_eq!(got["seq"], 1);
        assert_eq!(got["sender_id"], json!(alice.id));
        assert_eq!(got["thread_id"], json!(thread));
        assert_eq!(got["id"], ack["id"]);
        assert_eq!(got["client_msg_id"], "m1");
        a2.recv_until(is_msg("hello bob")).await;
        a1.recv_until(is_msg("hello bob")).await;
        carol_ws
            .expect_none(|f| f["type"] == "message", Duration::from_millis(800))
            .await;
        c.stop().await;
    }
);

both_backends!(ack_comes_after_the_row_is_stored, |b: Backend| async move {
    let c = Cluster::start(b, 2).await;
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], None).await;
    let mut ws = c.ws(0, &at).await;
    for i in 1..=5 {
        let ack = ws
            .send_msg(thread, &format!("c{i}"), &format!("n{i}"))
            .await;
        assert_eq!(ack["seq"], i);
        // Right after the ack, another node's history already has the row.
        let (s, page) = c
            .http(1)
            .get(&format!("/api/v1/threads/{thread}/messages"), Some(&bt))
            .await;
        assert_eq!(s, 200, "{page}");
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(msgs.len(), i as usize);
        assert_eq!(
            msgs.last().map(|m| m["id"].clone()),
            Some(ack["id"].clone())
        );
        assert_eq!(
            msgs.last().map(|m| m["created_at"].clone()),
            Some(ack["created_at"].clone())
        );
    }
    c.stop().await;
});

both_backends!(
    history_pages_backwards_by_seq_with_exact_boundaries,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, _bt) = c.user("bob").await;
        let (_eve, et) = c.user("eve").await;
        let thread = c.http(0).create_thread(&at, &[&bob], Some("room")).await;
        let mut ws = c.ws(0, &at).await;
        for i in 1..=25 {
            let ack = ws
                .send_msg(thread, &format!("c{i}"), &format!("m{i}"))
                .await;
            assert_eq!(ack["seq"], i);
        }
        let h = c.http(0);
        let seqs = |page: &Value| -> Vec<i64> {
            page["messages"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m["seq"].as_i64()).collect())
                .unwrap_or_default()
        };
        let (s, p1) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?limit=10"),
                Some(&at),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(seqs(&p1), (16..=25).collect::<Vec<_>>());
        assert_eq!(p1["next_before_seq"], 16);
        let (_, p2) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?limit=10&before_seq=16"),
                Some(&at),
            )
            .await;
        assert_eq!(seqs(&p2), (6..=15).collect::<Vec<_>>());
        assert_eq!(p2["next_before_seq"], 6);
        let (_, p3) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?limit=10&before_seq=6"),
                Some(&at),
            )
            .await;
        assert_eq!(seqs(&p3), (1..=5).collect::<Vec<_>>());
        assert_eq!(p3["next_before_seq"], Value::Null);
        let (_, p4) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?before_seq=1"),
                Some(&at),
            )
            .await;
        assert_eq!(seqs(&p4), Vec::<i64>::new());
        // Default page is the newest 20.
        let (_, d) = h
            .get(&format!("/api/v1/threads/{thread}/messages"), Some(&at))
            .await;
        assert_eq!(seqs(&d), (6..=25).collect::<Vec<_>>());
        // Bad parameters and strangers are refused with typed errors.
        let (s, e) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?limit=0"),
                Some(&at),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        let (s, e) = h
            .get(
                &format!("/api/v1/threads/{thread}/messages?limit=abc"),
                Some(&at),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        let (s, e) = h
            .get(&format!("/api/v1/threads/{thread}/messages"), Some(&et))
            .await;
        assert_eq!((s, e["code"].as_str()), (403, Some("not_member")));
        let (s, e) = h
            .get("/api/v1/threads/not-a-uuid/messages", Some(&at))
            .await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        let (s, e) = h
            .get(&format!("/api/v1/threads/{thread}/messages"), None)
            .await;
        assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
        c.stop().await;
    }
);

both_backends!(
    accounts_register_login_conflict_and_logout,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let h = c.http(0);
        let name = format!("dave_{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let (s, u) = h
            .post(
                "/api/v1/users",
                None,
                json!({"username": name, "password": "password123"}),
            )
            .await;
        assert_eq!(s, 201, "{u}");
        assert_eq!(u["username"], name.as_str());
        assert!(u["id"]
            .as_str()
            .is_some_and(|id| id.parse::<uuid::Uuid>().is_ok()));
        let (s, e) = h
            .post(
                "/api/v1/users",
                None,
                json!({"username": name.to_uppercase(), "password": "password123"}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (409, Some("conflict")));
        let (s, e) = h
            .post(
                "/api/v1/users",
                None,
                json!({"username": "x", "password": "password123"}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        let (s, e) = h.post_raw("/api/v1/users", None, "{not json").await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        let (s, e) = h
            .post(
                "/api/v1/sessions",
                None,
                json!({"username": name, "password": "wrong-password"}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
        let (s, login) = h
            .post(
                "/api/v1/sessions",
                None,
                json!({"username": name, "password": "password123"}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(login["user"]["id"], u["id"]);
        let token = login["token"].as_str().unwrap_or_default().to_owned();
        let mut ws = c.ws(0, &token).await;
        assert_eq!(ws.hello["user"]["id"], u["id"]);
        assert_eq!(ws.hello["protocol"], 1);
        let (s, me) = h.get("/api/v1/users/me", Some(&token)).await;
        assert_eq!((s, &me), (200, &json!({"id": u["id"], "username": name})));
        // Logging out revokes the token everywhere and closes its sockets with 1008.
        let (s, _) = h.delete("/api/v1/sessions", Some(&token)).await;
        assert_eq!(s, 204);
        assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(1008));
        let (s, _) = h.get("/api/v1/users?q=a", Some(&token)).await;
        assert_eq!(s, 401);
        let (s, _) = h.get("/api/v1/users/me", Some(&token)).await;
        assert_eq!(s, 401);
        c.stop().await;
    }
);

both_backends!(
    websocket_upgrade_is_refused_before_it_happens,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let h = c.http(0);
        let (s, e) = h.get("/ws", None).await;
        assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
        let (s, e) = h.get("/ws?token=nope", None).await;
        assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
        let (_u, t) = c.user("vers").await;
        let (s, e) = h.get(&format!("/ws?token={t}&v=99"), None).await;
        assert_eq!((s, e["code"].as_str()), (400, Some("unsupported_version")));
        // The real client is refused too (no upgrade happens).
        let url = format!("{}?token=bad", c.node(0).ws_base());
        assert!(tokio_tungstenite::connect_async(url).await.is_err());
        c.stop().await;
    }
);

both_backends!(
    a_crowd_of_connects_shares_its_database_lookups,
    |b: Backend| async move {
        // Connects arriving together read their tokens and threads in shared queries, on the
        // embedded store's single connection as on Postgres's pool.
        let c = Cluster::start(b, 1).await;
        let mut tokens = Vec::new();
        for i in 0..40 {
            tokens.push(c.user(&format!("crowd{i}")).await.1);
        }
        let m = &c.node(0).state.metrics;
        let counts = |kind: &str| {
            (
                m.db_lookups.with_label_values(&[kind]).get(),
                m.db_lookup_queries.with_label_values(&[kind]).get(),
            )
        };
        let (keys0, queries0) = counts("token");
        let sockets = futures_util::future::join_all(tokens.iter().map(|t| c.ws(0, t))).await;
        assert_eq!(sockets.len(), 40);
        let (keys, queries) = counts("token");
        let (keys, queries) = (keys - keys0, queries - queries0);
        assert_eq!(keys, 40, "one token lookup per connect");
        assert!(
            queries < keys,
            "{queries} queries for {keys} tokens: nothing was shared"
        );
        c.stop().await;
    }
);

both_backends!(
    bad_frames_get_typed_errors_and_the_session_survives,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, _bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let other = c.http(0).create_thread(&ct, &[&bob], None).await;
        let _ = carol;
        let mut ws = c.ws(0, &at).await;

        let r = ws.send_msg(other, "x1", "intrude").await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("not_member"))
        );
        let unknown = confab_protocol::ThreadId::new();
        let r = ws.send_msg(unknown, "x2", "nowhere").await;
        assert_eq!(r["code"], "not_member");
        let r = ws.send_msg(thread, "x3", &"a".repeat(10_001)).await;
        assert_eq!(r["code"], "too_large");
        let ok = ws.send_msg(thread, "x4", &"é".repeat(10_000)).await;
        assert_eq!(ok["type"], "ack", "10,000 characters are allowed: {ok}");
        // The longest body with every character escaped as a surrogate pair (as Python's json
        // writes emoji by default): 120,000 bytes of body, still within a frame.
        ws.send_text(format!(
            "{{\"type\":\"send\",\"req\":\"x6\",\"thread_id\":\"{thread}\",\"client_msg_id\":\"x6\",\"body\":\"{}\"}}",
            "\\ud83d\\ude00".repeat(10_000)
        ))
        .await;
        let ok = ws.recv_until(|f| f["req"] == "x6").await;
        assert_eq!(ok["type"], "ack", "10,000 escaped emoji are allowed: {ok}");
        let r = ws.send_msg(thread, "x5", "   ").await;
        assert_eq!(r["code"], "bad_request");

        ws.send_text("{not json".into()).await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(r["code"], "bad_request");
        ws.send_json(json!({"type":"teleport","req":"q1"})).await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(
            (r["code"].as_str(), r["req"].as_str()),
            (Some("bad_request"), Some("q1"))
        );
        ws.send_json(
            json!({"type":"send","req":"q2","thread_id":"zzz","client_msg_id":"a","body":"b"}),
        )
        .await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(
            (r["code"].as_str(), r["req"].as_str()),
            (Some("bad_request"), Some("q2"))
        );
        ws.send_json(json!({"type":"send","req":"q3","thread_id":thread,"client_msg_id":"a","body":"b","admin":true})).await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(
            (r["code"].as_str(), r["req"].as_str()),
            (Some("bad_request"), Some("q3"))
        );
        ws.send_json(json!({"type":"mark_read","req":"q4","thread_id":thread,"seq":1e300}))
            .await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(r["code"], "bad_request");
        ws.send_text(format!(
            "{{\"type\":\"ping\",\"req\":\"{}\"}}",
            "p".repeat(140_000)
        ))
        .await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(r["code"], "too_large");
        ws.send_raw(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1u8, 2, 3].into(),
        ))
        .await;
        let r = ws.recv_until(|f| f["type"] == "error").await;
        assert_eq!(r["code"], "bad_request");

        // Still alive and in order.
        let pong = ws.request(json!({"type":"ping"})).await;
        assert_eq!(pong["type"], "pong");
        let ack = ws.send_msg(thread, "x6", "still here").await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["seq"], 2);
        c.stop().await;
    }
);

both_backends!(
    direct_thread_is_unique_per_pair_and_groups_have_members,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, _ct) = c.user("carol").await;
        let h = c.http(0);
        let (s, t1) = h
            .post(
                "/api/v1/threads",
                Some(&at),
                json!({"member_ids": [bob.id]}),
            )
            .await;
        assert_eq!(s, 201, "{t1}");
        assert_eq!(t1["kind"], "direct");
        assert_eq!(t1["name"], Value::Null);
        let (s, t2) = h
            .post(
                "/api/v1/threads",
                Some(&bt),
                json!({"member_ids": [alice.id]}),
            )
            .await;
        assert_eq!(s, 201);
        assert_eq!(
            t1["id"], t2["id"],
            "creating a direct thread twice returns the same thread"
        );
        let mut members: Vec<String> = t1["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["username"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        let mut expect = vec![alice.username.clone(), bob.username.clone()];
        expect.sort();
        assert_eq!(members, expect);
        let (s, g) = h
            .post(
                "/api/v1/threads",
                Some(&at),
                json!({"member_ids": [bob.id, carol.id], "name": "trio"}),
            )
            .await;
        assert_eq!(s, 201);
        assert_eq!(g["kind"], "group");
        assert_eq!(g["name"], "trio");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3));
        let (s, e) = h
            .post(
                "/api/v1/threads",
                Some(&at),
                json!({"member_ids": [uuid::Uuid::new_v4()]}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
        let (s, e) = h
            .post("/api/v1/threads", Some(&at), json!({"member_ids": []}))
            .await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")));
        c.stop().await;
    }
);

both_backends!(
    a_retried_client_msg_id_is_stored_once,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        let mut b2 = c.ws(1, &bt).await;
        let first = a.send_msg(thread, "same", "once").await;
        let again = a.send_msg(thread, "same", "once").await;
        assert_eq!(again["type"], "ack");
        assert_eq!(again["id"], first["id"]);
        assert_eq!(again["seq"], first["seq"]);
        assert_eq!(again["duplicate"], true);
        b2.recv_until(is_msg("once")).await;
        b2.expect_none(is_msg("once"), Duration::from_millis(600))
            .await;
        let (_, page) = c
            .http(0)
            .get(&format!("/api/v1/threads/{thread}/messages"), Some(&bt))
            .await;
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
        c.stop().await;
    }
);

both_backends!(
    a_resume_from_a_negative_seq_is_refused_and_the_session_goes_on,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        a.send_msg(thread, "m1", "m1").await;
        let mut bob_ws = c.ws(0, &bt).await;
        bob_ws
            .send_json(json!({"type":"resume","req":"neg","threads":[
                {"thread_id":thread,"last_seq":0},
                {"thread_id":thread,"last_seq":-1}]}))
            .await;
        let f = bob_ws
            .recv_until(|f| f["req"] == "neg" || f["type"] == "message")
            .await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{f}"
        );
        // Nothing replayed, and the session still answers: a resume from 0 replays all.
        let (replayed, reply) = resume_one(&mut bob_ws, thread, 0).await;
        assert_eq!(replayed, vec![1], "{reply}");
        c.stop().await;
    }
);

both_backends!(
    a_thread_listed_twice_in_a_resume_is_replayed_once_from_the_lowest_seq,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        for i in 1..=3 {
            a.send_msg(thread, &format!("m{i}"), &format!("m{i}")).await;
        }
        let mut bob_ws = c.ws(1, &bt).await;
        bob_ws
            .send_json(json!({"type":"resume","req":"twice","threads":[
                {"thread_id":thread,"last_seq":2},
                {"thread_id":thread,"last_seq":1},
                {"thread_id":thread,"last_seq":3}]}))
            .await;
        let mut replayed = Vec::new();
        let reply = loop {
            let f = bob_ws
                .recv_until(|f| f["type"] == "message" || f["type"] == "resumed")
                .await;
            if f["type"] == "resumed" {
                break f;
            }
            replayed.push(f["seq"].as_i64().unwrap_or(-1));
        };
        assert_eq!(replayed, vec![2, 3], "{reply}");
        let threads = reply["threads"].as_array().cloned().unwrap_or_default();
        assert_eq!(threads.len(), 1, "{reply}");
        assert_eq!(
            (
                threads[0]["from_seq"].as_i64(),
                threads[0]["replayed"].as_i64()
            ),
            (Some(2), Some(2)),
            "{reply}"
        );
        bob_ws
            .expect_none(|f| f["type"] == "message", Duration::from_millis(500))
            .await;
        c.stop().await;
    }
);

both_backends!(
    text_with_a_nul_character_is_a_bad_request_everywhere,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let h = c.http(0);
        let thread = h.create_thread(&at, &[&bob], None).await;
        let bad = |(s, e): (u16, Value)| (s, e["code"].as_str().map(str::to_owned));
        let (s, e) = h
            .post(
                "/api/v1/threads",
                Some(&at),
                json!({"member_ids": [bob.id], "name": "a\u{0}b"}),
            )
            .await;
        assert_eq!(bad((s, e)), (400, Some("bad_request".into())), "name");
        let found = h.get("/api/v1/users?q=b%00", Some(&at)).await;
        assert_eq!(bad(found), (400, Some("bad_request".into())), "search");
        let login = h
            .post(
                "/api/v1/sessions",
                None,
                json!({"username": "alice\u{0}", "password": "correct horse"}),
            )
            .await;
        assert_eq!(bad(login), (401, Some("unauthorized".into())), "login");
        let mut a = c.ws(0, &at).await;
        let mut b2 = c.ws(1, &bt).await;
        for (cid, body) in [("nul-body", "x\u{0}y"), ("nul\u{0}id", "fine")] {
            let r = a.send_msg(thread, cid, body).await;
            assert_eq!(r["code"], "bad_request", "{cid:?}: {r}");
        }
        let ok = a.send_msg(thread, "fine", "fine").await;
        assert_eq!(
            (ok["type"].as_str(), ok["seq"].as_i64()),
            (Some("ack"), Some(1))
        );
        b2.recv_until(is_msg("fine")).await;
        let id = ok["id"].as_str().unwrap_or_default().to_owned();
        let edit = a
            .request(json!({"type":"edit","message_id":id,"body":"z\u{0}"}))
            .await;
        assert_eq!(edit["code"], "bad_request", "{edit}");
        let report = h
            .post(
                &format!("/api/v1/messages/{id}/report"),
                Some(&bt),
                json!({"reason": "sp\u{0}am"}),
            )
            .await;
        assert_eq!(bad(report), (400, Some("bad_request".into())), "report");
        let (_, page) = h
            .get(&format!("/api/v1/threads/{thread}/messages"), Some(&at))
            .await;
        assert_eq!(page["messages"][0]["body"], "fine", "{page}");
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
        c.stop().await;
    }
);

both_backends!(
    a_client_msg_id_reused_in_another_thread_is_refused_not_acked,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let with_bob = c.http(0).create_thread(&at, &[&bob], None).await;
        let with_carol = c.http(0).create_thread(&at, &[&carol], None).await;
        let not_mine = c.http(0).create_thread(&bt, &[&carol], None).await;
        let mut a = c.ws(0, &at).await;
        let mut carol_ws = c.ws(1, &ct).await;
        let first = a.send_msg(with_bob, "k", "to bob").await;
        assert_eq!(first["type"], "ack", "{first}");
        // The same key in another thread is not a retry of that send: no ack naming the
        // other thread's message, nothing stored, nothing delivered.
        let reused = a.send_msg(with_carol, "k", "to carol").await;
        assert_eq!(
            (reused["type"].as_str(), reused["code"].as_str()),
            (Some("error"), Some("conflict")),
            "{reused}"
        );
        carol_ws
            .expect_none(is_msg("to carol"), Duration::from_millis(600))
            .await;
        let (_, page) = c
            .http(1)
            .get(&format!("/api/v1/threads/{with_carol}/messages"), Some(&ct))
            .await;
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(0), "{page}");
        // A thread the sender is not in stays `not_member`, whatever the key.
        let outside = a.send_msg(not_mine, "k", "intrude").await;
        assert_eq!(outside["code"], "not_member", "{outside}");
        // The genuine retry still gets the original ack, naming its own thread; and the
        // refused send took no `seq` (the next one in that thread is 1).
        let again = a.send_msg(with_bob, "k", "to bob").await;
        assert_eq!(
            (&again["thread_id"], &again["id"], &again["duplicate"]),
            (&json!(with_bob), &first["id"], &json!(true)),
            "{again}"
        );
        let next = a.send_msg(with_carol, "k2", "to carol").await;
        assert_eq!(
            (next["type"].as_str(), next["seq"].as_i64()),
            (Some("ack"), Some(1))
        );
        c.stop().await;
    }
);

both_backends!(
    resume_replays_the_gap_in_order_before_live_messages,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        for i in 1..=3 {
            a.send_msg(thread, &format!("early{i}"), &format!("early{i}"))
                .await;
        }
        // Bob was offline and holds seq 1; he reconnects holding live delivery for his resume.
        let url = format!("{}?token={}&resume=1", c.node(1).ws_base(), bt);
        let mut bob_ws = confab_tests::Ws::connect_url(&url).await;
        a.send_msg(thread, "live4", "live4").await;
        // Replayed messages come first, in order, then the reply, then live delivery.
        let (before_reply, reply) = resume_one(&mut bob_ws, thread, 1).await;
        assert_eq!(reply["req"], "res");
        let r = &reply["threads"][0];
        assert_eq!(r["truncated"], false);
        // Bob's head was 3 when he connected: 2 and 3 are replayed, live 4 follows the reply.
        assert_eq!(
            (r["from_seq"].as_i64(), r["last_seq"].as_i64()),
            (Some(2), Some(3))
        );
        assert_eq!(r["replayed"], 2);
        assert_eq!(before_reply, vec![2, 3]);
        let live = bob_ws.recv_until(|f| f["type"] == "message").await;
        assert_eq!(live["seq"], 4);
        bob_ws
            .expect_none(|f| f["type"] == "message", Duration::from_millis(500))
            .await;
        c.stop().await;
    }
);

both_backends!(
    a_session_joining_a_thread_its_node_already_follows_gets_no_dup_and_no_hole,
    |b: Backend| async move {
        // The node takes a joining session's head from what it already handed out (no database
        // read): the replay must end exactly where live delivery begins.
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let thread = c
            .http(0)
            .create_thread(&at, &[&bob, &carol], Some("followed"))
            .await;
        let mut a = c.ws(0, &at).await;
        // Carol keeps node 1 subscribed to the thread, so it knows the thread's head.
        let mut carol_ws = c.ws(1, &ct).await;
        for i in 1..=3 {
            a.send_msg(thread, &format!("early{i}"), &format!("early{i}"))
                .await;
        }
        carol_ws.recv_until(is_msg("early3")).await;
        let url = format!("{}?token={}&resume=1", c.node(1).ws_base(), bt);
        let mut bob_ws = confab_tests::Ws::connect_url(&url).await;
        a.send_msg(thread, "live4", "live4").await;
        let (seen, reply) = resume_one(&mut bob_ws, thread, 1).await;
        assert_eq!(reply["threads"][0]["last_seq"], 3);
        assert_eq!(seen, vec![2, 3]);
        let live = bob_ws.recv_until(|f| f["type"] == "message").await;
        assert_eq!(live["seq"], 4);
        // Another session joining the followed thread without resuming gets live ones only.
        let mut again = c.ws(1, &bt).await;
        a.send_msg(thread, "live5", "live5").await;
        let f = again.recv_until(|f| f["type"] == "message").await;
        assert_eq!(f["seq"], 5);
        for ws in [&mut bob_ws, &mut again] {
            ws.expect_none(
                |f| f["type"] == "message" && f["seq"].as_i64() != Some(5),
                Duration::from_millis(500),
            )
            .await;
        }
        c.stop().await;
    }
);

both_backends!(
    an_expired_token_is_refused_everywhere,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, |s| s.auth.token_ttl_secs = 1).await;
        let (_u, t) = c.user("brief").await;
        let (s, _) = c.http(0).get("/api/v1/threads", Some(&t)).await;
        assert_eq!(s, 200);
        // Expiry is a wall-clock comparison: wait until it has certainly passed.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (s, e) = c.http(0).get("/api/v1/threads", Some(&t)).await;
        assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
        let (s, _) = c.http(0).get(&format!("/ws?token={t}"), None).await;
        assert_eq!(s, 401);
        c.stop().await;
    }
);

both_backends!(
    a_session_is_closed_when_its_token_expires,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, |s| {
            s.auth.token_ttl_secs = 3;
            s.session.heartbeat_interval_ms = 200;
        })
        .await;
        let (_u, t) = c.user("lapsing").await;
        let (other, _) = c.user("other").await;
        let thread = c.http(0).create_thread(&t, &[&other], Some("lapse")).await;
        let mut ws = c.ws(0, &t).await;
        // Valid for now: a send is stored and answered.
        let ack = ws.send_msg(thread, "before", "still valid").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        // The token lapses 3 s after it was issued; the session is closed at the next
        // heartbeat (200 ms) with 1008 — a long-lived socket is no way around the expiry.
        assert_eq!(ws.expect_close(Duration::from_secs(10)).await, Some(1008));
        let (s, _) = c.http(0).get("/api/v1/threads", Some(&t)).await;
        assert_eq!(s, 401);
        c.stop().await;
    }
);

both_backends!(
    the_hello_leaves_in_the_same_write_as_the_upgrade_answer,
    |b: Backend| async move {
        use tokio::io::AsyncReadExt;
        let c = Cluster::start(b, 1).await;
        let (user, token) = c.user("greeted").await;
        let mut tcp = confab_tests::raw_upgrade(c.node(0).port, &token).await;
        // One read: whatever the node wrote first. The session starts before the upgrade is
        // answered, so the hello is already queued behind the 101 and both go in one write
        // (one segment on loopback), instead of the hello following once the start is done.
        let mut buf = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer"))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = &buf[..n];
        let text = String::from_utf8_lossy(got);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        let end = text
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head: {text}"))
            + 4;
        let frame = &got[end..];
        // An unmasked, final text frame (0x81) whose payload is the hello.
        assert!(frame.len() > 4, "the first read held only the head: {text}");
        assert_eq!(frame[0], 0x81, "{frame:?}");
        let (len, at) = match frame[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => panic!("a hello over 64 KiB"),
            short => (usize::from(short), 2),
        };
        assert_eq!(frame.len(), at + len, "exactly one frame: {frame:?}");
        let hello: Value =
            serde_json::from_slice(&frame[at..]).unwrap_or_else(|e| panic!("{e}: {frame:?}"));
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["user"]["id"], json!(user.id), "{hello}");
        c.stop().await;
    }
);

/// The server frames (unmasked, unfragmented) in `bytes`, as JSON.
fn server_frames(mut bytes: &[u8]) -> Vec<Value> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (len, at) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => panic!("a frame over 64 KiB"),
            short => (usize::from(short), 2),
        };
        assert!(bytes.len() >= at + len, "a frame cut short: {bytes:?}");
        assert_eq!(bytes[0], 0x81, "not a final text frame: {bytes:?}");
        let frame = serde_json::from_slice(&bytes[at..at + len])
            .unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
        frames.push(frame);
        bytes = &bytes[at + len..];
    }
    assert!(bytes.is_empty(), "trailing bytes {bytes:?}");
    frames
}

both_backends!(
    a_write_delay_sends_what_queued_in_its_window_in_one_write,
    |b: Backend| async move {
        use tokio::io::AsyncReadExt;
        use tokio::sync::mpsc::UnboundedReceiver;
        const WINDOW_MS: u64 = 2000;
        type Read = (Vec<Value>, std::time::Instant);
        /// The next read of the raw socket: its frames, and when it was read.
        async fn read(reads: &mut UnboundedReceiver<Read>) -> Read {
            tokio::time::timeout(Duration::from_secs(15), reads.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing delivered"))
                .unwrap_or_else(|| panic!("the socket closed"))
        }
        let seqs = |frames: &[Value]| -> Vec<i64> {
            frames
                .iter()
                .filter(|f| f["type"] == "message")
                .filter_map(|f| f["seq"].as_i64())
                .collect()
        };
        let c = Cluster::start_with(b, 2, |s| s.session.write_delay_ms = WINDOW_MS).await;
        let (_alice, at) = c.user("writer").await;
        let (bob, bt) = c.user("reader").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut ws = c.ws(0, &at).await;
        // Bob reads his raw socket on the other node: the 101 and the hello come first (a
        // reply, not held by the window).
        let mut tcp = confab_tests::raw_upgrade(c.node(1).port, &bt).await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        while !String::from_utf8_lossy(&head).contains("\"hello\"") {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no hello"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "closed before the hello");
            head.extend_from_slice(&buf[..n]);
        }
        // Whatever else the start queued for Bob (an event) is a window behind us after this.
        tokio::time::sleep(Duration::from_millis(WINDOW_MS + 200)).await;
        // From now on the socket is read as soon as anything arrives, so each read is what one
        // write (one segment on loopback) carried: writes 30 ms apart are never read together.
        let (tx, mut reads) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0
                    || tx
                        .send((server_frames(&buf[..n]), std::time::Instant::now()))
                        .is_err()
                {
                    break;
                }
            }
        });
        // Four sends 30 ms apart, all well inside one window, each acknowledged.
        let started = std::time::Instant::now();
        let mut reqs = Vec::new();
        for i in 1..=4 {
            let req = ws.next_req();
            ws.send_json(json!({"type": "send", "req": req, "thread_id": thread,
                "client_msg_id": format!("w{i}"), "body": format!("b{i}")}))
                .await;
            reqs.push(req);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for req in reqs {
            let r = req.clone();
            let ack = ws.recv_until(move |f| f["req"] == r.as_str()).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        // Reads that carry no message (an event) are skipped.
        let mut got = read(&mut reads).await;
        while seqs(&got.0).is_empty() {
            got = read(&mut reads).await;
        }
        // The first message opened a window; the rest queued within it and all four left in
        // one write — not before the window's end (a timer never fires early; 100 ms of slack
        // for two clocks).
        assert_eq!(seqs(&got.0), [1, 2, 3, 4], "{:?}", got.0);
        let waited = got.1 - started;
        assert!(
            waited >= Duration::from_millis(WINDOW_MS - 100),
            "delivered {waited:?} after the first send, inside the {WINDOW_MS} ms window"
        );
        reader.abort();
        c.stop().await;
    }
);
