//! Storing under concurrency: many clients send at once (the sends are
//! group-committed), with retries and strangers mixed in. Every thread's `seq` stays 1..n
//! without gaps, each ack names the row that history returns, retries store nothing twice.

use confab_tests::{both_backends, raise_limits, Backend, Cluster};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Raised limits and `n` group-commit writers per node (threads are partitioned among them).
fn with_writers(n: usize) -> impl Fn(&mut confab_gateway::Settings) {
    move |s| {
        raise_limits(s);
        s.database.send_writers = n;
    }
}

both_backends!(
    concurrent_sends_keep_seq_gap_free_and_idempotent,
    |b: Backend| async move {
        // Several writers per node: threads are partitioned among them, and the writers of
        // both nodes still meet on the same threads (on Postgres).
        let c = Cluster::start_with(b, 2, with_writers(3)).await;
        let mut users = Vec::new();
        for i in 0..12 {
            users.push(c.user(&format!("w{i}")).await);
        }
        let (_stranger, st) = c.user("stranger").await;
        let refs: Vec<&confab_protocol::UserRef> = users[1..].iter().map(|(u, _)| u).collect();
        let t1 = c
            .http(0)
            .create_thread(&users[0].1, &refs, Some("busy one"))
            .await;
        let t2 = c
            .http(0)
            .create_thread(&users[0].1, &refs, Some("busy two"))
            .await;

        const PER_CLIENT: usize = 25;
        let mut tasks = Vec::new();
        for (i, (_u, token)) in users.iter().enumerate() {
            let mut ws = c.ws(i, token).await;
            tasks.push(tokio::spawn(async move {
            // Pipeline every send (and a retry of every fifth one) without waiting.
            for k in 0..PER_CLIENT {
                let t = if k % 2 == 0 { t1 } else { t2 };
                let f = json!({"type":"send","req":format!("q{k}"),"thread_id":t,"client_msg_id":format!("m{i}-{k}"),"body":format!("{i}/{k}")});
                ws.send_json(f.clone()).await;
                if k % 5 == 0 {
                    let mut again = f;
                    again["req"] = json!(format!("retry{k}"));
                    ws.send_json(again).await;
                }
            }
            let expected = PER_CLIENT + PER_CLIENT.div_ceil(5);
            let mut acks: Vec<Value> = Vec::new();
            while acks.len() < expected {
                let f = ws.recv_until(|f| f["type"] == "ack" || f["type"] == "error").await;
                assert_eq!(f["type"], "ack", "{f}");
                acks.push(f);
            }
            acks
        }));
        }
        let mut stranger_ws = c.ws(1, &st).await;
        let refused = stranger_ws.send_msg(t1, "nope", "let me in").await;
        assert_eq!(refused["code"], "not_member");

        // client_msg_id -> (thread, seq, id) from first acks; retries must agree.
        let mut by_cid: HashMap<String, (String, i64, String)> = HashMap::new();
        let mut per_thread: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for t in tasks {
            for a in t.await.unwrap_or_else(|e| panic!("{e}")) {
                let cid = a["client_msg_id"].as_str().unwrap_or_default().to_owned();
                let entry = (
                    a["thread_id"].as_str().unwrap_or_default().to_owned(),
                    a["seq"].as_i64().unwrap_or(0),
                    a["id"].as_str().unwrap_or_default().to_owned(),
                );
                match by_cid.get(&cid) {
                    Some(prev) => assert_eq!(prev, &entry, "a retry of {cid} got another answer"),
                    None => {
                        per_thread.entry(entry.0.clone()).or_default().push(entry.1);
                        by_cid.insert(cid, entry);
                    }
                }
            }
        }
        assert_eq!(by_cid.len(), users.len() * PER_CLIENT);
        for (t, mut seqs) in per_thread {
            seqs.sort();
            let n = seqs.len() as i64;
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "thread {t}: seqs not 1..{n}"
            );
            // History agrees with the acks.
            let mut before = None::<i64>;
            let mut stored = Vec::new();
            loop {
                let path = match before {
                    Some(b) => format!("/api/v1/threads/{t}/messages?limit=100&before_seq={b}"),
                    None => format!("/api/v1/threads/{t}/messages?limit=100"),
                };
                let (s, page) = c.http(1).get(&path, Some(&users[0].1)).await;
                assert_eq!(s, 200, "{page}");
                for m in page["messages"].as_array().cloned().unwrap_or_default() {
                    stored.push((
                        m["client_msg_id"].as_str().unwrap_or_default().to_owned(),
                        m["seq"].as_i64().unwrap_or(0),
                        m["id"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                match page["next_before_seq"].as_i64() {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            assert_eq!(
                stored.len() as i64,
                n,
                "thread {t}: history has {} rows",
                stored.len()
            );
            for (cid, seq, id) in stored {
                let ack = &by_cid[&cid];
                assert_eq!((ack.1, ack.2.as_str()), (seq, id.as_str()), "{cid}");
            }
        }
        c.stop().await;
    }
);

both_backends!(
    pipelined_sends_are_answered_in_order_and_each_ack_precedes_its_echo,
    |b: Backend| async move {
        // Several writers: sends to different threads commit out of request order, so later
        // acks wait behind earlier ones while their echoes are already arriving.
        let c = Cluster::start_with(b, 2, with_writers(4)).await;
        let (_alice, at) = c.user("pipe_alice").await;
        let (bob, bt) = c.user("pipe_bob").await;
        let (carol, ct) = c.user("pipe_carol").await;
        let mut threads = Vec::new();
        for i in 0..6 {
            let name = format!("pipelined {i}");
            threads.push(
                c.http(0)
                    .create_thread(&at, &[&bob, &carol], Some(name.as_str()))
                    .await,
            );
        }
        let mut a = c.ws(0, &at).await;
        let mut b = c.ws(1, &bt).await;
        let mut cw = c.ws(1, &ct).await;
        // Bob talks meanwhile, so Alice's socket has deliveries to write while her own sends
        // wait for their commits.
        let t0 = threads[0];
        let bob_talks = tokio::spawn(async move {
            for k in 0..20 {
                let ack = b.send_msg(t0, &format!("b{k}"), "from bob").await;
                assert_eq!(ack["type"], "ack", "{ack}");
            }
        });
        const N: usize = 120;
        let thread_of = |k: usize| threads[k % threads.len()];
        for k in 0..N {
            a.send_json(
                json!({"type":"send","req":format!("r{k}"),"thread_id":thread_of(k),
                "client_msg_id":format!("a{k}"),"body":format!("alice {k}")}),
            )
            .await;
        }
        let mut acked_reqs = Vec::new();
        let mut acked_cids = std::collections::HashSet::new();
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        let mut own_echoes = 0;
        while acked_reqs.len() < N || own_echoes < N {
            let Some(f) = a.next_frame(std::time::Duration::from_secs(10)).await else {
                panic!(
                    "alice stalled: {} acks, {own_echoes} echoes",
                    acked_reqs.len()
                );
            };
            match f["type"].as_str() {
                Some("ack") => {
                    acked_reqs.push(f["req"].as_str().unwrap_or_default().to_owned());
                    acked_cids.insert(f["client_msg_id"].as_str().unwrap_or_default().to_owned());
                }
                Some("message") => {
                    let thread = f["thread_id"].as_str().unwrap_or_default().to_owned();
                    let seq = f["seq"].as_i64().unwrap_or(0);
                    let last = last_seq.entry(thread).or_insert(0);
                    assert_eq!(seq, *last + 1, "each thread is written in seq order");
                    *last = seq;
                    let cid = f["client_msg_id"].as_str().unwrap_or_default();
                    if cid.starts_with('a') {
                        assert!(acked_cids.contains(cid), "echo of {cid} before its ack");
                        own_echoes += 1;
                    }
                }
                _ => {}
            }
        }
        let want: Vec<String> = (0..N).map(|k| format!("r{k}")).collect();
        assert_eq!(acked_reqs, want, "acks in request order");
        bob_talks.await.unwrap_or_else(|e| panic!("{e}"));
        // Carol, on the other node, sees Alice's messages of each thread in the order sent.
        let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
        let mut total = 0;
        while total < N {
            let f = cw.recv_until(|f| f["type"] == "message").await;
            let cid = f["client_msg_id"].as_str().unwrap_or_default();
            if let Some(k) = cid.strip_prefix('a').and_then(|k| k.parse().ok()) {
                let thread = f["thread_id"].as_str().unwrap_or_default().to_owned();
                seen.entry(thread).or_default().push(k);
                total += 1;
            }
        }
        for (thread, ks) in seen {
            let mut sorted = ks.clone();
            sorted.sort();
            assert_eq!(
                ks, sorted,
                "thread {thread}: one client's sends keep their order"
            );
        }
        c.stop().await;
    }
);

/// The batcher's `on_stored` hook (where a node publishes) sees every message the writers
/// stored exactly once, each writer's in `seq` order per thread, and before its sender is
/// answered; retries and strangers' sends never reach it. Why it matters: receivers deliver a thread in `seq`
/// order and read any hole from the database, so publishes out of order cost them a query and
/// hold the thread back meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_announces_each_stored_message_once_in_seq_order_before_answering() {
    use confab_persistence::{BatchHooks, OnStored, SendBatcher, SendOutcome};
    use std::sync::{Arc, Mutex};

    let store = fresh_store(8).await;
    let members = new_users(&store, "hook", 6).await;
    let stranger = store
        .create_user("hookstranger", "x")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut threads = Vec::new();
    for name in ["one", "two"] {
        let t = store
            .create_group_thread(members[0], &members[1..], name, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        threads.push(t.id);
    }

    // (which writer, message) in the order the hooks ran.
    let seen: Arc<Mutex<Vec<(usize, confab_protocol::Message)>>> = Arc::default();
    let hook = |writer: usize| -> OnStored {
        let seen = seen.clone();
        Arc::new(move |m| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((writer, m.clone()))
        })
    };
    // Two writers whose batches meet on the same threads, as two nodes' writers do; small
    // batches so that many of them commit. The second lingers for more sends under load (the
    // gathering path must keep the same promises).
    let batchers = [
        SendBatcher::start(
            store.clone(),
            1,
            7,
            1000,
            std::time::Duration::ZERO,
            BatchHooks {
                on_stored: Some(hook(0)),
                on_batch: None,
                on_commit: None,
            },
        ),
        SendBatcher::start(
            store.clone(),
            1,
            7,
            1000,
            std::time::Duration::from_millis(2),
            BatchHooks {
                on_stored: Some(hook(1)),
                on_batch: None,
                on_commit: None,
            },
        ),
    ];

    const PER_SENDER: usize = 30;
    let mut tasks = Vec::new();
    for (i, &user) in members.iter().enumerate() {
        for k in 0..PER_SENDER {
            let b = batchers[(i + k) % 2].clone();
            let thread = threads[k % 2];
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                let cid = format!("c{i}-{k}");
                let out = b.send(thread, user, &cid, "hello").await;
                let Ok(SendOutcome::Stored(m)) = out else {
                    panic!("send {cid}: {out:?}");
                };
                // Announced before answered.
                let announced = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|(_, x)| x.id == m.id);
                assert!(announced, "{cid} (seq {}) answered before announced", m.seq);
                // A retry is answered with the stored message and not announced again.
                let again = b.send(thread, user, &cid, "hello").await;
                assert!(
                    matches!(&again, Ok(SendOutcome::Duplicate(d)) if d.id == m.id),
                    "retry of {cid}: {again:?}"
                );
                m
            }));
        }
    }
    let refused = batchers[0]
        .send(threads[0], stranger.id, "s1", "let me in")
        .await;
    assert!(matches!(refused, Ok(SendOutcome::NotMember)), "{refused:?}");
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap_or_else(|e| panic!("{e}")));
    }

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        seen.len(),
        members.len() * PER_SENDER,
        "every stored message announced exactly once, nothing else"
    );
    for &t in &threads {
        // Each writer announces its commits in order (across writers the hooks may interleave
        // either way: they run on different tasks).
        for w in 0..2 {
            let seqs: Vec<i64> = seen
                .iter()
                .filter(|(x, m)| *x == w && m.thread_id == t)
                .map(|(_, m)| m.seq)
                .collect();
            assert!(
                seqs.windows(2).all(|p| p[0] < p[1]),
                "writer {w}, thread {t}: announced out of seq order: {seqs:?}"
            );
        }
        let mut all: Vec<i64> = seen
            .iter()
            .filter(|(_, m)| m.thread_id == t)
            .map(|(_, m)| m.seq)
            .collect();
        all.sort_unstable();
        let n = all.len() as i64;
        assert_eq!(
            all,
            (1..=n).collect::<Vec<_>>(),
            "thread {t}: seqs announced"
        );
    }
    for m in &acked {
        assert!(seen.iter().any(|(_, x)| x.id == m.id && x.seq == m.seq));
    }
}

