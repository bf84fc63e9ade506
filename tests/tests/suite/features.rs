//! Everything the seed chat apps do, live across nodes: finding people, the thread list with
//! unread counts, opening a thread, read receipts, deletes, edits, reactions, typing, rooms
//! (add, leave, public, random) and reports. Every scenario runs on two nodes with its users
//! spread over both, and checks what each member sees live and what is stored afterwards.

use confab_protocol::{ThreadId, UserRef};
use confab_tests::{both_backends, Backend, Cluster, Ws};
use serde_json::{json, Value};
use std::time::Duration;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

fn is_type(t: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == t
}

fn is_msg(body: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == "message" && f["body"] == body
}

/// GET that must succeed; returns the body.
async fn get_ok(c: &Cluster, node: usize, path: &str, token: &str) -> Value {
    let (s, b) = c.http(node).get(path, Some(token)).await;
    assert_eq!(s, 200, "GET {path}: {b}");
    b
}

/// Assert an HTTP refusal with its status and code.
fn refused(reply: (u16, Value), status: u16, code: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["code"], code, "{}", reply.1);
}

/// Assert a WebSocket error reply with its code.
fn ws_refused(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

fn ws_ok(reply: &Value) {
    assert_eq!(reply["type"], "ok", "{reply}");
}

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["seq"].as_i64()).collect())
        .unwrap_or_default()
}

fn ids(list: &Value, key: &str) -> Vec<Value> {
    list[key]
        .as_array()
        .map(|a| a.iter().map(|t| t["id"].clone()).collect())
        .unwrap_or_default()
}

/// The thread list entry of `thread`.
fn entry(list: &Value, thread: ThreadId) -> Value {
    list["threads"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == json!(thread)).cloned())
        .unwrap_or_else(|| panic!("thread {thread} not in {list}"))
}

/// Send and return the ack (asserting it is one).
async fn send(ws: &mut Ws, thread: ThreadId, cid: &str, body: &str) -> Value {
    let ack = ws.send_msg(thread, cid, body).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// Every frame that arrives within `wait`.
async fn collect(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match ws.next_frame(left).await {
            Some(f) => out.push(f),
            None => return out,
        }
    }
}

async fn create(c: &Cluster, node: usize, token: &str, members: &[&UserRef], body: Value) -> Value {
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let mut body = body;
    body["member_ids"] = json!(ids);
    let (s, b) = c
        .http(node)
        .post("/api/v1/threads", Some(token), body)
        .await;
    assert_eq!(s, 201, "{b}");
    b
}

fn tid(v: &Value) -> ThreadId {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {v}"))
}

both_backends!(
    find_people_is_a_case_insensitive_prefix_search_without_the_caller,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let h = c.http(0);
        let (alice, at) = h.register_and_login("Alice", "password123").await;
        let (albert, _) = h.register_and_login("ALBERT", "password123").await;
        let (alfred, _) = h.register_and_login("alfred", "password123").await;
        h.register_and_login("bob", "password123").await;
        for i in 0..22 {
            h.register_and_login(&format!("zz{i:02}"), "password123")
                .await;
        }
        let found = get_ok(&c, 1, "/api/v1/users?q=aL", &at).await;
        let names: Vec<&str> = found
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["username"].as_str()).collect())
            .unwrap_or_default();
        // Alphabetical by lower-cased name; the caller (Alice) is left out.
        assert_eq!(names, vec!["ALBERT", "alfred"], "{found}");
        assert_eq!(found[0]["id"], json!(albert.id));
        assert_eq!(found[1]["id"], json!(alfred.id));
        assert!(!found.to_string().contains(&alice.id.to_string()));
        let many = get_ok(&c, 1, "/api/v1/users?q=ZZ", &at).await;
        assert_eq!(many.as_array().map(Vec::len), Some(20), "capped at 20");
        assert_eq!(many[0]["username"], "zz00");
        let none = get_ok(&c, 0, "/api/v1/users?q=a%25", &at).await;
        assert_eq!(none, json!([]), "a % is a literal, not a wildcard");
        refused(h.get("/api/v1/users?q=al", None).await, 401, "unauthorized");
        refused(
            h.get(&format!("/api/v1/users?q={}", "a".repeat(33)), Some(&at))
                .await,
            400,
            "bad_request",
        );
        c.stop().await;
    }
);

