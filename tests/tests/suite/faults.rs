//! Faults and hostile clients: slow consumers, storms, floods, bad bytes, drains, lost publishes.

use confab_gateway::Settings;
use confab_tests::{both_backends, raise_limits, refused_upgrade, Backend, Cluster, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMsg;

both_backends!(
    a_client_that_stops_reading_is_closed_as_a_slow_consumer,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| {
            raise_limits(s);
            s.session.outbound_queue = 4;
        })
        .await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let (carol, ct) = c.user("carol").await;
        let thread = c
            .http(0)
            .create_thread(&at, &[&bob, &carol], Some("flood"))
            .await;

        // Bob's socket has a tiny receive buffer and he never reads.
        let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        sock.set_recv_buffer_size(4096)
            .unwrap_or_else(|e| panic!("{e}"));
        let stream = sock
            .connect(
                format!("127.0.0.1:{}", c.node(1).port)
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!("{}?token={}", c.node(1).ws_base(), bt);
        let (mut stalled, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        let mut carol_ws = c.ws(1, &ct).await;
        let mut a = c.ws(0, &at).await;
        let body = "x".repeat(9_000);
        let node = c.node(1).state.clone();
        let mut sent = 0;
        // Carol reads along (lockstep), so only Bob, who never reads, can overflow.
        while node.metrics.slow_consumer_disconnects.get() == 0 && sent < 2_000 {
            sent += 1;
            let ack = a.send_msg(thread, &format!("f{sent}"), &body).await;
            assert_eq!(ack["type"], "ack");
            let f = carol_ws.recv_until(|f| f["type"] == "message").await;
            assert_eq!(f["seq"], sent);
        }
        assert!(
            node.metrics.slow_consumer_disconnects.get() >= 1,
            "no slow-consumer disconnect after {sent} messages"
        );
        // The stalled socket ends: close 4000 after its buffered frames, or a reset.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut code = None;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
                Ok(Some(Ok(WsMsg::Close(cf)))) => {
                    code = Some(cf.map(|c| u16::from(c.code)).unwrap_or(1005));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => {
                    code = Some(1006);
                    break;
                }
                Err(_) => break,
            }
        }
        assert!(
            matches!(code, Some(4000) | Some(1006)),
            "stalled client ended with {code:?}"
        );
        c.stop().await;
    }
);

both_backends!(
    admission_control_refuses_a_connect_storm_with_retry_after,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, |s| {
            s.limits.connects_per_sec = 0.5;
            s.limits.connects_burst = 2.0;
        })
        .await;
        let (_u, t) = c.user("storm").await;
        let _a = c.ws(0, &t).await;
        let _b = c.ws(0, &t).await;
        let (status, retry, body) = refused_upgrade(&c.node(0).http_base(), &t).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry >= 1, "Retry-After must be set");
        assert_eq!(body["code"], "unavailable");
        assert_eq!(c.node(0).state.metrics.connects_refused.get(), 1);
        c.stop().await;
    }
);

both_backends!(
    a_user_over_the_session_cap_is_refused_with_429_on_that_node_only,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 2, |s| s.limits.max_sessions_per_user = 2).await;
        let (u, t) = c.user("tabs").await;
        let (_o, other) = c.user("other").await;
        let a = c.ws(0, &t).await;
        let _b = c.ws(0, &t).await;
        let (status, retry, body) = refused_upgrade(&c.node(0).http_base(), &t).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (429, Some("rate_limited")),
            "{body}"
        );
        assert!(retry >= 1, "Retry-After must be set");
        let metrics = &c.node(0).state.metrics;
        assert_eq!(metrics.connects_refused.get(), 1);
        assert_eq!(
            metrics.connections_open.get(),
            2,
            "the refused one left nothing"
        );
        // The cap is the user's, per node: others are fine, and so is the user on another node
        // (the embedded backend has one).
        let _o = c.ws(0, &other).await;
        let _elsewhere = if c.nodes.len() > 1 {
            Some(c.ws(1, &t).await)
        } else {
            None
        };
        // A closed session frees its place.
        a.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.connections_open.get() > 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the closed session stayed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let again = c.ws(0, &t).await;
        assert_eq!(again.hello["user"]["id"], json!(u.id));
        c.stop().await;
    }
);

/// A frame budget of 5 at once, then 1 a second, and a close after 20 refusals in a row.
fn five_frames_then_one_a_second(s: &mut Settings) {
    s.limits.frames_per_sec = 1.0;
    s.limits.frames_burst = 5.0;
    s.limits.rate_limit_strikes = 20;
}

both_backends!(
    a_frame_flood_is_rate_limited_then_closed,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, five_frames_then_one_a_second).await;
        let (_u, t) = c.user("flood").await;
        let mut ws = c.ws(0, &t).await;
        for i in 0..5 {
            let r = ws.request(json!({"type":"ping"})).await;
            assert_eq!(r["type"], "pong", "ping {i}");
        }
        let r = ws.request(json!({"type":"ping"})).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("rate_limited"))
        );
        for _ in 0..40 {
            ws.send_json(json!({"type":"ping","req":"x"})).await;
        }
        assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(4002));
        c.stop().await;
    }
);

both_backends!(
    a_ping_flood_does_not_block_the_node,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, |s| s.limits.rate_limit_strikes = 1_000_000).await;
        let (_u, t) = c.user("pinger").await;
        let (_v, t2) = c.user("other").await;
        let mut flood = c.ws(0, &t).await;
        for _ in 0..5_000 {
            flood.send_raw(WsMsg::Ping(vec![0u8; 16].into())).await;
        }
        // The node still serves others promptly.
        let mut other = c.ws(0, &t2).await;
        let r = other.request(json!({"type":"ping"})).await;
        assert_eq!(r["type"], "pong");
        c.stop().await;
    }
);

