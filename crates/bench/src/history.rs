//! `history`: the latency of a page of history from a thread holding a very large number of
//! messages. The thread is created through the API; its messages are inserted straight into the
//! benchmark database with one `INSERT … SELECT` (`generate_series` on Postgres, a recursive
//! count on the embedded node's SQLite file): sending a million messages would measure the send
//! path, not paging. Then pages are fetched one at a time over HTTP
//! (`GET /api/v1/threads/{id}/messages`): the newest page, and pages at random points.

use crate::fleet::{Api, Fleet, FleetSpec};
use crate::stats::{self, round, LatencyMs};
use crate::target::{require_loopback, Node};
use crate::{BenchError, Result};
use confab_protocol::api::HistoryPage;
use rand::Rng;
use sea_orm::{ConnectionTrait, Database};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// The node to page through.
    pub node: Node,
    /// The node's database, where the messages are inserted: Postgres on a loopback address,
    /// or the embedded node's SQLite file (`sqlite://…/confab.db`).
    pub db_url: String,
    /// Messages in the thread.
    pub messages: u64,
    /// Pages to fetch (half newest, half at random points).
    pub requests: usize,
    /// Messages per page.
    pub page: u64,
    /// A name for this run.
    pub label: String,
}

/// What the history scenario measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Always `history`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// Messages in the thread.
    pub messages: u64,
    /// Inserting them (and analyzing the table), seconds.
    pub insert_s: f64,
    /// Messages per page.
    pub page: u64,
    /// Pages fetched.
    pub requests: usize,
    /// Pages that were not a 200 with a full page.
    pub errors: usize,
    /// The newest page.
    pub newest_ms: LatencyMs,
    /// Pages before a random `seq`.
    pub random_ms: LatencyMs,
    /// Both.
    pub all_ms: LatencyMs,
}

impl HistoryReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "history[{}]: page of {} from a {}-message thread: p50 {:.2} ms p99 {:.2} ms \
             max {:.2} ms over {} pages ({} errors)",
            self.label,
            self.page,
            self.messages,
            self.all_ms.p50,
            self.all_ms.p99,
            self.all_ms.max,
            self.requests,
            self.errors
        )
    }
}

/// Run the history scenario.
pub async fn run(cfg: &HistoryConfig) -> Result<HistoryReport> {
    if !is_sqlite(&cfg.db_url) {
        require_loopback(&cfg.db_url)?;
    }
    if cfg.messages == 0 || cfg.messages > crate::bounds::MAX_HISTORY_MESSAGES {
        return Err(BenchError::Invalid(format!(
            "messages must be 1 to {}",
            crate::bounds::MAX_HISTORY_MESSAGES
        )));
    }
    if cfg.requests > crate::bounds::MAX_REQUESTS || !(1..=100).contains(&cfg.page) {
        return Err(BenchError::Invalid(
            "too many requests, or a page outside 1..=100".into(),
        ));
    }
    let api = Api::new();
    let fleet = Fleet::build(
        &api,
        vec![cfg.node.clone()],
        &FleetSpec {
            users: 2,
            room_size: 2,
            concurrency: 2,
        },
    )
    .await?;
    let room = fleet
        .rooms
        .first()
        .ok_or_else(|| BenchError::Invalid("no room was created".into()))?;
    let owner = &fleet.users[room.members[0]];

    let started = Instant::now();
    fill(&cfg.db_url, room.thread, owner.id, cfg.messages).await?;
    let insert_s = started.elapsed().as_secs_f64();

    let client = api.client();
    let base = format!(
        "{}/api/v1/threads/{}/messages?limit={}",
        cfg.node.http, room.thread, cfg.page
    );
    let mut newest = stats::histogram();
    let mut random = stats::histogram();
    let mut all = stats::histogram();
    let mut errors = 0;
    let n = cfg.messages as i64;
    let page = cfg.page as i64;
    // Warm the connection and the caches a little; not measured.
    for _ in 0..20 {
        let _ = fetch(client, &base, &owner.token).await;
    }
    for i in 0..cfg.requests {
        let url = if i % 2 == 0 || n <= page {
            base.clone()
        } else {
            let before = rand::thread_rng().gen_range(page + 1..=n);
            format!("{base}&before_seq={before}")
        };
        let t = Instant::now();
        let result = fetch(client, &url, &owner.token).await;
        let us = t.elapsed().as_micros() as u64;
        match result {
            Ok(p) if p.messages.len() as u64 == cfg.page.min(cfg.messages) => {}
            _ => errors += 1,
        }
        stats::record(&mut all, us);
        stats::record(if i % 2 == 0 { &mut newest } else { &mut random }, us);
    }
    Ok(HistoryReport {
        scenario: "history".into(),
        label: cfg.label.clone(),
        messages: cfg.messages,
        insert_s: round(insert_s, 2),
        page: cfg.page,
        requests: cfg.requests,
        errors,
        newest_ms: LatencyMs::of(&newest),
        random_ms: LatencyMs::of(&random),
        all_ms: LatencyMs::of(&all),
    })
}