both_backends!(
    thread_list_orders_by_activity_with_last_message_and_exact_unread_counts,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let (dave, _dt) = c.user("dave").await;
        let (erin, et) = c.user("erin").await;
        let mut a = c.ws(0, &at).await;
        let mut bw = c.ws(1, &bt).await;
        let mut cw = c.ws(1, &ct).await;
        let mut ew = c.ws(0, &et).await;

        let t1 = c.http(0).create_thread(&at, &[&bob], None).await;
        let t2 = c
            .http(1)
            .create_thread(&at, &[&bob, &carol], Some("trio"))
            .await;
        let t3 = c.http(0).create_thread(&at, &[&carol], None).await;
        // Each creation reaches the other members live, on the other node.
        for t in [t1, t2] {
            let f = bw
                .recv_until(move |f| f["type"] == "thread_created" && f["thread"]["id"] == json!(t))
                .await;
            assert!(f["thread"]["members"]
                .as_array()
                .is_some_and(|m| !m.is_empty()));
        }
        cw.recv_until(|f| f["type"] == "thread_created" && f["thread"]["id"] == json!(t3))
            .await;

        for i in 1..=3 {
            send(&mut bw, t1, &format!("b{i}"), &format!("bob {i}")).await;
        }
        send(&mut a, t2, "a1", "alice 1").await;
        send(&mut a, t2, "a2", "alice 2").await;
        send(&mut cw, t3, "c1", "carol 1").await;
        let b4 = send(&mut bw, t2, "b4", "bob 4").await;

        let list = get_ok(&c, 1, "/api/v1/threads", &at).await;
        assert_eq!(ids(&list, "threads"), vec![json!(t2), json!(t3), json!(t1)]);
        assert_eq!(list["next_cursor"], Value::Null);
        let e2 = entry(&list, t2);
        assert_eq!(e2["name"], "trio");
        assert_eq!(e2["kind"], "group");
        assert_eq!(e2["members"].as_array().map(Vec::len), Some(3));
        assert_eq!(e2["last_message"]["id"], b4["id"]);
        assert_eq!(e2["last_message"]["seq"], 3);
        assert_eq!(e2["last_message"]["sender_id"], json!(bob.id));
        assert_eq!(e2["last_message"]["body"], "bob 4");
        assert_eq!(e2["last_message"]["deleted"], false);
        assert_eq!(e2["last_message"]["created_at"], b4["created_at"]);
        assert_eq!(e2["last_activity_at"], b4["created_at"]);
        assert_eq!(e2["last_seq"], 3);
        // Alice's own two messages are not unread; bob's one after them is.
        assert_eq!(e2["unread_count"], 1);
        assert_eq!(e2["last_read_seq"], 2);
        let e1 = entry(&list, t1);
        assert_eq!(e1["kind"], "direct");
        assert_eq!(e1["name"], Value::Null);
        assert_eq!(e1["unread_count"], 3);
        assert_eq!(e1["last_read_seq"], 0);
        assert_eq!(e1["last_message"]["body"], "bob 3");
        let member_ids: Vec<Value> = e1["members"]
            .as_array()
            .map(|m| m.iter().map(|u| u["id"].clone()).collect())
            .unwrap_or_default();
        assert!(member_ids.contains(&json!(alice.id)) && member_ids.contains(&json!(bob.id)));
        assert_eq!(entry(&list, t3)["unread_count"], 1);

        // Own messages never count: bob has nothing unread anywhere.
        let bl = get_ok(&c, 0, "/api/v1/threads", &bt).await;
        assert_eq!(ids(&bl, "threads"), vec![json!(t2), json!(t1)]);
        assert_eq!(entry(&bl, t1)["unread_count"], 0);
        assert_eq!(entry(&bl, t1)["last_read_seq"], 3);
        assert_eq!(entry(&bl, t2)["unread_count"], 0);
        let cl = get_ok(&c, 0, "/api/v1/threads", &ct).await;
        assert_eq!(entry(&cl, t2)["unread_count"], 3);
        assert_eq!(entry(&cl, t3)["unread_count"], 0);

        // A deleted last message shows as deleted and stops counting as unread.
        let del = bw
            .request(json!({"type":"delete","message_id":b4["id"]}))
            .await;
        ws_ok(&del);
        let list = get_ok(&c, 0, "/api/v1/threads", &at).await;
        let e2 = entry(&list, t2);
        assert_eq!(e2["last_message"]["body"], "[message deleted]");
        assert_eq!(e2["last_message"]["deleted"], true);
        assert_eq!(e2["unread_count"], 0);
        assert_eq!(
            ids(&list, "threads")[0],
            json!(t2),
            "a delete is not activity"
        );
        assert_eq!(
            entry(&get_ok(&c, 1, "/api/v1/threads", &ct).await, t2)["unread_count"],
            2
        );

        // Keyset pages with an opaque cursor.
        let p1 = get_ok(&c, 0, "/api/v1/threads?limit=2", &at).await;
        assert_eq!(ids(&p1, "threads"), vec![json!(t2), json!(t3)]);
        let cursor = p1["next_cursor"].as_str().unwrap_or_default().to_owned();
        assert!(!cursor.is_empty(), "{p1}");
        let p2 = get_ok(
            &c,
            1,
            &format!("/api/v1/threads?limit=2&cursor={cursor}"),
            &at,
        )
        .await;
        assert_eq!(ids(&p2, "threads"), vec![json!(t1)]);
        assert_eq!(p2["next_cursor"], Value::Null);
        let h = c.http(0);
        refused(
            h.get("/api/v1/threads?cursor=nope", Some(&at)).await,
            400,
            "bad_request",
        );
        refused(
            h.get("/api/v1/threads?limit=0", Some(&at)).await,
            400,
            "bad_request",
        );
        refused(
            h.get("/api/v1/threads?limit=101", Some(&at)).await,
            400,
            "bad_request",
        );
        refused(h.get("/api/v1/threads", None).await, 401, "unauthorized");

        // A new thread reaches every member's sessions at once and tops the list, empty.
        let t4 = c
            .http(0)
            .create_thread(&at, &[&bob, &carol, &dave], Some("quad"))
            .await;
        let f = bw
            .recv_until(move |f| f["type"] == "thread_created" && f["thread"]["id"] == json!(t4))
            .await;
        assert_eq!(f["thread"]["name"], "quad");
        assert_eq!(f["thread"]["members"].as_array().map(Vec::len), Some(4));
        cw.recv_until(move |f| f["type"] == "thread_created" && f["thread"]["id"] == json!(t4))
            .await;
        let list = get_ok(&c, 1, "/api/v1/threads", &bt).await;
        let e4 = entry(&list, t4);
        assert_eq!(ids(&list, "threads")[0], json!(t4));
        assert_eq!(e4["last_message"], Value::Null);
        assert_eq!(e4["unread_count"], 0);
        assert_eq!(e4["last_seq"], 0);

        // Adding a member: the newcomer gets thread_created, the others member_joined.
        let (s, body) = c
            .http(1)
            .post(
                &format!("/api/v1/threads/{t4}/members"),
                Some(&at),
                json!({"user_ids":[erin.id]}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let f = ew
            .recv_until(move |f| f["type"] == "thread_created" && f["thread"]["id"] == json!(t4))
            .await;
        assert_eq!(f["thread"]["members"].as_array().map(Vec::len), Some(5));
        let j = bw.recv_until(is_type("member_joined")).await;
        assert_eq!(j["thread_id"], json!(t4));
        assert_eq!(j["user"]["id"], json!(erin.id));
        assert_eq!(j["last_seq"], 0);
        a.recv_until(|f| f["type"] == "member_joined" && f["thread_id"] == json!(t4))
            .await;
        assert_eq!(
            ids(&get_ok(&c, 0, "/api/v1/threads", &et).await, "threads"),
            vec![json!(t4)]
        );
        c.stop().await;
    }
);

/// `text` percent-encoded for a path segment.
fn path_segment(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

both_backends!(
    messages_are_edited_reacted_to_and_deleted_over_http_as_over_the_socket,
    |b: Backend| async move {
        use reqwest::Method;
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_erin, et) = c.user("erin").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a_ws = c.ws(0, &at).await;
        let mut b_ws = c.ws(1, &bt).await;
        let ack = send(&mut a_ws, t, "m1", "first draft").await;
        b_ws.recv_until(is_msg("first draft")).await;
        let id = ack["id"].as_str().unwrap_or_default().to_owned();
        let msg = format!("/api/v1/messages/{id}");
        let edit = |body: &str| Some(json!({ "body": body }));

        // Edit: the sender only; every member sees it, history keeps it.
        refused(
            c.http(1)
                .request(Method::PATCH, &msg, Some(&bt), edit("mine now"))
                .await,
            403,
            "forbidden",
        );
        refused(
            c.http(0)
                .request(Method::PATCH, &msg, Some(&et), edit("hi"))
                .await,
            403,
            "not_member",
        );
        refused(
            c.http(0)
                .request(Method::PATCH, &msg, Some(&at), edit(" "))
                .await,
            400,
            "bad_request",
        );
        assert_eq!(
            c.http(0)
                .request(Method::PATCH, &msg, Some(&at), edit("final"))
                .await
                .0,
            204
        );
        let ev = b_ws.recv_until(is_type("message_edited")).await;
        assert_eq!((&ev["id"], &ev["body"]), (&json!(id), &json!("final")));

        // React and unreact (the emoji percent-encoded in the path): idempotent, announced once.
        let thumbs = format!("{msg}/reactions/{}", path_segment("👍"));
        for _ in 0..2 {
            assert_eq!(
                c.http(1)
                    .request(Method::PUT, &thumbs, Some(&bt), None)
                    .await
                    .0,
                204
            );
        }
        let ev = a_ws.recv_until(is_type("reaction")).await;
        assert_eq!(
            (&ev["user_id"], &ev["emoji"], &ev["added"], &ev["count"]),
            (&json!(bob.id), &json!("👍"), &json!(true), &json!(1))
        );
        let not_emoji = format!("{msg}/reactions/ok");
        refused(
            c.http(1)
                .request(Method::PUT, &not_emoji, Some(&bt), None)
                .await,
            400,
            "bad_request",
        );
        assert_eq!(
            c.http(1)
                .request(Method::DELETE, &thumbs, Some(&bt), None)
                .await
                .0,
            204
        );
        let ev = a_ws.recv_until(is_type("reaction")).await;
        assert_eq!((&ev["added"], &ev["count"]), (&json!(false), &json!(0)));
        a_ws.expect_none(is_type("reaction"), QUIET).await;

        // Delete: the sender only, then it stays as [message deleted] and takes no more edits.
        refused(
            c.http(1)
                .request(Method::DELETE, &msg, Some(&bt), None)
                .await,
            403,
            "forbidden",
        );
        assert_eq!(
            c.http(0)
                .request(Method::DELETE, &msg, Some(&at), None)
                .await
                .0,
            204
        );
        let ev = b_ws.recv_until(is_type("message_deleted")).await;
        assert_eq!((&ev["id"], &ev["deleted"]), (&json!(id), &json!(true)));
        assert_eq!(
            c.http(0)
                .request(Method::DELETE, &msg, Some(&at), None)
                .await
                .0,
            204
        );
        refused(
            c.http(0)
                .request(Method::PATCH, &msg, Some(&at), edit("again"))
                .await,
            400,
            "bad_request",
        );
        refused(
            c.http(1)
                .request(Method::PUT, &thumbs, Some(&bt), None)
                .await,
            400,
            "bad_request",
        );
        b_ws.expect_none(is_type("message_deleted"), QUIET).await;
        let page = get_ok(&c, 1, &format!("/api/v1/threads/{t}/messages"), &bt).await;
        let m = &page["messages"][0];
        assert_eq!(
            (&m["body"], &m["deleted"], &m["sender_id"]),
            (&json!("[message deleted]"), &json!(true), &json!(alice.id))
        );
        c.stop().await;
    }
);

both_backends!(
    a_message_sent_over_http_is_stored_acked_and_delivered_like_a_frame,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| {
            s.limits.user_sends_per_sec = 0.001;
            s.limits.user_sends_burst = 4.0;
        })
        .await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_erin, et) = c.user("erin").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let other = c.http(0).create_thread(&at, &[], Some("solo")).await;
        let mut a_ws = c.ws(0, &at).await;
        let mut b_ws = c.ws(1, &bt).await;
        let h = c.http(0);
        let path = format!("/api/v1/threads/{t}/messages");
        let (s, sent) = h
            .post(
                &path,
                Some(&at),
                json!({"client_msg_id": "h1", "body": "over http"}),
            )
            .await;
        assert_eq!(s, 201, "{sent}");
        assert_eq!(
            (&sent["thread_id"], &sent["seq"]),
            (&json!(t), &json!(1)),
            "{sent}"
        );
        assert_eq!(sent.get("duplicate"), None, "{sent}");
        // Live to the other member (on the other node) and to the sender's own session.
        for ws in [&mut b_ws, &mut a_ws] {
            let m = ws.recv_until(is_msg("over http")).await;
            assert_eq!((&m["id"], &m["sender_id"]), (&sent["id"], &json!(alice.id)));
        }
        // A retry is the original answer; the same key in another thread is a conflict.
        let (s, again) = h
            .post(
                &path,
                Some(&at),
                json!({"client_msg_id": "h1", "body": "over http"}),
            )
            .await;
        assert_eq!(
            (s, &again["id"], &again["duplicate"]),
            (200, &sent["id"], &json!(true))
        );
        refused(
            h.post(
                &format!("/api/v1/threads/{other}/messages"),
                Some(&at),
                json!({"client_msg_id": "h1", "body": "elsewhere"}),
            )
            .await,
            409,
            "conflict",
        );
        // The frame's checks, as HTTP statuses.
        let bad = json!({"client_msg_id": "h2", "body": "   "});
        refused(h.post(&path, Some(&bt), bad).await, 400, "bad_request");
        let long = json!({"client_msg_id": "h3", "body": "x".repeat(10_001)});
        refused(h.post(&path, Some(&bt), long).await, 413, "too_large");
        let extra = json!({"client_msg_id": "h4", "body": "hi", "admin": true});
        refused(h.post(&path, Some(&bt), extra).await, 400, "bad_request");
        let outsider = json!({"client_msg_id": "h5", "body": "let me in"});
        refused(h.post(&path, Some(&et), outsider).await, 403, "not_member");
        refused(h.post(&path, None, json!({})).await, 401, "unauthorized");
        // The user's send budget on a node (burst 4 here) is shared with their sockets there:
        // alice has spent 3 (two answered, one conflict), her socket takes the 4th, and the
        // next is refused.
        send(&mut a_ws, t, "w1", "over the socket").await;
        let (s, limited) = h
            .post(
                &path,
                Some(&at),
                json!({"client_msg_id": "h6", "body": "one more"}),
            )
            .await;
        assert_eq!(
            (s, limited["code"].as_str()),
            (429, Some("rate_limited")),
            "{limited}"
        );
        let page = get_ok(&c, 1, &path, &bt).await;
        let bodies: Vec<&str> = page["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["body"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(bodies, ["over http", "over the socket"]);
        c.stop().await;
    }
);