both_backends!(invalid_utf8_closes_with_1007, |b: Backend| async move {
    let c = Cluster::start(b, 1).await;
    let (_u, t) = c.user("bytes").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}?token={t}", c.node(0).ws_base()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let _hello = ws.next().await;
    let frame = Frame::message(vec![0xff_u8, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(WsMsg::Frame(frame))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match m {
            Ok(WsMsg::Close(cf)) => {
                code = cf.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1007));
    c.stop().await;
});

both_backends!(
    slowloris_upgrades_are_dropped_and_others_are_served,
    |b: Backend| async move {
        let c = Cluster::start(b, 1).await;
        let (_u, t) = c.user("patient").await;
        let addr = format!("127.0.0.1:{}", c.node(0).port);
        let mut slow = Vec::new();
        for _ in 0..50 {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            slow.push(s);
        }
        let mut ws = c.ws(0, &t).await;
        assert_eq!(ws.request(json!({"type":"ping"})).await["type"], "pong");
        // The server gives up on headers that never finish.
        let mut buf = [0u8; 256];
        let s = &mut slow[0];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(_)) | Ok(Err(_))),
            "half-open upgrade was never dropped"
        );
        c.stop().await;
    }
);

both_backends!(
    a_send_flood_is_rate_limited_then_closed,
    |b: Backend| async move {
        // Sends are taken on a path of their own (no boxed handler); the frame budget, the
        // strikes and the close must hold there as for any other frame.
        let c = Cluster::start_with(b, 1, five_frames_then_one_a_second).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, _bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut ws = c.ws(0, &at).await;
        let send = |i: usize| {
            json!({"type":"send","req":format!("s{i}"),"thread_id":thread,
                   "client_msg_id":format!("c{i}"),"body":"hi"})
        };
        for i in 0..5 {
            ws.send_json(send(i)).await;
            let r = ws.recv_until(|f| f["req"] == format!("s{i}")).await;
            assert_eq!(r["type"], "ack", "send {i}: {r}");
        }
        ws.send_json(send(5)).await;
        let r = ws.recv_until(|f| f["req"] == "s5").await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("rate_limited")),
            "{r}"
        );
        for i in 6..46 {
            ws.send_json(send(i)).await;
        }
        assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(4002));
        c.stop().await;
    }
);

both_backends!(
    drain_finishes_in_flight_sends_then_closes_with_1012,
    |b: Backend| async move {
        let c = Cluster::start_with(b, 1, raise_limits).await;
        let (_alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut a = c.ws(0, &at).await;
        // Pipeline sends, then start the drain while they are in flight.
        for i in 0..20 {
            a.send_json(json!({"type":"send","req":format!("d{i}"),"thread_id":thread,"client_msg_id":format!("d{i}"),"body":"draining"}))
            .await;
        }
        // Once the first ack is back the node is busy with the rest: drain now.
        let first = a.recv_until(|f| f["type"] == "ack").await;
        c.node(0).begin_stop();
        let mut acked = vec![first["seq"].as_i64().unwrap_or(0)];
        let code = loop {
            match a.next_frame_or_close(Duration::from_secs(20)).await {
                Ok(Some(f)) if f["type"] == "ack" => acked.push(f["seq"].as_i64().unwrap_or(0)),
                Ok(Some(f)) if f["type"] == "error" => assert_eq!(f["code"], "unavailable", "{f}"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("no close within the drain"),
                Err(code) => break code,
            }
        };
        assert_eq!(code, 1012);
        // Acks arrive in order and without holes: the drain never drops a send it started.
        assert_eq!(acked, (1..=acked.len() as i64).collect::<Vec<_>>());
        // Every acked message is stored (read through the database the node used).
        let store = c.node(0).state.store.clone();
        let stored = store
            .messages_after(thread, 0, 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for s in &acked {
            assert!(
                stored.iter().any(|m| m.seq == *s),
                "acked seq {s} not stored"
            );
        }
        let _ = bt;
        c.stop().await;
    }
);

// A message stored but never published (a lost publish) is still delivered: the next message
// reveals the gap and the node fills it from the database; without a next message the
// periodic sweep does.
both_backends!(
    a_lost_publish_is_repaired_by_the_node,
    |b: Backend| async move {
        let c = Cluster::start(b, 2).await;
        let (alice, at) = c.user("alice").await;
        let (bob, bt) = c.user("bob").await;
        let thread = c.http(0).create_thread(&at, &[&bob], None).await;
        let mut bob_ws = c.ws(1, &bt).await;
        let mut a = c.ws(0, &at).await;
        a.send_msg(thread, "g1", "one").await;
        bob_ws
            .recv_until(|f| f["type"] == "message" && f["seq"] == 1)
            .await;
        // Stored behind the broker's back: no publish.
        let store = c.node(0).state.store.clone();
        store
            .send_message(thread, alice.id, "g2", "two (never published)")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        a.send_msg(thread, "g3", "three").await;
        let f2 = bob_ws.recv_until(|f| f["type"] == "message").await;
        let f3 = bob_ws.recv_until(|f| f["type"] == "message").await;
        assert_eq!((f2["seq"].as_i64(), f3["seq"].as_i64()), (Some(2), Some(3)));
        assert_eq!(f2["body"], "two (never published)");
        // Now with nothing after it: the sweep delivers it.
        store
            .send_message(thread, alice.id, "g4", "four (never published)")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let f4 = bob_ws.recv_until(|f| f["type"] == "message").await;
        assert_eq!(f4["seq"], 4);
        bob_ws
            .expect_none(|f| f["type"] == "message", Duration::from_millis(1200))
            .await;
        let _ = Ws::connect;
        c.stop().await;
    }
);
