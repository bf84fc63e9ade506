//! Operating Confab: `/metrics` from live nodes checked by `promtool` and moving with traffic,
//! `/healthz` and `/readyz` through Redis and Postgres outages (private instances), every setting
//! overridable from the environment, and `make cluster`'s HAProxy spreading WebSocket clients
//! over nodes that deliver to each other.

use confab_gateway::Settings;
use confab_tests::client::WAIT;
use confab_tests::process::{confab_binary, free_port, NodeProcess, PrivatePostgres, PrivateRedis};
use confab_tests::{
    create_database, pg_admin_url, redis_url, tempdir, test_settings, Backend, Cluster, Http, Node,
    Ws,
};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers: the repository, promtool, and a parser for the Prometheus text format.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("tests/ has a parent"))
        .to_path_buf()
}

fn unique(name: &str) -> String {
    format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// `promtool`: `$PROMTOOL`, then `PATH`, then `.tools/bin` (where `scripts/ensure-tools.sh`
/// puts it). Missing is a failure, not a skip: `make test` installs it.
fn promtool() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("PROMTOOL") {
        candidates.push(p.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("promtool")));
    }
    let tools = std::env::var("CONFAB_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".tools"));
    candidates.push(tools.join("bin").join("promtool"));
    candidates.push("/usr/bin/promtool".into());
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("promtool not found ($PROMTOOL, PATH, .tools/bin): run `bash scripts/ensure-tools.sh` (make test does)")
        })
}

/// `promtool check metrics` over a scrape: exit 0 and no lint findings.
async fn promtool_check(text: &str) {
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    let mut stdin = child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("promtool stdin"));
    stdin
        .write_all(text.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("promtool timed out"))
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}):\n{findings}\n--- the scrape:\n{text}",
        out.status
    );
}

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` page.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
    /// Family name → type, from the `# TYPE` lines.
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.insert(n.to_owned(), t.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let s = parse_sample(line).unwrap_or_else(|| panic!("unparsable line: {line}"));
                samples.push(s);
            }
        }
        Scrape {
            text,
            samples,
            types,
        }
    }

    /// Sum over every series of `name` that carries all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// `name{k="v",…} value` (label values may hold `{`, `}` and escaped quotes).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].to_owned();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, n) = chars.next()?;
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                    '"' => break i,
                    c => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