both_backends!(
    one_thread_is_shown_as_its_thread_list_entry_to_members_only,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let (_erin, et) = c.user("erin").await;
        let mut a = c.ws(0, &at).await;
        let t = c
            .http(0)
            .create_thread(&at, &[&bob, &carol], Some("trio"))
            .await;
        let empty = get_ok(&c, 1, &format!("/api/v1/threads/{t}"), &bt).await;
        assert_eq!(
            (
                &empty["last_message"],
                &empty["unread_count"],
                &empty["last_seq"]
            ),
            (&Value::Null, &json!(0), &json!(0)),
            "{empty}"
        );
        send(&mut a, t, "a1", "alice 1").await;
        let a2 = send(&mut a, t, "a2", "alice 2").await;
        // Bob's view on the other node: the same entry as in his thread list.
        let one = get_ok(&c, 1, &format!("/api/v1/threads/{t}"), &bt).await;
        let list = get_ok(&c, 1, "/api/v1/threads", &bt).await;
        assert_eq!(one, entry(&list, t));
        assert_eq!(one["name"], "trio");
        assert_eq!(one["members"].as_array().map(Vec::len), Some(3));
        assert_eq!(one["last_message"]["id"], a2["id"]);
        assert_eq!(
            (&one["unread_count"], &one["last_read_seq"]),
            (&json!(2), &json!(0))
        );
        // The sender has read their own messages.
        let mine = get_ok(&c, 0, &format!("/api/v1/threads/{t}"), &at).await;
        assert_eq!(mine["unread_count"], 0, "{mine}");
        // Outsiders, unknown ids and former members alike: not_member; a bad id: bad_request.
        let h = c.http(0);
        refused(
            h.get(&format!("/api/v1/threads/{t}"), Some(&et)).await,
            403,
            "not_member",
        );
        let unknown = ThreadId::new();
        refused(
            h.get(&format!("/api/v1/threads/{unknown}"), Some(&at))
                .await,
            403,
            "not_member",
        );
        refused(
            h.get("/api/v1/threads/nope", Some(&at)).await,
            400,
            "bad_request",
        );
        refused(
            h.get(&format!("/api/v1/threads/{t}"), None).await,
            401,
            "unauthorized",
        );
        let (s, _) = h
            .delete(&format!("/api/v1/threads/{t}/members/me"), Some(&ct))
            .await;
        assert_eq!(s, 204);
        refused(
            h.get(&format!("/api/v1/threads/{t}"), Some(&ct)).await,
            403,
            "not_member",
        );
        c.stop().await;
    }
);