/// `database.send_linger_us`: under load (the previous batch held several sends) a writer that
/// finds a small batch waits for more before storing it, and a send after a batch of one is
/// stored at once. Proved by the batch sizes the writer reports, with a linger of an hour: a
/// send that waited for it would never be answered within the test. A current-thread runtime
/// makes "three sends queued together" one batch: they are all queued before the writer runs.
#[tokio::test(flavor = "current_thread")]
async fn a_lingering_writer_fills_small_batches_under_load_and_never_delays_a_lone_send() {
    use confab_persistence::{BatchHooks, OnBatch, OnCommit, SendBatcher, SendOutcome};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let store = fresh_store(4).await;
    let me = store
        .create_user("lingerer", "x")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let other = store
        .create_user("listener", "x")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let thread = store
        .create_group_thread(me.id, &[other.id], "linger", false)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;

    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let on_batch: OnBatch = {
        let sizes = sizes.clone();
        Arc::new(move |n| sizes.lock().unwrap_or_else(|p| p.into_inner()).push(n))
    };
    let commits: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let on_commit: OnCommit = {
        let commits = commits.clone();
        Arc::new(move |d| commits.lock().unwrap_or_else(|p| p.into_inner()).push(d))
    };
    // Batches of at most 4, so a lingering writer gathers until it holds 4.
    let batcher = SendBatcher::start(
        store.clone(),
        1,
        4,
        100,
        Duration::from_secs(3600),
        BatchHooks {
            on_stored: None,
            on_batch: Some(on_batch),
            on_commit: Some(on_commit),
        },
    );
    let send = |k: usize| {
        let b = batcher.clone();
        tokio::spawn(async move { b.send(thread, me.id, &format!("c{k}"), "hi").await })
    };
    let stored = |r: Result<confab_persistence::Result<SendOutcome>, tokio::task::JoinError>| {
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(r, Ok(SendOutcome::Stored(_))), "{r:?}");
    };
    let sizes_now = || sizes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // A hang guard only (the linger is an hour), not a speed bound.
    let within = |f| tokio::time::timeout(Duration::from_secs(60), f);

    // Load: three sends queued together are one batch.
    let burst: Vec<_> = (0..3).map(send).collect();
    for h in burst {
        stored(
            within(h)
                .await
                .unwrap_or_else(|_| panic!("burst send hung")),
        );
    }
    assert_eq!(sizes_now(), vec![3]);

    // Under load a lone send waits for company...
    let lingered_from = std::time::Instant::now();
    let lone = send(3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !lone.is_finished(),
        "the writer stored a small batch under load at once"
    );
    assert_eq!(sizes_now(), vec![3]);
    // ...and is stored with the sends that arrive meanwhile, once the batch is full.
    let more: Vec<_> = (4..7).map(send).collect();
    for h in std::iter::once(lone).chain(more) {
        stored(
            within(h)
                .await
                .unwrap_or_else(|_| panic!("gathered send hung")),
        );
    }
    assert_eq!(sizes_now(), vec![3, 4]);
    // The commit hook times each batch's database work, not the linger before it: the lone
    // send lingered at least the 200 ms slept above, its batch's statement took a few ms.
    let lingered = lingered_from.elapsed();
    let commit_times = commits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        commit_times.len(),
        2,
        "one commit per batch: {commit_times:?}"
    );
    assert!(
        commit_times.iter().all(|d| !d.is_zero()) && commit_times[1] < lingered,
        "commit times {commit_times:?} against a send that waited {lingered:?}"
    );

    // After a full batch, and after a batch of one, nothing waits: each lone send is stored on
    // its own (with an hour's linger, a send that lingered would hang here).
    for k in 7..9 {
        stored(
            within(send(k))
                .await
                .unwrap_or_else(|_| panic!("lone send {k} lingered")),
        );
    }
    assert_eq!(sizes_now(), vec![3, 4, 1, 1]);
    // Each timed before its senders were answered.
    assert_eq!(commits.lock().unwrap_or_else(|p| p.into_inner()).len(), 4);
}

