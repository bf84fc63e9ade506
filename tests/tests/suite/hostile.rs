//! Property-based hostile input: random frames thrown at a live session. Whatever arrives, the
//! node answers with an error frame or a reply, never closes on a text frame that fits the
//! limits, never panics, and keeps serving.

use confab_tests::{Backend, Cluster, Ws};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Random JSON; `thread` (a thread the fuzzing user is in) is one of its leaves, so sends, typing
/// and resumes get past the membership check and reach the store.
fn json_value(thread: String) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(thread)),
        Just(json!("nul \u{0} inside")),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("00000000-0000-0000-0000-000000000000")),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like ours: a known type, plausible and implausible fields.
fn frame(thread: String) -> impl Strategy<Value = String> {
    let types = prop::sample::select(vec![
        "send",
        "resume",
        "mark_read",
        "typing",
        "edit",
        "delete",
        "react",
        "unreact",
        "ping",
        "hello",
        "ack",
        "",
    ]);
    let fields = prop::collection::hash_map(
        prop::sample::select(vec![
            "req",
            "thread_id",
            "client_msg_id",
            "body",
            "seq",
            "message_id",
            "emoji",
            "threads",
            "last_seq",
            "extra",
        ]),
        json_value(thread.clone()),
        0..6,
    );
    prop_oneof![
        (types, fields).prop_map(|(t, f)| {
            let mut o: serde_json::Map<String, Value> =
                f.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            o.insert("type".into(), json!(t));
            Value::Object(o).to_string()
        }),
        json_value(thread).prop_map(|v| v.to_string()),
        ".{0,200}",
    ]
}

#[test]
fn random_frames_never_break_a_live_session() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (c, token, thread) = rt.block_on(async {
        let c = Cluster::start_with(Backend::Cluster, 1, |s| {
            s.limits.frames_per_sec = 1_000_000.0;
            s.limits.frames_burst = 1_000_000.0;
            s.limits.user_sends_per_sec = 1_000_000.0;
            s.limits.user_sends_burst = 1_000_000.0;
        })
        .await;
        let (_u, t) = c.user("fuzz").await;
        let (peer, _) = c.user("peer").await;
        let thread = c.http(0).create_thread(&t, &[&peer], None).await;
        (c, t, thread)
    });
    let ws = std::sync::Mutex::new(Some(rt.block_on(c.ws(0, &token))));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&frame(thread.to_string()), |text| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guard = ws.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut client) = guard.take() else {
            return Err(TestCaseError::fail("session lost earlier"));
        };
        let outcome = rt.block_on(async {
            client.send_text(text.clone()).await;
            // A ping right behind it: every frame before the pong must be a reply or an error,
            // and the pong must come (the session is alive and in order).
            client.send_json(json!({"type":"ping","req":"probe"})).await;
            loop {
                match client
                    .next_frame_or_close(std::time::Duration::from_secs(10))
                    .await
                {
                    Ok(Some(f)) if f["type"] == "pong" && f["req"] == "probe" => return Ok(()),
                    Ok(Some(f)) => {
                        let t = f["type"].as_str().unwrap_or_default().to_owned();
                        if ![
                            "error",
                            "ack",
                            "ok",
                            "pong",
                            "resumed",
                            "message",
                            "read",
                            "typing",
                            "message_deleted",
                            "message_edited",
                            "reaction",
                        ]
                        .contains(&t.as_str())
                        {
                            return Err(format!("unexpected reply {f} to {text}"));
                        }
                        if t == "error" && f["code"] == "internal" {
                            return Err(format!("internal error for {text}: {f}"));
                        }
                    }
                    Ok(None) => return Err(format!("no pong after {text}")),
                    Err(code) => return Err(format!("closed with {code} after {text}")),
                }
            }
        });
        *guard = Some(client);
        outcome.map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let ran = cases.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ran >= 300, "only {ran} cases ran");
    eprintln!("hostile: {ran} random frames handled");
    let ws: Option<Ws> = ws.into_inner().unwrap_or_else(|p| p.into_inner());
    rt.block_on(async move {
        if let Some(w) = ws {
            w.close().await;
        }
        c.stop().await;
    });
}