both_backends!(
    opening_a_thread_returns_the_last_20_or_every_unread_one_up_to_the_cap,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| s.limits.max_unread_page = 28).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let (dave, dt) = c.user("dave").await;
        let (_erin, et) = c.user("erin").await;
        let room = c
            .http(0)
            .create_thread(&at, &[&bob, &carol, &dave], Some("big"))
            .await;
        let mut a = c.ws(0, &at).await;
        for i in 1..=30 {
            send(&mut a, room, &format!("c{i}"), &format!("m{i}")).await;
        }
        let path = format!("/api/v1/threads/{room}/messages");
        let read = |t: &str, seq: i64| {
            let (h, t, p) = (
                c.http(1),
                t.to_owned(),
                format!("/api/v1/threads/{room}/read"),
            );
            async move {
                let (s, b) = h.post(&p, Some(&t), json!({ "seq": seq })).await;
                assert_eq!(s, 200, "{b}");
                b
            }
        };

        // 30 unread, more than 20: all of them, but the cap (28) wins.
        let p = get_ok(&c, 1, &path, &ct).await;
        assert_eq!(seqs(&p), (3..=30).collect::<Vec<_>>());
        assert_eq!(p["next_before_seq"], 3);
        // 25 unread: all 25.
        read(&dt, 5).await;
        let p = get_ok(&c, 0, &path, &dt).await;
        assert_eq!(seqs(&p), (6..=30).collect::<Vec<_>>());
        // 15 unread of 30: the last 20.
        read(&bt, 15).await;
        let p = get_ok(&c, 1, &path, &bt).await;
        assert_eq!(seqs(&p), (11..=30).collect::<Vec<_>>());
        assert_eq!(p["next_before_seq"], 11);
        // Nothing unread (the sender): the last 20.
        assert_eq!(
            seqs(&get_ok(&c, 0, &path, &at).await),
            (11..=30).collect::<Vec<_>>()
        );
        // Older pages hold 10, by keyset.
        let p = get_ok(&c, 0, &format!("{path}?before_seq=11"), &bt).await;
        assert_eq!(seqs(&p), (1..=10).collect::<Vec<_>>());
        assert_eq!(p["next_before_seq"], Value::Null);
        let p = get_ok(&c, 0, &format!("{path}?before_seq=25"), &bt).await;
        assert_eq!(seqs(&p), (15..=24).collect::<Vec<_>>());
        // An explicit limit always wins.
        assert_eq!(
            seqs(&get_ok(&c, 1, &format!("{path}?limit=5"), &ct).await),
            (26..=30).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&get_ok(&c, 1, &format!("{path}?limit=3&before_seq=10"), &ct).await),
            vec![7, 8, 9]
        );
        // Opening does not mark anything read.
        assert_eq!(seqs(&get_ok(&c, 1, &path, &ct).await).len(), 28);
        refused(c.http(0).get(&path, Some(&et)).await, 403, "not_member");
        c.stop().await;
    }
);

both_backends!(
    read_state_only_moves_forward_and_reaches_members_and_other_devices,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let room = c.http(0).create_thread(&at, &[&bob], Some("pair")).await;
        let mut a = c.ws(0, &at).await;
        let mut b1 = c.ws(1, &bt).await;
        let mut b2 = c.ws(0, &bt).await;
        let mut cw = c.ws(1, &ct).await;
        for i in 1..=5 {
            send(&mut a, room, &format!("c{i}"), &format!("m{i}")).await;
        }
        b2.recv_until(is_msg("m5")).await;

        ws_ok(
            &b1.request(json!({"type":"mark_read","thread_id":room,"seq":3}))
                .await,
        );
        // A receipt for alice (other node) and a sync for bob's other device.
        for ws in [&mut a, &mut b2] {
            let r = ws.recv_until(is_type("read")).await;
            assert_eq!(r["thread_id"], json!(room));
            assert_eq!(r["user_id"], json!(bob.id));
            assert_eq!(r["seq"], 3);
        }
        let e = entry(&get_ok(&c, 1, "/api/v1/threads", &bt).await, room);
        assert_eq!(
            (e["last_read_seq"].clone(), e["unread_count"].clone()),
            (json!(3), json!(2))
        );

        // Backwards: accepted, changes nothing, announces nothing.
        ws_ok(
            &b1.request(json!({"type":"mark_read","thread_id":room,"seq":2}))
                .await,
        );
        b2.expect_none(is_type("read"), QUIET).await;
        let e = entry(&get_ok(&c, 0, "/api/v1/threads", &bt).await, room);
        assert_eq!(e["last_read_seq"], 3);

        // Past the end: clamped to the thread's last seq.
        ws_ok(
            &b2.request(json!({"type":"mark_read","thread_id":room,"seq":99}))
                .await,
        );
        let r = a.recv_until(is_type("read")).await;
        assert_eq!(r["seq"], 5);
        // (b1 may still hold its own earlier receipt: look for this one.)
        b1.recv_until(|f| f["type"] == "read" && f["seq"] == 5)
            .await;
        let e = entry(&get_ok(&c, 1, "/api/v1/threads", &bt).await, room);
        assert_eq!(
            (e["last_read_seq"].clone(), e["unread_count"].clone()),
            (json!(5), json!(0))
        );

        // Over HTTP too; the answer is the position after the call (never lower).
        let h = c.http(1);
        let (s, body) = h
            .post(
                &format!("/api/v1/threads/{room}/read"),
                Some(&bt),
                json!({"seq":4}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body, json!({"thread_id": room, "last_read_seq": 5}));
        send(&mut a, room, "c6", "m6").await;
        let (s, body) = h
            .post(
                &format!("/api/v1/threads/{room}/read"),
                Some(&bt),
                json!({"seq":6}),
            )
            .await;
        assert_eq!((s, body["last_read_seq"].clone()), (200, json!(6)));
        let r = a.recv_until(is_type("read")).await;
        assert_eq!(
            (r["user_id"].clone(), r["seq"].clone()),
            (json!(bob.id), json!(6))
        );

        // Refusals.
        ws_refused(
            &cw.request(json!({"type":"mark_read","thread_id":room,"seq":1}))
                .await,
            "not_member",
        );
        ws_refused(
            &b1.request(json!({"type":"mark_read","thread_id":room,"seq":-1}))
                .await,
            "bad_request",
        );
        refused(
            h.post(
                &format!("/api/v1/threads/{room}/read"),
                Some(&ct),
                json!({"seq":1}),
            )
            .await,
            403,
            "not_member",
        );
        refused(
            h.post(
                &format!("/api/v1/threads/{room}/read"),
                Some(&bt),
                json!({"seq":"x"}),
            )
            .await,
            400,
            "bad_request",
        );
        cw.expect_none(is_type("read"), QUIET).await;
        assert_eq!(
            entry(&get_ok(&c, 0, "/api/v1/threads", &at).await, room)["last_read_seq"],
            6
        );
        c.stop().await;
    }
);