/// A store on a fresh, migrated Postgres database, on a pool of `connections`.
async fn fresh_store(connections: u32) -> confab_persistence::Store {
    let url = confab_tests::create_database(&confab_tests::pg_admin_url()).await;
    fresh_store_at(&url, connections).await
}

/// `n` new users named `<prefix><index>`.
async fn new_users(
    store: &confab_persistence::Store,
    prefix: &str,
    n: usize,
) -> Vec<confab_protocol::UserId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let u = store
            .create_user(&format!("{prefix}{i}"), "x")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids.push(u.id);
    }
    ids
}

/// Run `sql` on `store`'s pool and return its rows (test helper for raw statements).
async fn raw(store: &confab_persistence::Store, sql: &str) -> Vec<sea_orm::QueryResult> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    store
        .connection()
        .query_all(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `(table, sequential scans, index scans)` of the three tables every send touches, from `rows`
/// of `pg_stat_*_user_tables` selected as `t, seq_scan, idx_scan`.
fn scan_counts(rows: Vec<sea_orm::QueryResult>) -> Vec<(String, i64, i64)> {
    let get = |row: &sea_orm::QueryResult, c: &str| -> i64 {
        row.try_get("", c).unwrap_or_else(|e| panic!("{c}: {e}"))
    };
    let out: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|row| {
            let t: String = row.try_get("", "t").unwrap_or_else(|e| panic!("{e}"));
            (t, get(row, "seq_scan"), get(row, "idx_scan"))
        })
        .collect();
    assert_eq!(out.len(), 3, "statistics of all three tables: {out:?}");
    out
}