async fn scrape(http: &Http) -> Scrape {
    let (status, text) = http.get_text("/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    Scrape::parse(text)
}

/// Poll `/metrics` until the sum of `name{labels}` satisfies `ok` (within [`WAIT`]).
async fn wait_metric(
    http: &Http,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    what: &str,
) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = scrape(http).await.sum(name, labels);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name}{labels:?} is {v} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `/readyz` until it answers `want`, within `within`; returns the body.
async fn wait_ready_status(http: &Http, want: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http.get("/readyz", None).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} (want {want}) after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_msg(body: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == "message" && f["body"] == body
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// What the issue asks every node to export, with the Prometheus type.
const REQUIRED_FAMILIES: &[(&str, &str)] = &[
    ("confab_connections_open", "gauge"),
    ("confab_sessions_opened_total", "counter"),
    ("confab_frames_received_total", "counter"),
    ("confab_frames_sent_total", "counter"),
    ("confab_messages_stored_total", "counter"),
    ("confab_messages_delivered_total", "counter"),
    ("confab_requests_refused_total", "counter"),
    ("confab_fanout_latency_seconds", "histogram"),
    ("confab_store_latency_seconds", "histogram"),
    ("confab_redis_subscriptions", "gauge"),
    ("confab_pubsub_reconnects_total", "counter"),
    ("confab_gap_repairs_total", "counter"),
    ("confab_slow_consumer_disconnects_total", "counter"),
    ("confab_disconnects_total", "counter"),
    ("confab_http_requests_total", "counter"),
    ("confab_http_request_duration_seconds", "histogram"),
];

/// The only label names a node may use: each has a small, fixed set of values.
const ALLOWED_LABELS: &[&str] = &[
    "node", "type", "code", "scope", "route", "method", "status", "le", "kind",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_pass_promtool_and_label_no_user_or_thread() {
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = c.http(0).create_thread(&at, &[&bob], None).await;
    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    assert_eq!(a.send_msg(thread, "p1", "hello bob").await["type"], "ack");
    b.recv_until(is_msg("hello bob")).await;
    assert_eq!(b.send_msg(thread, "p2", "hello alice").await["type"], "ack");
    a.recv_until(is_msg("hello alice")).await;
    // A refusal, an unknown route and a closed session, so those series exist too.
    let refused = a.send_msg(thread, "p3", &"x".repeat(10_001)).await;
    assert_eq!(refused["code"], "too_large", "{refused}");
    for i in 0..2 {
        let (s, _) = c.http(i).get("/no/such/route", None).await;
        assert_eq!(s, 404);
        c.ws(i, &at).await.close().await;
        wait_metric(
            &c.http(i),
            "confab_disconnects_total",
            &[],
            |v| v >= 1.0,
            "closed session counted",
        )
        .await;
    }

    let private: Vec<String> = vec![
        alice.id.to_string(),
        bob.id.to_string(),
        thread.to_string(),
        alice.username.clone(),
        bob.username.clone(),
        at.clone(),
        bt.clone(),
    ];
    for i in 0..2 {
        let s = scrape(&c.http(i)).await;
        promtool_check(&s.text).await;
        for (family, kind) in REQUIRED_FAMILIES {
            assert_eq!(
                s.types.get(*family).map(String::as_str),
                Some(*kind),
                "node {i} exports {family} as a {kind}:\n{}",
                s.text
            );
        }
        let readme = std::fs::read_to_string(repo_root().join("README.md"))
            .unwrap_or_else(|e| panic!("README.md: {e}"));
        for family in s.types.keys() {
            assert!(family.starts_with("confab_"), "unprefixed family {family}");
            assert!(
                readme.contains(&format!("`{family}`")),
                "{family} is missing from the metrics table in README.md"
            );
        }
        for sample in &s.samples {
            assert_eq!(
                sample.labels.get("node"),
                Some(&c.node(i).id),
                "every series names its node: {sample:?}"
            );
            for (k, v) in &sample.labels {
                assert!(
                    ALLOWED_LABELS.contains(&k.as_str()),
                    "unbounded label {k} in {sample:?}"
                );
                for p in &private {
                    assert!(!v.contains(p.as_str()), "{sample:?} names a user or thread");
                }
            }
        }
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_when_messages_flow_across_nodes() {
    let c = Cluster::start(Backend::Cluster, 2).await;
    let (h0, h1) = (c.http(0), c.http(1));
    let (_alice, at) = c.user("alice").await;
    let (bob, bt) = c.user("bob").await;
    let thread = h0.create_thread(&at, &[&bob], None).await;

    let before0 = scrape(&h0).await;
    let before1 = scrape(&h1).await;
    let d0 = |s: &Scrape, n: &str, l: &[(&str, &str)]| s.sum(n, l) - before0.sum(n, l);
    let d1 = |s: &Scrape, n: &str, l: &[(&str, &str)]| s.sum(n, l) - before1.sum(n, l);
    assert_eq!(before0.sum("confab_connections_open", &[]), 0.0);
    assert_eq!(before1.sum("confab_redis_subscriptions", &[]), 0.0);

    let mut a = c.ws(0, &at).await;
    let mut b = c.ws(1, &bt).await;
    const N: usize = 3;
    for i in 0..N {
        let ack = a.send_msg(thread, &format!("c{i}"), &format!("m{i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for i in 0..N {
        let body = format!("m{i}");
        b.recv_until(move |f| f["type"] == "message" && f["body"] == body.as_str())
            .await;
    }
    let refused = a.send_msg(thread, "big", &"x".repeat(10_001)).await;
    assert_eq!(refused["code"], "too_large", "{refused}");

    // Node 0 (the sender's): stored, acknowledged, refused, and delivered back to the sender.
    let n = N as f64;
    let s0 = scrape(&h0).await;
    assert_eq!(d0(&s0, "confab_sessions_opened_total", &[]), 1.0);
    assert_eq!(s0.sum("confab_connections_open", &[]), 1.0);
    assert_eq!(
        d0(&s0, "confab_frames_received_total", &[("type", "send")]),
        n + 1.0
    );
    assert_eq!(d0(&s0, "confab_messages_stored_total", &[]), n);
    assert_eq!(d0(&s0, "confab_store_latency_seconds_count", &[]), n);
    // Each send waited for its ack before the next, so each was a group commit of its own;
    // the refused one never reached the writer.
    assert_eq!(d0(&s0, "confab_store_batch_size_count", &[]), n);
    assert_eq!(d0(&s0, "confab_store_batch_size_sum", &[]), n);
    // One database turn per commit, each taking some time.
    assert_eq!(d0(&s0, "confab_store_commit_seconds_count", &[]), n);
    assert!(d0(&s0, "confab_store_commit_seconds_sum", &[]) > 0.0);
    assert_eq!(
        d0(
            &s0,
            "confab_requests_refused_total",
            &[("code", "too_large")]
        ),
        1.0
    );
    assert!(s0.sum("confab_redis_subscriptions", &[]) >= 1.0);
    // The hello, N acks and the error at least.
    assert!(d0(&s0, "confab_frames_sent_total", &[]) >= n + 2.0);
    let route = [
        ("route", "/api/v1/threads"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert_eq!(s0.sum("confab_http_requests_total", &route), 1.0);
    assert_eq!(
        s0.sum(
            "confab_http_requests_total",
            &[("route", "/ws"), ("status", "101")]
        ),
        1.0
    );
    // Node 1 (the recipient's): the same messages arrived over pub/sub and went out.
    wait_metric(
        &h1,
        "confab_messages_delivered_total",
        &[],
        |v| v >= before1.sum("confab_messages_delivered_total", &[]) + n,
        "deliveries on the recipient's node",
    )
    .await;
    wait_metric(
        &h1,
        "confab_fanout_latency_seconds_count",
        &[],
        |v| v >= before1.sum("confab_fanout_latency_seconds_count", &[]) + n,
        "fan-out latency observed on the recipient's node",
    )
    .await;
    wait_metric(
        &h0,
        "confab_messages_delivered_total",
        &[],
        |v| v >= before0.sum("confab_messages_delivered_total", &[]) + n,
        "the sender's own session got its messages",
    )
    .await;
    let s1 = scrape(&h1).await;
    assert_eq!(d1(&s1, "confab_messages_stored_total", &[]), 0.0);
    assert_eq!(s1.sum("confab_connections_open", &[]), 1.0);
    assert_eq!(s1.sum("confab_redis_subscriptions", &[]), 1.0);
    assert!(d1(&s1, "confab_frames_sent_total", &[]) >= n + 1.0);

    // Unknown paths and made-up methods fold into fixed label values.
    let (s, body) = h1.get("/definitely/not/here", None).await;
    assert_eq!(s, 404, "{body}");
    let resp = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"FROBNICATE").unwrap_or(reqwest::Method::GET),
            format!("{}/api/v1/users", c.node(1).http_base()),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let s1 = scrape(&h1).await;
    assert_eq!(
        s1.sum(
            "confab_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        s1.sum("confab_http_requests_total", &[("method", "other")]),
        1.0
    );
    assert!(
        !s1.text.contains("FROBNICATE") && !s1.text.contains("/definitely"),
        "client-chosen strings became label values"
    );

    // The recipient leaves: its session, its socket and its node's subscription go.
    b.close().await;
    wait_metric(
        &h1,
        "confab_connections_open",
        &[],
        |v| v == 0.0,
        "socket closed",
    )
    .await;
    wait_metric(
        &h1,
        "confab_disconnects_total",
        &[],
        |v| v >= before1.sum("confab_disconnects_total", &[]) + 1.0,
        "disconnect counted",
    )
    .await;
    wait_metric(
        &h1,
        "confab_redis_subscriptions",
        &[],
        |v| v == 0.0,
        "thread channel unsubscribed after the last local member left",
    )
    .await;
    a.close().await;
    c.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Health and readiness.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok_and_unknown_routes_get_json_404() {
    let c = Cluster::start(Backend::Embedded, 1).await;
    let http = c.http(0);
    let (s, body) = http.get("/healthz", None).await;
    assert_eq!((s, body), (200, json!({"status": "ok"})));
    let (s, body) = http.get("/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["node"], json!(c.node(0).id));
    for path in ["/nope", "/api/v1/nope", "/api/v1/threads/x/y/z"] {
        let (s, body) = http.get(path, None).await;
        assert_eq!(s, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    let (s, body) = http.post("/nope", None, json!({})).await;
    assert_eq!((s, body["code"].clone()), (404, json!("not_found")));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_redis_is_down_and_200_when_it_is_back() {
    let mut redis = PrivateRedis::start().await;
    let db = create_database(&pg_admin_url()).await;
    let prefix = unique("t");
    let mut s = test_settings(Some(&db), Some((&redis.url(), &prefix)), None);
    s.redis.reconnect_min_ms = 50;
    s.redis.reconnect_max_ms = 500;
    let node = Node::start(s).await;
    let http = Http::new(node.http_base());

    let body = wait_ready_status(&http, 200, WAIT).await;
    assert_eq!(body["redis"], true, "{body}");

    redis.stop();
    let body = wait_ready_status(&http, 503, Duration::from_secs(10)).await;
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["redis"] == false || body["pubsub"] == false,
        "the failing check is named: {body}"
    );
    assert_eq!(body["database"], true, "{body}");
    // Liveness does not depend on Redis: Kubernetes must not restart every pod in an outage.
    assert_eq!(http.get("/healthz", None).await.0, 200);

    redis.restart().await;
    let body = wait_ready_status(&http, 200, Duration::from_secs(20)).await;
    assert_eq!(
        (body["redis"].clone(), body["pubsub"].clone()),
        (json!(true), json!(true))
    );
    // Back for real: a user can register, log in and connect.
    let (_u, token) = http
        .register_and_login(&unique("after"), "password123")
        .await;
    let ws = Ws::connect(&node.ws_base(), &token).await;
    ws.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_postgres_is_down_and_200_when_it_is_back() {
    let mut pg = PrivatePostgres::start().await;
    let db = create_database(&pg.admin_url()).await;
    let prefix = unique("t");
    let redis = redis_url();
    let mut s = test_settings(Some(&db), Some((&redis, &prefix)), None);
    s.database.acquire_timeout_ms = 1000;
    let node = Node::start(s).await;
    let http = Http::new(node.http_base());

    let body = wait_ready_status(&http, 200, WAIT).await;
    assert_eq!(body["database"], true, "{body}");

    pg.stop().await;
    let body = wait_ready_status(&http, 503, Duration::from_secs(10)).await;
    assert_eq!(body["database"], false, "{body}");
    assert_eq!(body["redis"], true, "{body}");
    assert_eq!(http.get("/healthz", None).await.0, 200);

    pg.restart().await;
    let body = wait_ready_status(&http, 200, Duration::from_secs(30)).await;
    assert_eq!(body["database"], true, "{body}");
    let (_u, token) = http
        .register_and_login(&unique("after"), "password123")
        .await;
    let ws = Ws::connect(&node.ws_base(), &token).await;
    ws.close().await;
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// One `key = value` of `config/default.toml`.
struct TomlSetting {
    section: String,
    key: String,
    literal: String,
    /// Some comment line documents it (directly above it or above the block of keys it opens).
    commented: bool,
}

fn default_toml_settings() -> Vec<TomlSetting> {
    let path = repo_root().join("config").join("default.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut out = Vec::new();
    let mut section = String::new();
    // Whether the lines since the last blank/section line began with a comment.
    let mut block_commented = false;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            block_commented = false;
        } else if t.starts_with('#') {
            block_commented = true;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_owned();
            block_commented = false;
        } else if let Some((k, v)) = t.split_once('=') {
            out.push(TomlSetting {
                section: section.clone(),
                key: k.trim().to_owned(),
                literal: v.trim().to_owned(),
                commented: block_commented,
            });
        } else {
            panic!("unexpected line in default.toml: {line}");
        }
    }
    out
}

/// A value different from `literal`, of the same type, for an environment variable.
fn changed_value(literal: &str, key: &str) -> String {
    if key == "single_thread" {
        // `"auto"`, `true` or `false`: not free text.
        "true".into()
    } else if literal.starts_with('"') {
        format!("env-{key}")
    } else if literal == "true" || literal == "false" {
        (literal != "true").to_string()
    } else if literal.contains('.') {
        let v: f64 = literal
            .parse()
            .unwrap_or_else(|e| panic!("{key} = {literal}: {e}"));
        format!("{:?}", v + 1.5)
    } else {
        let v: u64 = literal
            .parse()
            .unwrap_or_else(|e| panic!("{key} = {literal}: {e}"));
        (v + 7).to_string()
    }
}

#[test]
fn every_setting_is_commented_and_overridable_from_the_environment() {
    let settings = default_toml_settings();
    assert!(settings.len() > 40, "parsed {} settings", settings.len());
    let no_files = std::env::temp_dir().join(format!("confab-no-config-{}", uuid::Uuid::new_v4()));
    let defaults =
        Settings::load_from_vars(&no_files, Vec::new()).unwrap_or_else(|e| panic!("defaults: {e}"));
    let defaults_dbg = format!("{defaults:?}");
    for s in &settings {
        let name = format!("{}.{}", s.section, s.key);
        assert!(s.commented, "{name} has no comment in config/default.toml");
        let var = format!(
            "CONFAB__{}__{}",
            s.section.to_uppercase(),
            s.key.to_uppercase()
        );
        let value = changed_value(&s.literal, &s.key);
        let loaded = Settings::load_from_vars(&no_files, vec![(var.clone(), value.clone())])
            .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        match name.as_str() {
            // Secrets: typed so they never print; compare the exposed values.
            "database.url" => assert_eq!(loaded.database.url.expose_secret(), value),
            "redis.url" => assert_eq!(loaded.redis.url.expose_secret(), value),
            _ => {
                let dbg = format!("{loaded:?}");
                assert_ne!(dbg, defaults_dbg, "{var}={value} changed nothing");
            }
        }
    }
    // The operators' table in the README lists every setting with its variable.
    let readme = std::fs::read_to_string(repo_root().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    for s in &settings {
        // Strings without their quotes, except the empty one.
        let shown = match s.literal.as_str() {
            "\"\"" => "\"\"",
            l => l.trim_matches('"'),
        };
        let row = format!(
            "| `{}.{}` | `{}` | `CONFAB__{}__{}` |",
            s.section,
            s.key,
            shown,
            s.section.to_uppercase(),
            s.key.to_uppercase()
        );
        assert!(
            readme.contains(&row),
            "README.md's configuration table needs the row starting {row}"
        );
    }
    // Secrets are never in the file: the shipped defaults are empty.
    for secret in ["database.url", "redis.url"] {
        let s = settings
            .iter()
            .find(|s| format!("{}.{}", s.section, s.key) == secret)
            .unwrap_or_else(|| panic!("{secret} in default.toml"));
        assert_eq!(s.literal, "\"\"", "{secret} must be empty in the file");
    }
    // A misspelt variable is an error at start-up, not silently ignored.
    let typo = Settings::load_from_vars(
        &no_files,
        vec![("CONFAB__LIMITS__MAX_BODY_CHARZ".into(), "5".into())],
    );
    assert!(typo.is_err(), "an unknown setting must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_its_settings_from_the_environment() {
    let data = tempdir::Dir::new();
    let node_id = unique("ops-env-node");
    let node = NodeProcess::start(&[
        ("CONFAB__DATABASE__DATA_DIR", data.0.display().to_string()),
        ("CONFAB__NODE__ID", node_id.clone()),
        ("CONFAB__LIMITS__MAX_BODY_CHARS", "8".into()),
        ("CONFAB__AUTH__ARGON2_MEMORY_KIB", "256".into()),
        ("CONFAB__AUTH__ARGON2_ITERATIONS", "1".into()),
    ])
    .await;
    let http = Http::new(node.http_base());
    let (_alice, at) = http
        .register_and_login(&unique("alice"), "password123")
        .await;
    let (bob, _bt) = http.register_and_login(&unique("bob"), "password123").await;
    let thread = http.create_thread(&at, &[&bob], None).await;
    let mut ws = Ws::connect(&node.ws_base(), &at).await;
    assert_eq!(ws.hello["node_id"], json!(node_id));
    let ok = ws.send_msg(thread, "c1", "12345678").await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let refused = ws.send_msg(thread, "c2", "123456789").await;
    assert_eq!(refused["code"], "too_large", "{refused}");
    let (_, ready) = http.get("/readyz", None).await;
    assert_eq!(ready["node"], json!(node_id));
}

// ---------------------------------------------------------------------------------------------
// `make cluster`: real nodes behind a real load balancer.

/// A cluster started by `scripts/cluster.sh --background` on free ports, its own database and
/// Redis prefix and its own state folder; stopped (`scripts/cluster.sh stop`) on drop.
struct ScriptCluster {
    envs: Vec<(String, String)>,
    lb_port: u16,
    node_ports: Vec<u16>,
    stopped: std::sync::atomic::AtomicBool,
    _dir: tempdir::Dir,
}

impl ScriptCluster {
    async fn start(n: usize) -> ScriptCluster {
        let dir = tempdir::Dir::new();
        let lb_port = free_port();
        let node_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let ports = node_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let envs: Vec<(String, String)> = vec![
            ("N".into(), n.to_string()),
            ("LB_PORT".into(), lb_port.to_string()),
            ("NODE_PORTS".into(), ports),
            ("CLUSTER_DIR".into(), dir.0.display().to_string()),
            // confab_t_… so `make test`'s clean-up drops it like every test database.
            ("CLUSTER_DB".into(), format!("confab_t_{id}")),
            ("CLUSTER_PREFIX".into(), format!("t{id}")),
            ("CONFAB_BIN".into(), confab_binary().display().to_string()),
            ("CONFAB__SERVER__WORKERS".into(), "1".into()),
            ("CONFAB__LOG__LEVEL".into(), "warn".into()),
            ("CONFAB__AUTH__ARGON2_MEMORY_KIB".into(), "256".into()),
            ("CONFAB__AUTH__ARGON2_ITERATIONS".into(), "1".into()),
            ("CONFAB_TEST_DATABASE_URL".into(), pg_admin_url()),
            ("CONFAB_TEST_REDIS_URL".into(), redis_url()),
        ];
        let cluster = ScriptCluster {
            envs,
            lb_port,
            node_ports,
            stopped: std::sync::atomic::AtomicBool::new(false),
            _dir: dir,
        };
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            cluster.script("--background").output(),
        )
        .await
        .unwrap_or_else(|_| panic!("scripts/cluster.sh --background took over 180 s"))
        .unwrap_or_else(|e| panic!("scripts/cluster.sh: {e}"));
        assert!(
            out.status.success(),
            "scripts/cluster.sh --background failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains(&format!("http://127.0.0.1:{lb_port}")),
            "the URLs are printed: {printed}"
        );
        cluster
    }

    fn script(&self, arg: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(repo_root().join("scripts").join("cluster.sh"))
            .arg(arg)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    fn lb_http(&self) -> Http {
        Http::new(format!("http://127.0.0.1:{}", self.lb_port))
    }

    fn lb_ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.lb_port)
    }
}

impl ScriptCluster {
    /// `scripts/cluster.sh stop`, waiting for it (once).
    fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(repo_root().join("scripts").join("cluster.sh"))
            .arg("stop")
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let _ = cmd.status();
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_load_balancer_land_on_different_nodes_and_reach_each_other() {
    let cl = ScriptCluster::start(3).await;
    let lb = cl.lb_http();
    let (alice, at) = lb.register_and_login(&unique("alice"), "password123").await;
    let (bob, bt) = lb.register_and_login(&unique("bob"), "password123").await;
    let (carol, ct) = lb.register_and_login(&unique("carol"), "password123").await;
    let thread = lb
        .create_thread(&at, &[&bob, &carol], Some("through haproxy"))
        .await;

    let mut a = Ws::connect(&cl.lb_ws(), &at).await;
    let mut b = Ws::connect(&cl.lb_ws(), &bt).await;
    let mut c = Ws::connect(&cl.lb_ws(), &ct).await;
    let nodes: BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|w| w.hello["node_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "leastconn spreads three open sockets over three nodes: {nodes:?}"
    );
    assert_eq!(a.hello["user"]["id"], json!(alice.id));

    let ack = a.send_msg(thread, "lb1", "from alice via haproxy").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    b.recv_until(is_msg("from alice via haproxy")).await;
    c.recv_until(is_msg("from alice via haproxy")).await;
    let ack = c.send_msg(thread, "lb2", "from carol via haproxy").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    a.recv_until(is_msg("from carol via haproxy")).await;
    b.recv_until(is_msg("from carol via haproxy")).await;
    assert_eq!(c.hello["user"]["id"], json!(carol.id));

    // Each node, asked directly, holds exactly one of the three sockets.
    for port in &cl.node_ports {
        let node = Http::new(format!("http://127.0.0.1:{port}"));
        let s = scrape(&node).await;
        assert_eq!(s.sum("confab_connections_open", &[]), 1.0, "node on {port}");
    }
    a.close().await;
    b.close().await;
    c.close().await;

    let out = cl
        .script("status")
        .output()
        .await
        .unwrap_or_else(|e| panic!("status: {e}"));
    assert!(out.status.success(), "status while running");
    // `stop` takes everything down: no port of the cluster answers afterwards.
    cl.stop();
    for port in std::iter::once(cl.lb_port).chain(cl.node_ports.iter().copied()) {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open after scripts/cluster.sh stop"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Browsers: CORS for the HTTP API, the origin list on WebSocket upgrades.

/// An HTTP request from a page of `origin` (`None`: no `Origin`, as a non-browser client).
async fn from_origin(
    method: reqwest::Method,
    url: &str,
    origin: Option<&str>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.send()
        .await
        .unwrap_or_else(|e| panic!("request to {url}: {e}"))
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A WebSocket upgrade sent with `origin`: the `hello`, or the refusal's status.
async fn ws_from_origin(url: &str, origin: Option<&str>) -> Result<Value, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .into_client_request()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().unwrap_or_else(|e| panic!("{o}: {e}")));
    }
    let Ok(upgrade) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await
    else {
        panic!("upgrade timed out: {url}");
    };
    match upgrade {
        Ok((mut stream, _)) => {
            let first = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no hello"))
                .and_then(Result::ok)
                .and_then(|m| m.into_text().ok())
                .unwrap_or_else(|| panic!("no hello frame"));
            Ok(serde_json::from_str(first.as_str()).unwrap_or(Value::Null))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// A browser's preflight for a `POST` to `/api/v1/threads` with a token and a JSON body, from a
/// page of `origin`.
async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    from_origin(
        reqwest::Method::OPTIONS,
        &format!("{base}/api/v1/threads"),
        Some(origin),
        &[
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
    )
    .await
}

/// By default any web origin may use the API from a browser (clients send a bearer token they
/// hold, never a cookie): preflights pass, every answer — errors too — carries
/// `Access-Control-Allow-Origin: *` and exposes `Retry-After`. With a list, only its origins get
/// the headers, and a WebSocket upgrade from a page of another origin is refused with a JSON 403
/// (WebSockets are outside CORS); clients that send no `Origin` are never affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_cors_by_default_and_only_listed_origins_when_restricted() {
    use reqwest::Method;
    let app = "https://app.example";
    let evil = "https://evil.example";
    let open = Cluster::start_with(Backend::Embedded, 1, |_| {}).await;
    let base = open.node(0).http_base();
    let pre = preflight(&base, evil).await;
    assert!(pre.status().is_success(), "preflight: {}", pre.status());
    assert_eq!(
        header(&pre, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let mut methods: Vec<String> = header(&pre, "access-control-allow-methods")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect();
    methods.sort();
    assert_eq!(methods, ["DELETE", "GET", "PATCH", "POST", "PUT"]);
    let refused = from_origin(
        Method::GET,
        &format!("{base}/api/v1/threads"),
        Some(evil),
        &[],
    )
    .await;
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = header(&refused, "access-control-expose-headers").unwrap_or_default();
    assert!(
        exposed.to_ascii_lowercase().contains("retry-after"),
        "{exposed}"
    );
    let (_u, token) = open.user("opener").await;
    let hello = ws_from_origin(
        &format!("{}?token={token}", open.node(0).ws_base()),
        Some(evil),
    )
    .await;
    assert_eq!(hello.ok().map(|h| h["type"].clone()), Some(json!("hello")));
    open.stop().await;

    let shut = Cluster::start_with(Backend::Embedded, 1, |s| {
        s.server.cors_allowed_origins = format!("{app}, http://localhost:5173");
    })
    .await;
    let base = shut.node(0).http_base();
    let pre = preflight(&base, app).await;
    assert!(pre.status().is_success(), "preflight: {}", pre.status());
    assert_eq!(
        header(&pre, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let pre = preflight(&base, evil).await;
    assert_eq!(header(&pre, "access-control-allow-origin"), None);
    let actual = from_origin(Method::GET, &format!("{base}/healthz"), Some(evil), &[]).await;
    assert_eq!(header(&actual, "access-control-allow-origin"), None);
    let (_u, token) = shut.user("closer").await;
    let url = format!("{}?token={token}", shut.node(0).ws_base());
    assert_eq!(ws_from_origin(&url, Some(evil)).await.err(), Some(403));
    let body = from_origin(
        Method::GET,
        &url.replace("ws://", "http://"),
        Some(evil),
        &[],
    )
    .await;
    let body: Value = body.json().await.unwrap_or(Value::Null);
    assert_eq!(body["code"], "forbidden", "{body}");
    for origin in [Some(app), None] {
        let hello = ws_from_origin(&url, origin).await;
        assert_eq!(
            hello.ok().map(|h| h["type"].clone()),
            Some(json!("hello")),
            "{origin:?}"
        );
    }
    shut.stop().await;
}

/// The HTTP body limit is a setting (`limits.max_http_body_bytes`): a body over it is a JSON
/// 413 `too_large` before anything reads it; one under it is parsed and judged on its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_over_the_configured_limit_are_too_large() {
    let c = Cluster::start_with(Backend::Embedded, 1, |s| {
        s.limits.max_http_body_bytes = 2048;
    })
    .await;
    let h = c.http(0);
    let register = |password: String| json!({"username": "limits", "password": password});
    let (s, e) = h
        .post("/api/v1/users", None, register("p".repeat(3000)))
        .await;
    assert_eq!((s, e["code"].as_str()), (413, Some("too_large")), "{e}");
    // Under the limit the body is read: the password is judged too long (over 256 characters).
    let (s, e) = h
        .post("/api/v1/users", None, register("p".repeat(1500)))
        .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    c.stop().await;

    let defaults = Cluster::start(Backend::Embedded, 1).await;
    let (s, e) = defaults
        .http(0)
        .post("/api/v1/users", None, register("p".repeat(300_000)))
        .await;
    assert_eq!((s, e["code"].as_str()), (413, Some("too_large")), "{e}");
    defaults.stop().await;
}

/// A known path asked with a method it does not take is a JSON 405 `method_not_allowed` whose
/// `Allow` lists the methods it does take; an unknown path stays a JSON 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_with_allow_and_an_unknown_path_404() {
    use reqwest::Method;
    let c = Cluster::start(Backend::Embedded, 1).await;
    let base = c.node(0).http_base();
    for (method, path, allowed) in [
        (Method::PUT, "/api/v1/users", vec!["GET", "POST"]),
        (Method::DELETE, "/api/v1/threads", vec!["GET", "POST"]),
        (Method::POST, "/healthz", vec!["GET"]),
        (Method::GET, "/api/v1/rooms/random/join", vec!["POST"]),
    ] {
        let resp = from_origin(method.clone(), &format!("{base}{path}"), None, &[]).await;
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        let mut allow: Vec<String> = header(&resp, "allow")
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        allow.sort();
        assert_eq!(allow, allowed, "{method} {path}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            body["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
    let resp = from_origin(Method::GET, &format!("{base}/api/v1/nope"), None, &[]).await;
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(body["code"], "not_found", "{body}");
    c.stop().await;
}