both_backends!(
    only_the_sender_deletes_and_the_message_stays_as_deleted_everywhere,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let room = c.http(0).create_thread(&at, &[&bob], Some("room")).await;
        let mut a1 = c.ws(0, &at).await;
        let mut a2 = c.ws(1, &at).await;
        let mut bw = c.ws(1, &bt).await;
        let mut cw = c.ws(0, &ct).await;
        send(&mut a1, room, "c1", "keep").await;
        let ack = send(&mut a1, room, "c2", "oops").await;
        let mid = ack["id"].clone();
        bw.recv_until(is_msg("oops")).await;
        ws_ok(
            &bw.request(json!({"type":"react","message_id":mid,"emoji":"👍"}))
                .await,
        );

        ws_refused(
            &bw.request(json!({"type":"delete","message_id":mid})).await,
            "forbidden",
        );
        ws_refused(
            &cw.request(json!({"type":"delete","message_id":mid})).await,
            "not_member",
        );
        ws_refused(
            &cw.request(json!({"type":"delete","message_id":uuid::Uuid::now_v7()}))
                .await,
            "not_member",
        );
        ws_ok(&a1.request(json!({"type":"delete","message_id":mid})).await);
        for ws in [&mut bw, &mut a2] {
            let d = ws.recv_until(is_type("message_deleted")).await;
            assert_eq!(
                d,
                json!({"type":"message_deleted","thread_id":room,"id":mid,"seq":2,
                       "body":"[message deleted]","deleted":true,"change_seq":2})
            );
        }
        cw.expect_none(is_type("message_deleted"), Duration::from_millis(100))
            .await;

        let page = get_ok(&c, 1, &format!("/api/v1/threads/{room}/messages"), &bt).await;
        let m = &page["messages"][1];
        assert_eq!(m["id"], mid);
        assert_eq!(m["seq"], 2);
        assert_eq!(m["body"], "[message deleted]");
        assert_eq!(m["deleted"], true);
        assert_eq!(m["sender_id"], json!(alice.id));
        assert!(
            m.get("reactions").is_none(),
            "a deleted message loses its reactions: {m}"
        );
        assert_eq!(page["messages"][0]["body"], "keep");
        assert!(page["messages"][0].get("deleted").is_none());

        // Deleting again is accepted and announces nothing; a deleted message cannot change.
        ws_ok(&a1.request(json!({"type":"delete","message_id":mid})).await);
        bw.expect_none(is_type("message_deleted"), QUIET).await;
        ws_refused(
            &a1.request(json!({"type":"edit","message_id":mid,"body":"again"}))
                .await,
            "bad_request",
        );
        ws_refused(
            &bw.request(json!({"type":"react","message_id":mid,"emoji":"🎉"}))
                .await,
            "bad_request",
        );
        // The stored text is kept for moderators, never shown.
        let page = get_ok(&c, 0, &format!("/api/v1/threads/{room}/messages"), &at).await;
        assert!(!page.to_string().contains("oops"));
        c.stop().await;
    }
);

both_backends!(
    the_sender_edits_live_and_history_keeps_the_edit,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a1 = c.ws(0, &at).await;
        let mut a2 = c.ws(1, &at).await;
        let mut bw = c.ws(1, &bt).await;
        let mut cw = c.ws(0, &ct).await;
        let ack = send(&mut a1, t, "c1", "helo").await;
        let mid = ack["id"].clone();

        ws_ok(
            &a1.request(json!({"type":"edit","message_id":mid,"body":"hello"}))
                .await,
        );
        let mut edited_at = Value::Null;
        for ws in [&mut bw, &mut a2] {
            let e = ws.recv_until(is_type("message_edited")).await;
            assert_eq!(e["thread_id"], json!(t));
            assert_eq!(e["id"], mid);
            assert_eq!(e["seq"], 1);
            assert_eq!(e["body"], "hello");
            assert!(e["edited_at"].is_string(), "{e}");
            edited_at = e["edited_at"].clone();
        }
        let page = get_ok(&c, 1, &format!("/api/v1/threads/{t}/messages"), &bt).await;
        let m = &page["messages"][0];
        assert_eq!(m["body"], "hello");
        assert_eq!(m["edited_at"], edited_at);
        assert_eq!(m["created_at"], ack["created_at"]);
        assert_eq!(m["seq"], 1);
        let list = get_ok(&c, 0, "/api/v1/threads", &bt).await;
        assert_eq!(entry(&list, t)["last_message"]["body"], "hello");

        ws_refused(
            &bw.request(json!({"type":"edit","message_id":mid,"body":"mine now"}))
                .await,
            "forbidden",
        );
        ws_refused(
            &cw.request(json!({"type":"edit","message_id":mid,"body":"x"}))
                .await,
            "not_member",
        );
        ws_refused(
            &a1.request(json!({"type":"edit","message_id":mid,"body":"   "}))
                .await,
            "bad_request",
        );
        ws_refused(
            &a1.request(json!({"type":"edit","message_id":mid,"body":"x".repeat(10_001)}))
                .await,
            "too_large",
        );
        bw.expect_none(is_type("message_edited"), QUIET).await;
        let page = get_ok(&c, 0, &format!("/api/v1/threads/{t}/messages"), &at).await;
        assert_eq!(page["messages"][0]["body"], "hello");
        c.stop().await;
    }
);