/// One writer, batches of up to 16, no lingering, no hooks.
fn plain_batcher(store: &confab_persistence::Store) -> confab_persistence::SendBatcher {
    confab_persistence::SendBatcher::start(
        store.clone(),
        1,
        16,
        100,
        std::time::Duration::ZERO,
        confab_persistence::BatchHooks::default(),
    )
}

/// One send from each of `members` to `thread`, all queued before any is answered (on a
/// current-thread runtime the writer runs only once all are queued: one batch call); their
/// outcomes in `members` order. Client message ids are `<prefix><index>`.
async fn send_together(
    batcher: &confab_persistence::SendBatcher,
    thread: confab_protocol::ThreadId,
    members: &[confab_protocol::UserId],
    prefix: &str,
) -> Vec<confab_persistence::Result<confab_persistence::SendOutcome>> {
    let sends: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(k, &m)| {
            let b = batcher.clone();
            let cid = format!("{prefix}{k}");
            tokio::spawn(async move { b.send(thread, m, &cid, "hi").await })
        })
        .collect();
    let mut out = Vec::new();
    for s in sends {
        out.push(s.await.unwrap_or_else(|e| panic!("{e}")));
    }
    out
}

/// Flush this connection's table counters and read them (a backend publishes its counters when
/// it goes idle, at most once a second unless told; the pool has one connection, so it is the
/// one that did the work).
async fn flushed_scans(store: &confab_persistence::Store) -> Vec<(String, i64, i64)> {
    scan_counts(flushed_stats(store, SCANS).await)
}

/// Run `sql` (a read of Postgres's statistics views) once this connection's pending counts
/// are flushed to them (on a pool of one connection: the counts of everything run before).
async fn flushed_stats(store: &confab_persistence::Store, sql: &str) -> Vec<sea_orm::QueryResult> {
    raw(store, "SELECT pg_stat_force_next_flush()").await;
    raw(store, sql).await
}

/// Assert that no sequential scan of the three tables happened between `before` and `after`,
/// and that each was read by index.
fn assert_index_only(before: &[(String, i64, i64)], after: &[(String, i64, i64)]) {
    for ((t, seq0, idx0), (_, seq1, idx1)) in before.iter().zip(after) {
        assert_eq!(
            seq1 - seq0,
            0,
            "{t}: sequential scans ({} index scans): {before:?} → {after:?}",
            idx1 - idx0
        );
        assert!(idx1 > idx0, "{t}: read by index: {before:?} → {after:?}");
    }
}

/// `(updates, HOT updates)` of `threads` so far, flushed as [`flushed_scans`] does.
async fn thread_updates(store: &confab_persistence::Store) -> (i64, i64) {
    let rows = flushed_stats(
        store,
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'threads'",
    )
    .await;
    let get = |c: &str| -> i64 {
        rows[0]
            .try_get("", c)
            .unwrap_or_else(|e| panic!("{c}: {e}"))
    };
    (get("n_tup_upd"), get("n_tup_hot_upd"))
}

const SCANS: &str = "SELECT relname::text AS t, seq_scan, idx_scan FROM pg_stat_user_tables \
     WHERE relname IN ('messages', 'threads', 'thread_members') ORDER BY relname";

/// A fresh database with four users in one thread, analyzed while small (the state a database
/// is in once autovacuum has visited it early on), on a pool of `connections`.
async fn small_analyzed_store(
    connections: u32,
) -> (
    confab_persistence::Store,
    Vec<confab_protocol::UserId>,
    confab_protocol::ThreadId,
) {
    let store = fresh_store(connections).await;
    let members = new_users(&store, "planner", 4).await;
    let thread = store
        .create_group_thread(members[0], &members[1..], "plans", false)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    raw(&store, "ANALYZE").await;
    (store, members, thread)
}

/// Everything a send does to the database, and the reads that follow it, finds rows by index on
/// tables the planner believes tiny: Postgres keeps a connection's plans (prepared statements,
/// PL/pgSQL, foreign-key checks), and a sequential scan planned while `threads` was small reads
/// every dead version its per-send updates leave behind, more with every send (the store's
/// connection setup and migration m0005). Counted by Postgres itself on a pool of one
/// connection: without the setting this counts sequential scans of all three tables. And each
/// send's bump of its thread is a HOT update, which adds no index entry (migration m0008).
#[tokio::test(flavor = "current_thread")]
async fn sends_and_reads_find_rows_by_index_only() {
    use confab_persistence::SendOutcome;

    let (store, members, thread) = small_analyzed_store(1).await;
    let before = flushed_scans(&store).await;
    let bumps_before = thread_updates(&store).await;

    // Lone sends (one statement each).
    for (k, &m) in members.iter().enumerate() {
        let out = store
            .send_message(thread, m, &format!("lone{k}"), "hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(out, SendOutcome::Stored(_)), "{out:?}");
    }
    // Sends queued together: one batch call (this runtime runs the writer only once all four
    // are queued).
    let batcher = plain_batcher(&store);
    for out in send_together(&batcher, thread, &members, "many").await {
        assert!(matches!(out, Ok(SendOutcome::Stored(_))), "{out:?}");
    }
    // The reads that follow: history, replay, the thread list, a read receipt.
    let page = store
        .history_page(thread, None, 20, members[1])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.len(), 8);
    let after = store
        .messages_after(thread, 2, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.len(), 6);
    let (list, _) = store
        .thread_list(members[2], None, 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.len(), 1);
    let (rooms, _) = store
        .public_rooms(members[0], None, 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rooms.is_empty(), "{rooms:?}");
    store
        .mark_read(thread, members[3], 8)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let after = flushed_scans(&store).await;
    assert_index_only(&before, &after);
    // Every send bumped its thread in place (migration m0008: no index covers what a send
    // changes), the lone sends and the batch alike.
    let (updated, hot) = thread_updates(&store).await;
    let (updated, hot) = (updated - bumps_before.0, hot - bumps_before.1);
    assert!(
        updated >= 5,
        "one bump per lone send and one per batch: {updated}"
    );
    assert_eq!(hot, updated, "thread bumps that were not HOT updates");
}