async fn fetch(client: &reqwest::Client, url: &str, token: &str) -> Result<HistoryPage> {
    let resp = client
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| BenchError::Http(format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| BenchError::Http(format!("GET {url}: {e}")))?;
    if status != 200 {
        return Err(BenchError::Http(format!("GET {url}: {status}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| BenchError::Http(format!("GET {url}: {e}")))
}

/// Whether the database is a SQLite file (the embedded node's): a local file, no network.
fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Insert `n` messages into `thread` as `sender`, newest last, and move the thread's head.
async fn fill(
    db_url: &str,
    thread: confab_protocol::ThreadId,
    sender: confab_protocol::UserId,
    n: u64,
) -> Result<()> {
    let db = Database::connect(db_url)
        .await
        .map_err(|e| BenchError::Db(e.to_string()))?;
    // Ids are UUIDs we parsed ourselves and `n` is an integer: nothing here comes from text.
    let statements = if is_sqlite(db_url) {
        sqlite_fill(thread, sender, n)
    } else {
        postgres_fill(thread, sender, n)
    };
    for s in statements {
        db.execute_unprepared(&s)
            .await
            .map_err(|e| BenchError::Db(e.to_string()))?;
    }
    let _ = db.close().await;
    Ok(())
}

/// The statements that fill a thread on Postgres.
fn postgres_fill(
    thread: confab_protocol::ThreadId,
    sender: confab_protocol::UserId,
    n: u64,
) -> [String; 3] {
    [
        format!(
            "INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at) \
             SELECT gen_random_uuid(), '{thread}'::uuid, g, '{sender}'::uuid, 'h' || g, \
                    'history message ' || g, now() - make_interval(secs => ({n} - g) / 1000.0) \
             FROM generate_series(1, {n}) AS g"
        ),
        format!(
            "UPDATE threads SET last_seq = {n}, last_activity_at = now() WHERE id = '{thread}'::uuid"
        ),
        "ANALYZE messages".to_owned(),
    ]
}

/// The statements that fill a thread in the embedded node's SQLite file, stored as the node
/// stores its own: ids as 16-byte blobs, times as RFC 3339 text in UTC.
fn sqlite_fill(
    thread: confab_protocol::ThreadId,
    sender: confab_protocol::UserId,
    n: u64,
) -> [String; 3] {
    let hex = |id: String| id.replace('-', "");
    let (thread, sender) = (hex(thread.to_string()), hex(sender.to_string()));
    [
        format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) \
             INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at) \
             SELECT randomblob(16), X'{thread}', n, X'{sender}', 'h' || n, 'history message ' || n, \
                    strftime('%Y-%m-%dT%H:%M:%f', 'now', '-' || (({n} - n) / 1000.0) || ' seconds') \
                    || '+00:00' \
             FROM g"
        ),
        format!(
            "UPDATE threads SET last_seq = {n}, \
             last_activity_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '+00:00' \
             WHERE id = X'{thread}'"
        ),
        "ANALYZE".to_owned(),
    ]
}