both_backends!(
    reactions_are_one_per_user_and_emoji_counted_live_and_in_history,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let room = c.http(0).create_thread(&at, &[&bob], Some("r")).await;
        let mut a = c.ws(0, &at).await;
        // Alice's second device only watches, so it sees every event in order.
        let mut watch = c.ws(1, &at).await;
        let mut bw = c.ws(1, &bt).await;
        let mut cw = c.ws(1, &ct).await;
        let ack = send(&mut a, room, "c1", "react to me").await;
        let mid = ack["id"].clone();

        ws_ok(
            &bw.request(json!({"type":"react","message_id":mid,"emoji":"👍"}))
                .await,
        );
        let r = watch.recv_until(is_type("reaction")).await;
        assert_eq!(
            r,
            json!({"type":"reaction","thread_id":room,"message_id":mid,"user_id":bob.id,
                   "emoji":"👍","added":true,"count":1,"change_seq":1})
        );
        ws_ok(
            &a.request(json!({"type":"react","message_id":mid,"emoji":"👍"}))
                .await,
        );
        let r = watch.recv_until(is_type("reaction")).await;
        assert_eq!(
            (r["user_id"].clone(), r["count"].clone()),
            (json!(alice.id), json!(2))
        );
        bw.recv_until(|f| f["type"] == "reaction" && f["user_id"] == json!(alice.id))
            .await;
        // Twice is idempotent: accepted, nothing announced, the count unchanged.
        ws_ok(
            &bw.request(json!({"type":"react","message_id":mid,"emoji":"👍"}))
                .await,
        );
        ws_ok(
            &bw.request(json!({"type":"react","message_id":mid,"emoji":"🎉"}))
                .await,
        );
        let r = watch.recv_until(is_type("reaction")).await;
        // The repeated 👍 changed nothing, so it took no change number either.
        assert_eq!(
            (
                r["emoji"].clone(),
                r["count"].clone(),
                r["change_seq"].clone()
            ),
            (json!("🎉"), json!(1), json!(3))
        );

        let path = format!("/api/v1/threads/{room}/messages");
        let mine = get_ok(&c, 1, &path, &at).await;
        assert_eq!(
            mine["messages"][0]["reactions"],
            json!([{"emoji":"👍","count":2,"me":true},{"emoji":"🎉","count":1,"me":false}])
        );
        let his = get_ok(&c, 0, &path, &bt).await;
        assert_eq!(
            his["messages"][0]["reactions"],
            json!([{"emoji":"👍","count":2,"me":true},{"emoji":"🎉","count":1,"me":true}])
        );

        ws_ok(
            &bw.request(json!({"type":"unreact","message_id":mid,"emoji":"👍"}))
                .await,
        );
        let r = watch.recv_until(is_type("reaction")).await;
        assert_eq!(
            (r["emoji"].clone(), r["added"].clone(), r["count"].clone()),
            (json!("👍"), json!(false), json!(1))
        );
        ws_ok(
            &bw.request(json!({"type":"unreact","message_id":mid,"emoji":"👍"}))
                .await,
        );
        watch.expect_none(is_type("reaction"), QUIET).await;
        let mine = get_ok(&c, 1, &path, &at).await;
        assert_eq!(
            mine["messages"][0]["reactions"],
            json!([{"emoji":"👍","count":1,"me":true},{"emoji":"🎉","count":1,"me":false}])
        );

        for bad in ["", "ok", "1", ":)", "👍 ", "🎉🎉🎉🎉🎉🎉🎉🎉🎉"] {
            ws_refused(
                &bw.request(json!({"type":"react","message_id":mid,"emoji":bad}))
                    .await,
                "bad_request",
            );
        }
        ws_refused(
            &cw.request(json!({"type":"react","message_id":mid,"emoji":"👍"}))
                .await,
            "not_member",
        );
        ws_refused(
            &cw.request(json!({"type":"unreact","message_id":mid,"emoji":"👍"}))
                .await,
            "not_member",
        );
        cw.expect_none(is_type("reaction"), Duration::from_millis(100))
            .await;
        c.stop().await;
    }
);

both_backends!(
    typing_reaches_the_other_members_only_rate_limited_and_never_stored,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| s.limits.typing_interval_ms = 500).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let room = c.http(0).create_thread(&at, &[&bob], Some("t")).await;
        let mut a1 = c.ws(0, &at).await;
        let mut a2 = c.ws(1, &at).await;
        let mut bw = c.ws(1, &bt).await;
        let mut cw = c.ws(0, &ct).await;

        let started = tokio::time::Instant::now();
        ws_ok(&a1.request(json!({"type":"typing","thread_id":room})).await);
        let t = bw.recv_until(is_type("typing")).await;
        assert_eq!(
            t,
            json!({"type":"typing","thread_id":room,"user_id":alice.id,"expires_ms":5000})
        );
        // Within the interval: accepted and coalesced (nothing relayed).
        ws_ok(&a1.request(json!({"type":"typing","thread_id":room})).await);
        let left = Duration::from_millis(400).saturating_sub(started.elapsed());
        bw.expect_none(is_type("typing"), left).await;
        // The typist's own devices never get it.
        a2.expect_none(is_type("typing"), Duration::from_millis(100))
            .await;
        // After the interval, relayed again.
        tokio::time::sleep_until(started + Duration::from_millis(700)).await;
        ws_ok(&a1.request(json!({"type":"typing","thread_id":room})).await);
        bw.recv_until(is_type("typing")).await;
        ws_ok(&bw.request(json!({"type":"typing","thread_id":room})).await);
        let t = a2.recv_until(is_type("typing")).await;
        assert_eq!(t["user_id"], json!(bob.id));

        // Members only, every time (a refusal never turns into a coalesced ok).
        for _ in 0..2 {
            ws_refused(
                &cw.request(json!({"type":"typing","thread_id":room})).await,
                "not_member",
            );
        }
        cw.expect_none(is_type("typing"), QUIET).await;
        let page = get_ok(&c, 0, &format!("/api/v1/threads/{room}/messages"), &bt).await;
        assert_eq!(page["messages"], json!([]), "typing is never stored");
        c.stop().await;
    }
);