/// One direct call of the batch store function (migrations m0003, m0007) on `conn`: one send
/// to `thread` from each of `senders`, client ids `{tag}-{k}`. Returns `(id, seq)` of what it
/// stored.
async fn call_store_batch(
    conn: &impl sea_orm::ConnectionTrait,
    thread: confab_protocol::ThreadId,
    senders: &[confab_protocol::UserId],
    tag: &str,
) -> Vec<(uuid::Uuid, i64)> {
    use sea_orm::sea_query::ArrayType;
    use sea_orm::{DbBackend, Statement, Value};
    let uuids = |v: Vec<uuid::Uuid>| {
        Value::Array(
            ArrayType::Uuid,
            Some(Box::new(v.into_iter().map(Value::from).collect())),
        )
    };
    let texts = |v: Vec<String>| {
        Value::Array(
            ArrayType::String,
            Some(Box::new(v.into_iter().map(Value::from).collect())),
        )
    };
    let n = senders.len();
    let rows = conn
        .query_all(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT stored_id, stored_seq FROM confab_store_batch($1, $2, $3, $4, $5, $6)",
            [
                uuids((0..n).map(|_| uuid::Uuid::now_v7()).collect()),
                uuids(vec![thread.0; n]),
                uuids(senders.iter().map(|m| m.0).collect()),
                texts((0..n).map(|k| format!("{tag}-{k}")).collect()),
                texts(vec!["hello".to_owned(); n]),
                chrono::Utc::now().into(),
            ],
        ))
        .await
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
    rows.iter()
        .map(|r| {
            let id: uuid::Uuid = r.try_get("", "stored_id").unwrap_or_else(|e| panic!("{e}"));
            let seq: i64 = r
                .try_get("", "stored_seq")
                .unwrap_or_else(|e| panic!("{e}"));
            (id, seq)
        })
        .collect()
}

/// The batch store function reads its tables by index also on a connection that asks for
/// sequential scans (a pooler that drops the store's connection setup, a tool's own session):
/// migration m0005 sets it on the function itself (m0007 keeps it). Counted over enough calls
/// that PL/pgSQL runs both its custom plans and a cached generic one, in a transaction that
/// turns sequential scans back on for the session.
#[tokio::test(flavor = "current_thread")]
async fn the_batch_store_function_reads_its_tables_by_index_only() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let (store, members, thread) = small_analyzed_store(1).await;
    let before = flushed_scans(&store).await;
    let txn = store
        .connection()
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    txn.execute_unprepared("SET LOCAL enable_seqscan = on")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 0..12 {
        let rows = call_store_batch(&txn, thread, &members, &format!("r{round}")).await;
        assert_eq!(rows.len(), 4, "round {round}: every send stored");
    }
    txn.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    let after = flushed_scans(&store).await;
    assert_index_only(&before, &after);
}

/// The batch store function carries its planner settings whatever the session asks for: index
/// scans (m0005, kept by m0007), one generic plan per connection (m0009: without it, a
/// connection whose first batches were small planned every later batch anew) and nested-loop
/// joins only (m0010). A migration that recreates the function must repeat all four. Batches
/// of 1 to 64 sends, in a session that asks for a custom plan on every call, are each stored
/// and numbered in order after the last.
#[tokio::test(flavor = "current_thread")]
async fn the_batch_store_function_keeps_its_planner_settings() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let (store, members, thread) = small_analyzed_store(1).await;
    let rows = raw(
        &store,
        "SELECT array_to_string(proconfig, ' ') AS c FROM pg_proc \
         WHERE proname = 'confab_store_batch'",
    )
    .await;
    assert_eq!(rows.len(), 1, "one confab_store_batch");
    let config: String = rows[0].try_get("", "c").unwrap_or_else(|e| panic!("{e}"));
    for setting in [
        "enable_seqscan=off",
        "plan_cache_mode=force_generic_plan",
        "enable_mergejoin=off",
        "enable_hashjoin=off",
    ] {
        assert!(
            config.split(' ').any(|s| s == setting),
            "{setting} missing from {config:?}"
        );
    }

    let txn = store
        .connection()
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut last = 0;
    for (round, n) in [1usize, 2, 3, 64, 1, 5, 64, 2].into_iter().enumerate() {
        let senders: Vec<_> = members.iter().copied().cycle().take(n).collect();
        let rows = call_store_batch(&txn, thread, &senders, &format!("p{round}")).await;
        let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let want: Vec<i64> = (last + 1..=last + n as i64).collect();
        assert_eq!(seqs, want, "round {round}: {n} sends stored in order");
        last += n as i64;
    }
    txn.rollback().await.unwrap_or_else(|e| panic!("{e}"));
}

