//! The zero-setup single node: the binary started as `make run` starts it — no database URL, no
//! Redis URL, nothing reachable — serves two clients, keeps its data across a restart, and
//! refuses a multi-replica configuration it cannot serve.

use confab_tests::process::{confab_binary, NodeProcess};
use confab_tests::tempdir::Dir;
use confab_tests::{Http, Ws};
use std::process::Command;

fn make_run_env(dir: &Dir) -> Vec<(&'static str, String)> {
    // Exactly what `make run` sets, plus cheap hashing; the URLs are explicitly empty so that
    // nothing in the environment can point the node at a server.
    vec![
        ("CONFAB__DATABASE__DATA_DIR", dir.0.display().to_string()),
        ("CONFAB__DATABASE__URL", String::new()),
        ("CONFAB__REDIS__URL", String::new()),
        ("CONFAB__AUTH__ARGON2_MEMORY_KIB", "256".into()),
        ("CONFAB__AUTH__ARGON2_ITERATIONS", "1".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_node_needs_no_services_and_keeps_its_data_across_restarts() {
    let dir = Dir::new();
    let env = make_run_env(&dir);
    let mut node = NodeProcess::start(&env).await;
    let h = Http::new(node.http_base());
    let (ready, body) = h.get("/readyz", None).await;
    assert_eq!(ready, 200, "{body}");
    let (alice, at) = h.register_and_login("alice", "password123").await;
    let (bob, bt) = h.register_and_login("bob", "password123").await;
    let thread = h.create_thread(&at, &[&bob], None).await;
    let mut a = Ws::connect(&node.ws_base(), &at).await;
    let mut b = Ws::connect(&node.ws_base(), &bt).await;
    let ack = a
        .send_msg(thread, "e1", "hello from the embedded node")
        .await;
    assert_eq!(ack["seq"], 1);
    let got = b.recv_until(|f| f["type"] == "message").await;
    assert_eq!(got["body"], "hello from the embedded node");
    let reply = b.send_msg(thread, "e2", "hi alice").await;
    assert_eq!(reply["seq"], 2);
    a.recv_until(|f| f["body"] == "hi alice").await;
    assert!(
        dir.0.join("confab.db").exists(),
        "data file not under data_dir"
    );

    // Restart on the same data folder: accounts, threads and history are still there.
    node.terminate().await;
    let node = NodeProcess::start(&env).await;
    let h = Http::new(node.http_base());
    let (s, login) = h
        .post(
            "/api/v1/sessions",
            None,
            serde_json::json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    assert_eq!(login["user"]["id"], serde_json::json!(alice.id));
    let token = login["token"].as_str().unwrap_or_default().to_owned();
    let (s, page) = h
        .get(&format!("/api/v1/threads/{thread}/messages"), Some(&token))
        .await;
    assert_eq!(s, 200, "{page}");
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, vec!["hello from the embedded node", "hi alice"]);
    // And it keeps going from seq 3.
    let mut a = Ws::connect(&node.ws_base(), &token).await;
    assert_eq!(a.send_msg(thread, "e3", "after restart").await["seq"], 3);
}

#[test]
fn an_embedded_node_refuses_to_run_as_one_of_several_replicas() {
    let dir = Dir::new();
    let out = Command::new(confab_binary())
        .envs(make_run_env(&dir))
        .env("CONFAB__SERVER__PORT", "0")
        .env("CONFAB__CLUSTER__REPLICAS", "3")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(
        !out.status.success(),
        "a 3-replica embedded node must not start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replicas") && stderr.contains("redis"),
        "unclear error: {stderr}"
    );
}