both_backends!(
    public_rooms_are_listed_joinable_and_joinable_at_random,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let lobby = tid(&create(&c, 0, &at, &[], json!({"name":"lobby","public":true})).await);
        let secret = tid(&create(&c, 0, &at, &[], json!({"name":"secret"})).await);
        let games = tid(&create(&c, 1, &at, &[], json!({"name":"games","public":true})).await);
        let mut a = c.ws(0, &at).await;
        // Alice's second device only watches (her sends would skip past events).
        let mut watch = c.ws(1, &at).await;
        let mut bw = c.ws(1, &bt).await;

        let rooms = get_ok(&c, 1, "/api/v1/rooms", &bt).await;
        assert_eq!(ids(&rooms, "rooms"), vec![json!(games), json!(lobby)]);
        assert_eq!(rooms["rooms"][0]["name"], "games");
        assert_eq!(rooms["rooms"][0]["member_count"], 1);
        assert_eq!(rooms["rooms"][0]["joined"], false);
        assert_eq!(rooms["next_cursor"], Value::Null);
        let p1 = get_ok(&c, 0, "/api/v1/rooms?limit=1", &bt).await;
        assert_eq!(ids(&p1, "rooms"), vec![json!(games)]);
        let cursor = p1["next_cursor"].as_str().unwrap_or_default().to_owned();
        let p2 = get_ok(
            &c,
            0,
            &format!("/api/v1/rooms?limit=1&cursor={cursor}"),
            &bt,
        )
        .await;
        assert_eq!(ids(&p2, "rooms"), vec![json!(lobby)]);
        assert_eq!(p2["next_cursor"], Value::Null);

        // Joining: bob's sessions get the room, alice hears he joined, and a message sent
        // right after the join reaches him.
        let (s, room) = c
            .http(1)
            .post(&format!("/api/v1/rooms/{lobby}/join"), Some(&bt), json!({}))
            .await;
        assert_eq!(s, 200, "{room}");
        assert_eq!(room["members"].as_array().map(Vec::len), Some(2));
        send(&mut a, lobby, "l1", "welcome").await;
        let f = bw.recv_until(is_type("thread_created")).await;
        assert_eq!(f["thread"]["id"], json!(lobby));
        let m = bw.recv_until(is_msg("welcome")).await;
        assert_eq!(m["thread_id"], json!(lobby));
        let j = watch.recv_until(is_type("member_joined")).await;
        assert_eq!(
            (j["thread_id"].clone(), j["user"]["id"].clone()),
            (json!(lobby), json!(bob.id))
        );
        // Joining again changes nothing.
        let (s, _) = c
            .http(0)
            .post(&format!("/api/v1/rooms/{lobby}/join"), Some(&bt), json!({}))
            .await;
        assert_eq!(s, 200);
        watch.expect_none(is_type("member_joined"), QUIET).await;

        // Private and missing rooms look the same: not found.
        let h = c.http(0);
        refused(
            h.post(
                &format!("/api/v1/rooms/{secret}/join"),
                Some(&bt),
                json!({}),
            )
            .await,
            404,
            "not_found",
        );
        refused(
            h.post(
                &format!("/api/v1/rooms/{}/join", uuid::Uuid::now_v7()),
                Some(&bt),
                json!({}),
            )
            .await,
            404,
            "not_found",
        );

        // Random: the only public room bob is not in, then none left.
        let (s, r) = c
            .http(1)
            .post("/api/v1/rooms/random/join", Some(&bt), json!({}))
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["id"], json!(games));
        bw.recv_until(|f| f["type"] == "thread_created" && f["thread"]["id"] == json!(games))
            .await;
        send(&mut a, games, "g1", "gg").await;
        bw.recv_until(is_msg("gg")).await;
        refused(
            c.http(0)
                .post("/api/v1/rooms/random/join", Some(&bt), json!({}))
                .await,
            404,
            "not_found",
        );
        let rooms = get_ok(&c, 0, "/api/v1/rooms", &bt).await;
        for r in rooms["rooms"].as_array().cloned().unwrap_or_default() {
            assert_eq!(
                (r["member_count"].clone(), r["joined"].clone()),
                (json!(2), json!(true))
            );
        }
        refused(
            h.get("/api/v1/rooms?limit=0", Some(&bt)).await,
            400,
            "bad_request",
        );
        refused(h.get("/api/v1/rooms", None).await, 401, "unauthorized");
        c.stop().await;
    }
);

both_backends!(
    adding_and_leaving_take_effect_at_once_on_every_node,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let (_dave, dt) = c.user("dave").await;
        let team = c.http(0).create_thread(&at, &[&carol], Some("team")).await;
        let mut a = c.ws(0, &at).await;
        // Alice's second device only watches (membership events arrive in order there).
        let mut watch = c.ws(1, &at).await;
        let mut b0 = c.ws(0, &bt).await;
        let mut b1 = c.ws(1, &bt).await;
        let mut cw = c.ws(1, &ct).await;

        for round in 0..3 {
            // Added (through either node): both of bob's sessions receive at once.
            let (s, body) = c
                .http(round % 2)
                .post(
                    &format!("/api/v1/threads/{team}/members"),
                    Some(&at),
                    json!({"user_ids":[bob.id]}),
                )
                .await;
            assert_eq!(s, 200, "{body}");
            let ack = send(&mut a, team, &format!("j{round}"), "right after join").await;
            for ws in [&mut b0, &mut b1] {
                ws.recv_until(|f| {
                    f["type"] == "thread_created" && f["thread"]["id"] == json!(team)
                })
                .await;
                let m = ws.recv_until(is_msg("right after join")).await;
                assert_eq!(m["seq"], ack["seq"]);
            }
            let j = watch.recv_until(is_type("member_joined")).await;
            assert_eq!(
                (j["thread_id"].clone(), j["user"]["id"].clone()),
                (json!(team), json!(bob.id))
            );

            // Left through node 1 while alice sends through node 0 and one of bob's sessions
            // is on node 0: the message sent right after the leave must not reach him.
            let (s, body) = c
                .http(1)
                .delete(&format!("/api/v1/threads/{team}/members/me"), Some(&bt))
                .await;
            assert_eq!(s, 204, "{body}");
            send(&mut a, team, &format!("l{round}"), "right after leave").await;
            cw.recv_until(is_msg("right after leave")).await;
            let left = watch.recv_until(is_type("member_left")).await;
            assert_eq!(
                (left["thread_id"].clone(), left["user_id"].clone()),
                (json!(team), json!(bob.id))
            );
            for ws in [&mut b0, &mut b1] {
                let seen = collect(ws, QUIET).await;
                assert!(
                    seen.iter()
                        .any(|f| f["type"] == "member_left" && f["user_id"] == json!(bob.id)),
                    "{seen:?}"
                );
                assert!(
                    !seen.iter().any(is_msg("right after leave")),
                    "leaked: {seen:?}"
                );
            }
        }

        // A former member is refused everywhere and no longer lists the thread.
        ws_refused(&b1.send_msg(team, "x", "still here?").await, "not_member");
        refused(
            c.http(0)
                .get(&format!("/api/v1/threads/{team}/messages"), Some(&bt))
                .await,
            403,
            "not_member",
        );
        let list = get_ok(&c, 1, "/api/v1/threads", &bt).await;
        assert!(!ids(&list, "threads").contains(&json!(team)));
        // Only members add; direct threads can be neither joined nor left.
        refused(
            c.http(1)
                .post(
                    &format!("/api/v1/threads/{team}/members"),
                    Some(&dt),
                    json!({"user_ids":[bob.id]}),
                )
                .await,
            403,
            "not_member",
        );
        let direct = c.http(0).create_thread(&at, &[&carol], None).await;
        refused(
            c.http(0)
                .delete(&format!("/api/v1/threads/{direct}/members/me"), Some(&ct))
                .await,
            400,
            "bad_request",
        );
        refused(
            c.http(0)
                .post(
                    &format!("/api/v1/threads/{direct}/members"),
                    Some(&at),
                    json!({"user_ids":[bob.id]}),
                )
                .await,
            400,
            "bad_request",
        );
        c.stop().await;
    }
);