/// Planned while the statistics call `messages` empty, the batch store function still checks
/// each send for a retry by probing the (sender, client_msg_id) index, not by reading that
/// whole index in key order (a merge anti-join, which the planner takes for a table it believes
/// holds a few dozen rows, and which the function's generic plan keeps for the connection until
/// `messages` is analyzed again: every batch reads every message's entry). Migration m0010;
/// without it this reads all 5,030 entries. Counted by Postgres on a pool of one connection:
/// index entries read by one batch of ten after 5,000 messages were added under the kept plan.
#[tokio::test(flavor = "current_thread")]
async fn the_batch_store_function_probes_for_retries_after_messages_grow() {
    // The shape of a real deployment's first minutes (users in rooms of 10), analyzed before
    // any message was sent; one room's members send.
    let store = fresh_store(1).await;
    for sql in [
        "INSERT INTO users (id, username, username_lower, password_hash, created_at) \
         SELECT gen_random_uuid(), 'p' || g, 'p' || g, 'x', now() FROM generate_series(1, 1000) g",
        "INSERT INTO threads (id, kind, name, public, last_seq, last_activity_at, created_at, \
                              created_by) \
         SELECT gen_random_uuid(), 'group', 'r' || g, false, 0, now(), now(), \
                (SELECT id FROM users LIMIT 1) FROM generate_series(1, 100) g",
        "WITH u AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM users), \
              t AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM threads) \
         INSERT INTO thread_members (thread_id, user_id, joined_at, last_read_seq) \
         SELECT t.id, u.id, now(), 0 FROM u JOIN t ON t.n = u.n / 10",
        "ANALYZE",
    ] {
        raw(&store, sql).await;
    }
    let room = raw(
        &store,
        "SELECT thread_id::text AS t, array_agg(user_id::text ORDER BY user_id)::text AS m \
         FROM thread_members GROUP BY thread_id ORDER BY thread_id LIMIT 1",
    )
    .await;
    let get = |c: &str| -> String { room[0].try_get("", c).unwrap_or_else(|e| panic!("{e}")) };
    let thread = confab_protocol::ThreadId(get("t").parse().unwrap_or_else(|e| panic!("{e}")));
    let members: Vec<confab_protocol::UserId> = get("m")
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|u| confab_protocol::UserId(u.parse().unwrap_or_else(|e| panic!("{e}"))))
        .collect();
    assert_eq!(members.len(), 10);
    // No ANALYZE in the middle of the test: it would replan the function and hide a bad plan.
    raw(
        &store,
        "ALTER TABLE messages SET (autovacuum_enabled = false)",
    )
    .await;
    // Messages outside the thread's numbering (seq from 100), straight into the table.
    let add = |from: i64, n: i64| {
        format!(
            "INSERT INTO messages (id, thread_id, seq, sender_id, client_msg_id, body, created_at) \
             SELECT gen_random_uuid(), '{}', {from} + g, '{}', 'bulk-{from}-' || g, 'x', now() \
             FROM generate_series(1, {n}) g",
            thread.0, members[0].0
        )
    };
    // A few messages on the table's first page while its statistics still say empty: the
    // planner then believes it holds a few dozen rows (a new deployment's first minutes).
    raw(&store, &add(100, 20)).await;
    // The first call plans, and keeps the plan.
    let first = call_store_batch(store.connection(), thread, &members, "first").await;
    assert_eq!(first.len(), 10);
    raw(&store, &add(1000, 5000)).await;
    let entries_read = |rows: Vec<sea_orm::QueryResult>| -> i64 {
        rows[0].try_get("", "n").unwrap_or_else(|e| panic!("{e}"))
    };
    const READ: &str = "SELECT idx_tup_read AS n FROM pg_stat_user_indexes \
         WHERE indexrelname = 'uq_messages_sender_client_msg'";
    let before = entries_read(flushed_stats(&store, READ).await);
    let second = call_store_batch(store.connection(), thread, &members, "second").await;
    assert_eq!(second.len(), 10, "every send of the second batch stored");
    let after = entries_read(flushed_stats(&store, READ).await);
    // Ten probes for keys that do not exist read nothing; a merge reads the 5,030 entries.
    assert!(
        after - before < 100,
        "one batch of 10 read {} entries of the retry index",
        after - before
    );
}