both_backends!(
    members_report_messages_and_reports_are_stored,
    |b: Backend| async move {
        use confab_persistence::entity::report;
        use sea_orm::EntityTrait;
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (_carol, ct) = c.user("carol").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        let ack = send(&mut a, t, "c1", "rude").await;
        let mid = ack["id"].as_str().unwrap_or_default().to_owned();
        let path = format!("/api/v1/messages/{mid}/report");

        let (s, r) = c
            .http(1)
            .post(&path, Some(&bt), json!({"reason":"spam"}))
            .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(r["message_id"], json!(mid));
        assert!(r["id"].is_string() && r["created_at"].is_string(), "{r}");

        let h = c.http(0);
        refused(
            h.post(&path, Some(&ct), json!({"reason":"spam"})).await,
            403,
            "not_member",
        );
        refused(
            h.post(
                &format!("/api/v1/messages/{}/report", uuid::Uuid::now_v7()),
                Some(&bt),
                json!({"reason":"spam"}),
            )
            .await,
            403,
            "not_member",
        );
        refused(
            h.post(&path, Some(&bt), json!({"reason":"  "})).await,
            400,
            "bad_request",
        );
        refused(
            h.post(&path, Some(&bt), json!({"reason":"x".repeat(501)}))
                .await,
            413,
            "too_large",
        );
        refused(
            h.post(&path, Some(&bt), json!({})).await,
            400,
            "bad_request",
        );
        refused(
            h.post(&path, None, json!({"reason":"spam"})).await,
            401,
            "unauthorized",
        );
        let (s, _) = h
            .post(&path, Some(&at), json!({"reason":"x".repeat(500)}))
            .await;
        assert_eq!(s, 201, "a sender may report too, up to 500 characters");

        let rows = report::Entity::find()
            .all(c.node(1).state.store.connection())
            .await
            .unwrap_or_else(|e| panic!("reports: {e}"));
        assert_eq!(rows.len(), 2);
        let spam = rows.iter().find(|r| r.reason == "spam");
        assert!(
            spam.is_some_and(|r| r.reporter_id == bob.id.0 && r.message_id.to_string() == mid),
            "{rows:?}"
        );
        c.stop().await;
    }
);

/// Send a `resume` of one thread; returns the `message_changed` frames replayed before the
/// `resumed` reply, and the reply's entry for the thread (or the error frame).
async fn resume_changes(ws: &mut Ws, point: Value) -> (Vec<Value>, Value) {
    let req = ws.next_req();
    ws.send_json(json!({"type":"resume","req":req,"threads":[point]}))
        .await;
    let mut changed = Vec::new();
    loop {
        let f = ws
            .recv_until(|f| f["type"] == "message_changed" || f["req"] == req.as_str())
            .await;
        if f["type"] == "message_changed" {
            changed.push(f);
            continue;
        }
        if f["type"] != "resumed" {
            return (changed, f);
        }
        return (changed, f["threads"][0].clone());
    }
}

both_backends!(
    changes_made_while_a_member_was_away_are_replayed_on_resume,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        let mut ids = Vec::new();
        for body in ["m1", "m2", "m3"] {
            let ack = a.send_msg(t, body, body).await;
            ids.push(ack["id"].clone());
        }
        let mut bw = c.ws(1, &bt).await;
        // Where to start: the counter a history page was read at.
        let path = format!("/api/v1/threads/{t}/messages");
        let page = get_ok(&c, 1, &path, &bt).await;
        assert_eq!(page["last_change"], 0, "{page}");
        // Without `last_change` nothing is replayed, and nothing is said of changes.
        let (changed, r) = resume_changes(&mut bw, json!({"thread_id":t,"last_seq":3})).await;
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(
            (r.get("last_change"), r["changes_replayed"].as_i64()),
            (None, Some(0)),
            "{r}"
        );

        // A change heard live carries its number.
        ws_ok(
            &a.request(json!({"type":"edit","message_id":ids[0],"body":"m1 edited"}))
                .await,
        );
        let e = bw.recv_until(is_type("message_edited")).await;
        assert_eq!(e["change_seq"], 1, "{e}");
        bw.close().await;
        assert_eq!(get_ok(&c, 1, &path, &bt).await["last_change"], 1);
        let entry = get_ok(&c, 0, &format!("/api/v1/threads/{t}"), &bt).await;
        assert_eq!(entry["last_change"], 1, "{entry}");

        // While bob is away: a deletion, a reaction, a second edit, and a no-op.
        ws_ok(
            &a.request(json!({"type":"delete","message_id":ids[1]}))
                .await,
        );
        ws_ok(
            &a.request(json!({"type":"react","message_id":ids[2],"emoji":"👍"}))
                .await,
        );
        ws_ok(
            &a.request(json!({"type":"unreact","message_id":ids[2],"emoji":"🎉"}))
                .await,
        );
        ws_ok(
            &a.request(json!({"type":"edit","message_id":ids[0],"body":"m1 again"}))
                .await,
        );

        let mut bw = c.ws(0, &bt).await;
        let (changed, r) =
            resume_changes(&mut bw, json!({"thread_id":t,"last_seq":3,"last_change":1})).await;
        let got: Vec<(i64, i64, &str, bool)> = changed
            .iter()
            .map(|f| {
                (
                    f["change_seq"].as_i64().unwrap_or(-1),
                    f["message"]["seq"].as_i64().unwrap_or(-1),
                    f["message"]["body"].as_str().unwrap_or(""),
                    f["message"]["deleted"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 2, "[message deleted]", true),
                (3, 3, "m3", false),
                (4, 1, "m1 again", false),
            ],
            "{changed:?}"
        );
        assert_eq!(
            changed[1]["message"]["reactions"],
            json!([{"emoji":"👍","count":1,"me":false}])
        );
        assert_eq!(
            (
                r["last_change"].as_i64(),
                r["changes_replayed"].as_i64(),
                r["changes_truncated"].as_bool()
            ),
            (Some(4), Some(3), Some(false)),
            "{r}"
        );
        // Up to date: nothing more.
        let (changed, r) =
            resume_changes(&mut bw, json!({"thread_id":t,"last_seq":3,"last_change":4})).await;
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(r["last_change"], 4, "{r}");
        let (_, r) = resume_changes(
            &mut bw,
            json!({"thread_id":t,"last_seq":3,"last_change":-1}),
        )
        .await;
        ws_refused(&r, "bad_request");
        c.stop().await;
    }
);

both_backends!(
    more_changes_than_a_resume_replays_say_so,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, |s| s.session.max_resume_replay = 2).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let t = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        for i in 1..=3 {
            let ack = a.send_msg(t, &format!("c{i}"), &format!("m{i}")).await;
            let edit = json!({"type":"edit","message_id":ack["id"],"body":format!("m{i}!")});
            ws_ok(&a.request(edit).await);
        }
        let mut bw = c.ws(0, &bt).await;
        let (changed, r) =
            resume_changes(&mut bw, json!({"thread_id":t,"last_seq":3,"last_change":0})).await;
        // The two oldest changes, and word that there are more: reload the history instead.
        let seqs: Vec<i64> = changed
            .iter()
            .filter_map(|f| f["change_seq"].as_i64())
            .collect();
        assert_eq!(seqs, vec![1, 2], "{changed:?}");
        assert_eq!(
            (
                r["changes_replayed"].as_i64(),
                r["changes_truncated"].as_bool(),
                r["last_change"].as_i64()
            ),
            (Some(2), Some(true), Some(3)),
            "{r}"
        );
        c.stop().await;
    }
);