/// A batch that finds its thread locked by another batch waits, and stores after it, numbered
/// after the other's messages: the lock statement (a join on the batch's distinct thread ids,
/// migration m0007) rechecks the row the other batch updated, and the numbering reads the
/// `last_seq` the other committed. The batch names its thread once per send, as a real batch
/// does, so the join's `DISTINCT` is exercised too.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_that_waits_for_its_threads_numbers_after_the_holder() {
    use sea_orm::TransactionTrait;

    let (store, members, thread) = small_analyzed_store(3).await;
    let holder = store
        .connection()
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = call_store_batch(&holder, thread, &members[..2], "first").await;
    assert_eq!(first.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2]);

    let waiter = {
        let store = store.clone();
        let senders = members[1..].to_vec();
        tokio::spawn(async move {
            call_store_batch(store.connection(), thread, &senders, "second").await
        })
    };
    // Commit only once the second batch is waiting for the thread's row lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = raw(
            &store,
            "SELECT count(*)::bigint AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        let n: i64 = waiting[0]
            .try_get("", "n")
            .unwrap_or_else(|e| panic!("{e}"));
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second batch never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    holder.commit().await.unwrap_or_else(|e| panic!("{e}"));

    let second = waiter.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.iter().map(|r| r.1).collect::<Vec<_>>(), [3, 4, 5]);
    let seqs = raw(
        &store,
        &format!(
            "SELECT seq FROM messages WHERE thread_id = '{}' ORDER BY seq",
            thread.0
        ),
    )
    .await;
    let seqs: Vec<i64> = seqs
        .iter()
        .map(|r| r.try_get("", "seq").unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

/// `messages.thread_id` has no foreign key on Postgres (migration m0006: its check cost a query
/// per stored message), and what the key promised still holds: deleting a thread deletes its
/// messages and their reactions, and a send to a thread that no longer exists stores nothing
/// — on the lone-send statement and on the batch path alike.
#[tokio::test(flavor = "current_thread")]
async fn a_deleted_thread_takes_its_messages_along_and_accepts_none() {
    use confab_persistence::SendOutcome;

    let (store, members, thread) = small_analyzed_store(2).await;
    let batcher = plain_batcher(&store);
    let mut stored = Vec::new();
    for (k, &m) in members.iter().enumerate() {
        let lone = store
            .send_message(thread, m, &format!("lone{k}"), "hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let batched = batcher
            .send(thread, m, &format!("many{k}"), "hi")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for out in [lone, batched] {
            let SendOutcome::Stored(msg) = out else {
                panic!("not stored: {out:?}");
            };
            stored.push(msg);
        }
    }
    store
        .set_reaction(stored[0].id, members[1], "👍", true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let count = |sql: String| {
        let store = store.clone();
        async move {
            let rows = raw(&store, &sql).await;
            let n: i64 = rows[0].try_get("", "n").unwrap_or_else(|e| panic!("{e}"));
            n
        }
    };
    let of_thread = format!("SELECT count(*) AS n FROM messages WHERE thread_id = '{thread}'");
    let reactions = format!(
        "SELECT count(*) AS n FROM reactions WHERE message_id = '{}'",
        stored[0].id
    );
    assert_eq!(count(of_thread.clone()).await, 8);
    assert_eq!(count(reactions.clone()).await, 1);

    raw(
        &store,
        &format!("DELETE FROM threads WHERE id = '{thread}'"),
    )
    .await;
    assert_eq!(
        count(of_thread.clone()).await,
        0,
        "messages of the deleted thread"
    );
    assert_eq!(count(reactions).await, 0, "reactions to them");

    // Sends to it, both paths: refused, nothing stored.
    let lone = store
        .send_message(thread, members[0], "after-lone", "anyone?")
        .await;
    assert!(matches!(lone, Ok(SendOutcome::NotMember)), "{lone:?}");
    for out in send_together(&batcher, thread, &members, "after").await {
        assert!(matches!(out, Ok(SendOutcome::NotMember)), "{out:?}");
    }
    assert_eq!(
        count(of_thread).await,
        0,
        "nothing stored for a thread that is gone"
    );
}

/// The pool takes a connection back without a round trip when its last use left it clean
/// (vendor/sqlx-core: upstream pings every returned connection), and still sends a dropped
/// transaction's `ROLLBACK` at once, so its locks do not outlive it.
#[tokio::test]
async fn a_clean_connection_goes_back_to_the_pool_without_a_ping() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    // Postgres's `Sync` message: the whole of sqlx's ping, and the end of every query.
    const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];
    let syncs_in_a_row = |bytes: &[u8]| {
        bytes
            .windows(10)
            .filter(|w| w[..5] == SYNC && w[5..] == SYNC)
            .count()
    };

    let url = confab_tests::create_database(&confab_tests::pg_admin_url()).await;
    let migrated = fresh_store_at(&url, 1).await;
    let members = new_users(&migrated, "ping", 2).await;
    let thread = migrated
        .create_group_thread(members[0], &members[1..], "pings", false)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    drop(migrated);
    // One connection, through a proxy that keeps what the pool sends.
    let (host_port, _) = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .unwrap_or_else(|| panic!("no host in {url}"));
    let pg_port: u16 = host_port
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5432);
    let proxy = confab_tests::proxy::Proxy::start(pg_port).await;
    let proxied = url.replacen(host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    let store = fresh_store_at(&proxied, 1).await;
    let setup = proxy.sent().len();

    // Queries one after another on the one pooled connection: each ends with its own `Sync`;
    // a ping on release would put a second one right after it.
    for i in 0..20 {
        let rows = raw(&store, &format!("SELECT {i} AS n")).await;
        assert_eq!(rows.len(), 1);
    }
    store
        .send_message(thread, members[0], "ping-1", "stored through the proxy")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sent = proxy.sent().split_off(setup);
    assert!(
        sent.windows(5).filter(|w| *w == SYNC).count() >= 21,
        "the queries went through the proxy"
    );
    assert_eq!(
        syncs_in_a_row(&sent),
        0,
        "a ping followed a query: the pool pinged a clean connection on release"
    );

    // A transaction dropped without commit, holding a row lock: its rollback must reach the
    // server now, not when the connection is next used.
    let txn = store
        .connection()
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    txn.execute(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT id FROM threads WHERE id = '{}' FOR UPDATE",
            thread.0
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    drop(txn);
    let other = fresh_store_at(&url, 1).await;
    let mut free = false;
    for _ in 0..50 {
        let r = other
            .connection()
            .execute(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT id FROM threads WHERE id = '{}' FOR UPDATE NOWAIT",
                    thread.0
                ),
            ))
            .await;
        if r.is_ok() {
            free = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The pooled connection was not used since the drop: only the flush on release freed it.
    assert!(
        free,
        "the dropped transaction's lock was still held after 5 s"
    );
    drop(store);
}

/// A store on `url` (migrated), with at most `connections` pooled connections.
async fn fresh_store_at(url: &str, connections: u32) -> confab_persistence::Store {
    use confab_persistence::{Store, StoreOptions};
    Store::connect(&StoreOptions {
        url: url.to_owned(),
        max_connections: connections,
        acquire_timeout: std::time::Duration::from_secs(10),
        migrate: true,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The store's own answers to input the gateway normally refuses first, on the lone-send
/// statement and on the batch path alike: a `client_msg_id` its sender already used in another
/// thread is `KeyReused` (not a `Duplicate` carrying the other thread's message), and text with a
/// NUL character — which a Postgres text column cannot hold — is `Invalid` (a 400, not a server
/// fault), while the sends batched with it are stored.
#[tokio::test(flavor = "current_thread")]
async fn reused_keys_and_nul_text_are_refused_on_both_store_paths() {
    use confab_persistence::{Error, SendOutcome};

    let (store, members, thread) = small_analyzed_store(2).await;
    let other = store
        .create_group_thread(members[0], &members[1..], "elsewhere", false)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    let batcher = plain_batcher(&store);
    let first = store.send_message(thread, members[0], "k", "hi").await;
    let Ok(SendOutcome::Stored(first)) = first else {
        panic!("not stored: {first:?}");
    };
    let lone = store.send_message(other, members[0], "k", "hi").await;
    assert!(matches!(lone, Ok(SendOutcome::KeyReused)), "{lone:?}");
    let batched = batcher.send(other, members[0], "k", "hi").await;
    assert!(matches!(batched, Ok(SendOutcome::KeyReused)), "{batched:?}");
    let retry = store.send_message(thread, members[0], "k", "hi").await;
    assert!(
        matches!(&retry, Ok(SendOutcome::Duplicate(m)) if m.id == first.id),
        "{retry:?}"
    );

    let lone = store.send_message(thread, members[1], "nul", "a\0b").await;
    assert!(matches!(lone, Err(Error::Invalid(_))), "{lone:?}");
    // One bad send among good ones fails the batch statement; the writer then stores the rest
    // one by one.
    let sends: Vec<_> = (0..4)
        .map(|k| {
            let b = batcher.clone();
            let body = if k == 2 { "bad\0" } else { "good" };
            let member = members[k];
            tokio::spawn(async move { b.send(thread, member, format!("b{k}"), body).await })
        })
        .collect();
    for (k, s) in sends.into_iter().enumerate() {
        let out = s.await.unwrap_or_else(|e| panic!("{e}"));
        if k == 2 {
            assert!(matches!(out, Err(Error::Invalid(_))), "{out:?}");
        } else {
            assert!(matches!(out, Ok(SendOutcome::Stored(_))), "{k}: {out:?}");
        }
    }
    let n = raw(
        &store,
        &format!("SELECT count(*) AS n FROM messages WHERE thread_id IN ('{thread}', '{other}')"),
    )
    .await;
    let n: i64 = n[0].try_get("", "n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 4, "the first send and the three good batched ones");
}

/// A SQLite store in a file of its own (removed when the guard drops).
struct SqliteFile(std::path::PathBuf);

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fresh_sqlite_store() -> (confab_persistence::Store, SqliteFile) {
    let dir = std::env::temp_dir().join(format!("confab-t-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.join("confab.db").display());
    (fresh_store_at(&url, 1).await, SqliteFile(dir))
}

/// One group commit holding every kind of send — fresh ones in two threads, a retry of a
/// stored message, a key its sender used in another thread, a stranger's, the same key twice
/// in the batch — on both stores (Postgres: the batch function; SQLite, the embedded store:
/// one transaction). Each gets the answer it would get alone: the fresh ones stored with the
/// next seqs of their thread in queue order, the retries their original, the reused key
/// `KeyReused`, the stranger `NotMember`; the sender's read position follows; nothing else is
/// stored.
async fn a_mixed_batch_answers_every_send_as_if_alone(store: confab_persistence::Store) {
    use confab_persistence::SendOutcome;

    let members = new_users(
        &store,
        &format!("mix{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        3,
    )
    .await;
    let stranger = new_users(
        &store,
        &format!("mixs{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        1,
    )
    .await[0];
    let mut threads = Vec::new();
    for name in ["mix one", "mix two"] {
        let t = store
            .create_group_thread(members[0], &members[1..], name, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        threads.push(t.id);
    }
    let (a, b) = (threads[0], threads[1]);
    let batcher = plain_batcher(&store);
    let Ok(SendOutcome::Stored(earlier)) = batcher.send(a, members[0], "old", "before").await
    else {
        panic!("the first send was not stored");
    };
    // On a current-thread runtime the writer runs only once all of these are queued: one batch.
    let plan: Vec<(confab_protocol::ThreadId, confab_protocol::UserId, &str)> = vec![
        (a, members[1], "f1"),
        (b, members[1], "f2"),
        (a, members[0], "old"),
        (b, members[0], "old"),
        (a, stranger, "s1"),
        (a, members[2], "twice"),
        (a, members[2], "twice"),
        (a, members[1], "f3"),
        (b, members[2], "f4"),
    ];
    let sends: Vec<_> = plan
        .iter()
        .map(|&(t, u, cid)| {
            let b = batcher.clone();
            tokio::spawn(async move { b.send(t, u, cid, "hi").await })
        })
        .collect();
    let mut out = Vec::new();
    for s in sends {
        out.push(s.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let stored = |i: usize| match &out[i] {
        Ok(SendOutcome::Stored(m)) => (m.thread_id, m.seq, m.id),
        other => panic!("send {i} ({:?}): {other:?}", plan[i]),
    };
    // Stored by the batch itself, not by the one-by-one fallback after a failed batch: a batch
    // stamps its messages with one time, a lone send with its own.
    let stamps: std::collections::HashSet<_> = [0, 1, 5, 7, 8]
        .iter()
        .map(|&i| match &out[i] {
            Ok(SendOutcome::Stored(m)) => m.created_at,
            other => panic!("send {i}: {other:?}"),
        })
        .collect();
    assert_eq!(stamps.len(), 1, "the fresh sends were not stored together");
    // Thread a held `earlier` (seq 1); the fresh sends take 2, 3, 4 in queue order.
    assert_eq!(stored(0).1, 2);
    let twice = stored(5);
    assert_eq!(twice.1, 3);
    assert_eq!(stored(7).1, 4);
    assert_eq!((stored(1).0, stored(1).1), (b, 1));
    assert_eq!((stored(8).0, stored(8).1), (b, 2));
    assert!(
        matches!(&out[2], Ok(SendOutcome::Duplicate(m)) if m.id == earlier.id),
        "the retry: {:?}",
        out[2]
    );
    assert!(matches!(out[3], Ok(SendOutcome::KeyReused)), "{:?}", out[3]);
    assert!(matches!(out[4], Ok(SendOutcome::NotMember)), "{:?}", out[4]);
    assert!(
        matches!(&out[6], Ok(SendOutcome::Duplicate(m)) if m.id == twice.2),
        "the same key twice in one batch: {:?}",
        out[6]
    );
    // History holds exactly the stored ones, gap-free.
    for (t, n) in [(a, 4), (b, 2)] {
        let page = store
            .history_page(t, None, 100, members[0])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let seqs: Vec<i64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "thread {t}");
    }
    // A sender's own message is read by them: member 1 sent seqs 2 and 4 in a.
    let mine = store
        .read_position(a, members[1])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("member 1 is a member"));
    assert_eq!((mine.last_read_seq, mine.last_seq), (4, 4));
}

#[tokio::test(flavor = "current_thread")]
async fn a_mixed_batch_answers_every_send_as_if_alone_on_postgres() {
    a_mixed_batch_answers_every_send_as_if_alone(fresh_store(2).await).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_mixed_batch_answers_every_send_as_if_alone_on_sqlite() {
    let (store, _file) = fresh_sqlite_store().await;
    a_mixed_batch_answers_every_send_as_if_alone(store).await;
}
