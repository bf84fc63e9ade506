//! `report`: turn the JSON lines of a `make bench` run into `BENCHMARKS.md`: the machine, the
//! exact commands, every figure against its target (from MISSION.md), the details of each
//! scenario, and where the CPU went. Only figures present in the results are written; a figure
//! with no measurement says so instead of showing a number.

use crate::crash::CrashReport;
use crate::fanout::FanoutReport;
use crate::history::HistoryReport;
use crate::idle::IdleReport;
use crate::procstat::CpuWindow;
use crate::ramp::RampReport;
use crate::scrape::MetricsDelta;
use crate::storm::StormReport;
use std::collections::BTreeMap;
use std::fmt::Write as _;

mod why;

/// Every result of a run, by scenario.
#[derive(Default)]
pub struct Results {
    /// Fanout runs (ramp steps excluded), in order.
    pub fanout: Vec<FanoutReport>,
    /// Ramp outcomes.
    pub ramp: Vec<RampReport>,
    /// The ramps' steps, in full.
    pub ramp_steps: Vec<FanoutReport>,
    /// Idle runs.
    pub idle: Vec<IdleReport>,
    /// Storms.
    pub storm: Vec<StormReport>,
    /// Node crashes.
    pub crash: Vec<CrashReport>,
    /// History runs.
    pub history: Vec<HistoryReport>,
    /// Fanout runs against the embedded single node (`make run`), labelled `embedded…`: a
    /// section of their own, never part of the cluster's figures.
    pub embedded_fanout: Vec<FanoutReport>,
    /// Idle runs against the embedded single node.
    pub embedded_idle: Vec<IdleReport>,
    /// History runs against the embedded single node.
    pub embedded_history: Vec<HistoryReport>,
}

impl Results {
    /// Parse JSON lines (unknown or broken lines are skipped; ramp steps are fanout lines whose
    /// label starts with `ramp`).
    pub fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let scenario = v["scenario"].as_str().unwrap_or_default().to_owned();
            let label = v["label"].as_str().unwrap_or_default().to_owned();
            match scenario.as_str() {
                "fanout" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        if label.starts_with(EMBEDDED) {
                            r.embedded_fanout.push(x);
                        } else if label.starts_with("ramp") {
                            r.ramp_steps.push(x);
                        } else {
                            r.fanout.push(x);
                        }
                    }
                }
                "ramp" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        r.ramp.push(x);
                    }
                }
                "idle" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        if label.starts_with(EMBEDDED) {
                            r.embedded_idle.push(x);
                        } else {
                            r.idle.push(x);
                        }
                    }
                }
                "storm" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        r.storm.push(x);
                    }
                }
                "crash" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        r.crash.push(x);
                    }
                }
                "history" => {
                    if let Ok(x) = serde_json::from_value(v) {
                        if label.starts_with(EMBEDDED) {
                            r.embedded_history.push(x);
                        } else {
                            r.history.push(x);
                        }
                    }
                }
                _ => {}
            }
        }
        r
    }
}

/// The free-text parts supplied by the script.
#[derive(Default)]
pub struct Inputs {
    /// The machine description (markdown lines).
    pub machine: String,
    /// The exact commands run.
    pub commands: String,
    /// `perf report --sort dso,sym` of the gateway processes, one per profiled run: (the run's
    /// label, the report text).
    pub profiles: Vec<(String, String)>,
    /// How the profile was taken.
    pub profile_method: String,
    /// `perf report --sort dso` of the same profiled runs: (label, report text).
    pub profile_dso: Vec<(String, String)>,
    /// `perf stat -x,` system-call and context-switch counts of the gateway processes over
    /// the profiled runs' sampling windows: (label, output).
    pub counts: Vec<(String, String)>,
    /// How long each `counts` window was, seconds.
    pub counts_window_s: Option<f64>,
}

fn n0(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

/// The flush window a run's nodes had (`session.write_delay_ms`), read from its label:
/// `make bench` names such a run `<twin>-window<ms>`, its twin being the same load on nodes
/// without a window. `None` for a run without one.
pub(crate) fn window_ms(label: &str) -> Option<(&str, u64)> {
    let (twin, ms) = label.rsplit_once("-window")?;
    Some((twin, ms.parse().ok()?))
}

/// Each run with a flush window, its twin without one (when the run has it) and the window.
pub(crate) fn window_pairs(runs: &[FanoutReport]) -> Vec<(&FanoutReport, &FanoutReport, u64)> {
    runs.iter()
        .filter_map(|f| {
            let (twin, ms) = window_ms(&f.label)?;
            Some((f, runs.iter().find(|t| t.label == twin)?, ms))
        })
        .collect()
}

/// Whether a run counts toward the rooms-of-10 figures: rooms of 10, and not sampled by perf
/// (the sampling disturbs a profiled run's figures; they serve the profile only).
pub(crate) fn counts(f: &FanoutReport) -> bool {
    f.room_size == 10 && !f.label.starts_with("profile")
}

/// Whether a run counts toward the latency and ceiling figures: [`counts`], on nodes without a
/// flush window (a window trades latency for CPU; those runs have a section of their own).
pub(crate) fn counts_unwindowed(f: &FanoutReport) -> bool {
    counts(f) && window_ms(&f.label).is_none()
}

/// The fanout run closest to `deliveries` per second offered (rooms of 10, no flush window).
fn closest(fanout: &[FanoutReport], deliveries: f64) -> Option<&FanoutReport> {
    fanout
        .iter()
        .filter(|f| counts_unwindowed(f) && !f.label.starts_with("store"))
        .min_by(|a, b| {
            let da = (a.rate_offered * 9.0 - deliveries).abs();
            let db = (b.rate_offered * 9.0 - deliveries).abs();
            da.total_cmp(&db)
        })
}

/// The label prefix of runs against the embedded single node.
pub const EMBEDDED: &str = "embedded";

/// The embedded single node (`make run`): what one process on SQLite and in-process fan-out
/// holds, for whoever tries Confab in one command.
fn embedded_section(w: &mut String, r: &Results) {
    if r.embedded_fanout.is_empty() && r.embedded_idle.is_empty() && r.embedded_history.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\n## The embedded single node (`make run`)\n\nOne node on the embedded store (SQLite in \
         WAL mode, `synchronous=FULL`: every acknowledged message is on disk) with in-process \
         fan-out — what `make run` starts — with the same raised rate limits and argon2 cost as \
         the nodes above, on one thread. Not part of the cluster's figures: a target above is \
         always the two-node cluster's.\n"
    );
    if !r.embedded_fanout.is_empty() {
        fanout_table(w, &r.embedded_fanout);
    }
    for i in &r.embedded_idle {
        let _ = writeln!(w, "\n{}", i.summary());
    }
    for h in &r.embedded_history {
        let detail = history_detail(
            h,
            "Inserting the messages into the node's SQLite file while it ran (one recursive \
             `INSERT … SELECT`, then `ANALYZE`) took",
        );
        let _ = writeln!(w, "\n{}\n\n{detail}", h.summary());
    }
}

/// A history run's newest and older pages' p99, and how long `inserted` (how the messages got
/// into the database) took.
fn history_detail(h: &HistoryReport, inserted: &str) -> String {
    format!(
        "Newest page p99 {:.2} ms; random older pages p99 {:.2} ms. {inserted} {:.1} s.",
        h.newest_ms.p99, h.random_ms.p99, h.insert_s
    )
}

/// Render `BENCHMARKS.md`.
pub fn render(results: &Results, inputs: &Inputs) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `make bench` (`scripts/bench.sh`, `confab-bench report`). Every number below \
         was measured by that run on the machine described; nothing is copied from elsewhere. \
         The load generator runs on the same machine as the nodes, Redis and Postgres, as the \
         targets in MISSION.md assume.\n"
    );
    let _ = writeln!(w, "## Machine\n\n{}\n", inputs.machine.trim());
    let _ = writeln!(w, "## Figures against targets\n");
    figures(w, results);
    let _ = writeln!(w, "\n## Fan-out runs\n");
    fanout_table(w, &results.fanout);
    latency_split(w, &results.fanout);
    window_section(w, &results.fanout);
    for r in &results.ramp {
        ramp_section(w, r);
    }
    for i in &results.idle {
        idle_section(w, i);
    }
    for s in &results.storm {
        let _ = writeln!(w, "\n## Reconnect storm ({})\n\n{}\n", s.label, s.summary());
    }
    for c in &results.crash {
        let _ = writeln!(
            w,
            "\n## Node crash ({})\n\n{}\n\nA node is SIGKILLed with its users connected (the \
             members of each room on it); the members on the other node watch. Offline times run \
             from the kill to each watcher's `presence` `offline` event for each of its room's \
             victims; ghosts are victims the surviving node still calls online afterwards \
             (`GET /api/v1/presence`). Default presence settings: the dead node's heartbeat key \
             expires after `presence.node_ttl_ms` (15 s), a survivor's sweep (every \
             `presence.heartbeat_interval_ms`, 5 s) finds it, then the offline grace \
             (`presence.offline_grace_ms`, 3 s): 13-23 s by design.\n",
            c.label,
            c.summary()
        );
    }
    for h in &results.history {
        let _ = writeln!(w, "\n## History paging ({})\n\n{}\n", h.label, h.summary());
        let _ = writeln!(
            w,
            "{} Latency is measured by the client over HTTP: authentication, membership check, \
             query and JSON included.",
            history_detail(
                h,
                "Inserting the messages (SQL `generate_series` into the bench database, then \
                 `ANALYZE`) took"
            )
        );
    }
    embedded_section(w, results);
    let _ = writeln!(w, "\n## Where the time goes\n");
    time_summary(w, results, inputs);
    cpu_split(w, &results.fanout);
    why::section(w, results, inputs);
    profile(w, inputs);
    let _ = writeln!(
        w,
        "\n## Exact commands\n\n```sh\n{}\n```",
        inputs.commands.trim()
    );
    md
}

fn figures(w: &mut String, r: &Results) {
    let _ = writeln!(
        w,
        "| figure | target | measured | verdict |\n|---|---|---|---|"
    );
    // The ramp's rules for a step that held (also the loss-free ceiling's, below).
    let bound = r.ramp.first().map_or(500.0, |x| x.max_p99_ms);
    // Loss-free runs: the fixed-rate runs that lost nothing, and the ramp steps that held (the
    // busiest loss-free load, where deliveries share the most writes and wake-ups: what the
    // 1,000,000 target is about), with or without a flush window (MISSION: coalesced writes
    // under load, or a short flush window). Profiled runs are left out.
    let loss_free = r
        .fanout
        .iter()
        .filter(|f| f.clean())
        .chain(
            r.ramp_steps
                .iter()
                .filter(|f| crate::ramp::verdict(f, bound).is_none()),
        )
        .filter(|f| counts(f));
    match loss_free.max_by(|a, b| {
        a.deliveries_per_server_cpu_s
            .total_cmp(&b.deliveries_per_server_cpu_s)
    }) {
        Some(best) => {
            let _ = writeln!(
                w,
                "| fan-out efficiency (rooms of 10, {} nodes) | ≥ 1,000,000 deliveries per server \
                 CPU-second | {} (best loss-free run, `{}`{}, {} deliveries/s) | {} |",
                best.nodes,
                n0(best.deliveries_per_server_cpu_s),
                best.label,
                if best.label.starts_with("ramp") {
                    ": a ramp step that held".to_owned()
                } else if let Some((_, ms)) = window_ms(&best.label) {
                    format!(
                        ": a {ms} ms flush window, `session.write_delay_ms`; p99 {:.2} ms",
                        best.latency_ms.p99
                    )
                } else {
                    String::new()
                },
                n0(best.delivered_per_sec),
                verdict(best.deliveries_per_server_cpu_s >= 1_000_000.0)
            );
        }
        None => {
            let _ = writeln!(w, "| fan-out efficiency | ≥ 1,000,000 deliveries per server CPU-second | no loss-free run with rooms of 10 | **missed** |");
        }
    }
    match closest(&r.fanout, 90_000.0) {
        Some(f) => {
            let _ = writeln!(
                w,
                "| fan-out efficiency at ~90k deliveries/s | ≥ 300,000 per server CPU-second (the \
                 mark to beat at a moderate rate) | {} (`{}`) | {} |",
                n0(f.deliveries_per_server_cpu_s),
                f.label,
                verdict(f.deliveries_per_server_cpu_s >= 300_000.0 && f.clean())
            );
            let _ = writeln!(
                w,
                "| p99 send→deliver across nodes at 90k deliveries/s | ≤ 5 ms | p99 {:.2} ms \
                 (p50 {:.2}, p99.9 {:.2}, max {:.2}) at {} deliveries/s, lost {}, dup {} (`{}`) | {} |",
                f.latency_ms.p99,
                f.latency_ms.p50,
                f.latency_ms.p999,
                f.latency_ms.max,
                n0(f.delivered_per_sec),
                f.lost,
                f.duplicated,
                f.label,
                verdict(f.latency_ms.p99 <= 5.0 && f.clean() && f.delivered_per_sec >= 85_000.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| p99 send→deliver at 90k deliveries/s | ≤ 5 ms | not measured | — |"
            );
        }
    }
    if let Some(step) = r.ramp.first().and_then(|ramp| {
        ramp.steps
            .iter()
            .filter(|s| s.held)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }) {
        let _ = writeln!(
            w,
            "| (context) p99 at the ramp's highest loss-free step | ≤ 5 ms at 90k deliveries/s | \
             p99 {:.2} ms at {} deliveries/s ({} msgs/s offered for 8 s) | {} |",
            step.p99_ms,
            n0(step.delivered_per_sec),
            n0(step.rate),
            verdict(step.p99_ms <= 5.0 && step.delivered_per_sec >= 85_000.0)
        );
    }
    // The loss-free ceiling: the most deliveries/s of any run, fixed-rate or ramp step, that
    // held by the ramp's rules (rooms of 10, nodes without a flush window; profiled runs
    // excluded).
    let best = r
        .fanout
        .iter()
        .chain(&r.ramp_steps)
        .filter(|f| counts_unwindowed(f) && crate::ramp::verdict(f, bound).is_none())
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec));
    match best {
        Some(f) => {
            let _ = writeln!(
                w,
                "| loss-free ceiling on the shared 2-core machine | ≥ 450,000 deliveries/s | {} \
                 deliveries/s (`{}`: the most of any run that held — nothing lost or duplicated, \
                 every send answered, no client dropped, the generator on schedule, p99 ≤ {} \
                 ms{}) | {} |",
                n0(f.delivered_per_sec),
                f.label,
                bound,
                r.ramp.first().map_or(String::new(), |x| format!(
                    "; the ramp's first failure: {}",
                    x.first_failed_rate
                        .map_or("none up to its cap".into(), |rate| format!(
                            "{} msgs/s, {}",
                            n0(rate),
                            x.failure.clone().unwrap_or_default()
                        ))
                )),
                verdict(f.delivered_per_sec >= 450_000.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| loss-free ceiling | ≥ 450,000 deliveries/s | no run held | **missed** |"
            );
        }
    }
    match r.idle.first() {
        Some(i) => {
            // The worse of the two readings: the average is flattered by heap the setup left
            // free, the marginal one by heap the first half left free.
            let per_conn = i.rss_per_conn_kib.max(i.rss_marginal_kib);
            let gib = per_conn * 100_000.0 / 1024.0 / 1024.0;
            let _ = writeln!(
                w,
                "| RSS per idle authenticated connection | ≤ 8 KiB | {:.2} KiB (the worse of: \
                 {:.2} KiB average over all {} connections on one node, {:.2} KiB marginal over \
                 the second half) | {} |",
                per_conn,
                i.rss_per_conn_kib,
                n0(i.connections as f64),
                i.rss_marginal_kib,
                verdict(per_conn <= 8.0 && per_conn > 0.0)
            );
            let _ = writeln!(
                w,
                "| 100,000 connections on one node | 100,000 | **extrapolated, not measured**: \
                 the process fd limit here is 20,000, so {} were measured; at {:.2} KiB each, \
                 100,000 would need ≈ {:.2} GiB of connection memory | — |",
                n0(i.connections as f64),
                per_conn,
                gib
            );
            let _ = writeln!(
                w,
                "| authenticated connects per second per node | ≥ 10,000 | {} /s ({} sessions: \
                 upgrade, token check, `hello`; {} retried) | {} |",
                n0(i.connects_per_sec),
                n0(i.connections as f64),
                i.retried,
                verdict(i.connects_per_sec >= 10_000.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| RSS per idle connection | ≤ 8 KiB | not measured | — |"
            );
        }
    }
    let stored = r
        .fanout
        .iter()
        .filter(|f| f.label.starts_with("store"))
        .max_by(|a, b| a.acked_per_sec.total_cmp(&b.acked_per_sec));
    match stored {
        Some(s) => {
            let _ = writeln!(
                w,
                "| durably stored messages per second (ack after commit) | ≥ 30,000 | {} /s acked \
                 at {} offered (`{}`; ack p99 {:.1} ms, {} unanswered at the end) | {} |",
                n0(s.acked_per_sec),
                n0(s.rate_offered),
                s.label,
                s.ack_latency_ms.p99,
                s.unacked,
                verdict(s.acked_per_sec >= 30_000.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| durably stored messages per second | ≥ 30,000 | not measured | — |"
            );
        }
    }
    match r.history.first() {
        Some(h) => {
            let _ = writeln!(
                w,
                "| history page of 20 from a {}-message thread | ≤ 5 ms p99 | p99 {:.2} ms (p50 \
                 {:.2}, max {:.2}; {} pages, {} errors) | {} |",
                n0(h.messages as f64),
                h.all_ms.p99,
                h.all_ms.p50,
                h.all_ms.max,
                h.requests,
                h.errors,
                verdict(h.all_ms.p99 <= 5.0 && h.errors == 0 && h.messages >= 1_000_000)
            );
        }
        None => {
            let _ = writeln!(w, "| history page of 20 | ≤ 5 ms p99 | not measured | — |");
        }
    }
    if let Some(s) = r.storm.first() {
        let _ = writeln!(
            w,
            "| reconnect storm: {} clients resume at once | nothing lost | all back in {:.0} ms; \
             lost {}, dup {} of {} | {} |",
            n0(s.clients as f64),
            s.time_to_all_resumed_ms,
            s.lost,
            s.duplicated,
            n0(s.expected_deliveries as f64),
            verdict(s.lost == 0 && s.duplicated == 0 && s.failed == 0)
        );
    }
    match r.crash.first() {
        Some(c) => {
            let _ = writeln!(
                w,
                "| presence of a SIGKILLed node's users cleared | ≤ 30 s | {} users offline at \
                 all {} watchers {:.1} s after the kill (p50 {:.1} s); {} of {} events missing, \
                 {} ghosts (`{}`) | {} |",
                n0(c.victims as f64),
                n0(c.watchers as f64),
                c.time_to_all_offline_s,
                c.offline_ms.p50 / 1000.0,
                c.missing,
                n0(c.pairs as f64),
                c.ghosts,
                c.label,
                verdict(c.clean() && c.time_to_all_offline_s <= 30.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| presence of a SIGKILLed node's users cleared | ≤ 30 s | not measured | — |"
            );
        }
    }
}

fn fanout_table(w: &mut String, runs: &[FanoutReport]) {
    let _ = writeln!(
        w,
        "Open loop: every client sends on a fixed schedule whatever the server does; latency is \
         send→delivery to *other* members (the sender's own echo is counted separately); loss \
         and duplicates are counted exactly per acknowledged message and member.\n"
    );
    let _ = writeln!(
        w,
        "| run | clients / room | offered msg/s | sent/s | acked/s | delivered/s | lost | dup | \
         p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | gateway CPU-s | deliveries per gateway \
         CPU-s | incl. Redis+PG | node RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in runs {
        let rss: Vec<String> = f
            .cpu
            .processes
            .iter()
            .filter(|p| p.name.starts_with("node"))
            .map(|p| format!("{:.0}", p.rss_kib as f64 / 1024.0))
            .collect();
        let _ = writeln!(
            w,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | \
             {:.2} | {} | {} | {} |",
            f.label,
            n0(f.clients as f64),
            f.room_size,
            n0(f.rate_offered),
            n0(f.sent_per_sec),
            n0(f.acked_per_sec),
            n0(f.delivered_per_sec),
            f.lost,
            f.duplicated,
            f.latency_ms.p50,
            f.latency_ms.p90,
            f.latency_ms.p99,
            f.latency_ms.p999,
            f.latency_ms.max,
            f.server_cpu_s,
            n0(f.deliveries_per_server_cpu_s),
            n0(f.deliveries_per_stack_cpu_s),
            rss.join(" / ")
        );
    }
    let odd: Vec<String> = runs
        .iter()
        .filter(|f| !f.clean())
        .map(|f| {
            format!(
                "- `{}`: unacked {}, send errors {:?}, disconnects {:?}, drained {}{}",
                f.label,
                f.unacked,
                f.send_errors,
                f.disconnects,
                f.drained,
                if f.drained {
                    ""
                } else {
                    " (the load generator stopped waiting: its `lost` counts deliveries still in \
                     flight then as well as any lost)"
                }
            )
        })
        .collect();
    if !odd.is_empty() {
        let _ = writeln!(w, "\nRuns that were not clean:\n\n{}", odd.join("\n"));
    }
}

/// Mean of a Prometheus histogram over the window, in ms, summed over every scraped node.
fn metric_mean_ms(metrics: &[MetricsDelta], family: &str) -> Option<f64> {
    metric_mean(metrics, family).map(|s| s * 1000.0)
}

/// A histogram's mean over the run (its `_sum` over its `_count`, all nodes together).
fn metric_mean(metrics: &[MetricsDelta], family: &str) -> Option<f64> {
    let get = |suffix: &str| -> f64 {
        metrics
            .iter()
            .filter_map(|m| m.counters.get(&format!("{family}_{suffix}")))
            .sum()
    };
    let count = get("count");
    (count > 0.0).then(|| get("sum") / count)
}

/// Where a fan-out run's latency accumulated, from the nodes' own `/metrics` (scraped before
/// and after the window): the send's time in the store (queue, group commit, fsync), then
/// publish → hub, against what the clients saw end to end.
fn latency_split(w: &mut String, runs: &[FanoutReport]) {
    let rows: Vec<&FanoutReport> = runs.iter().filter(|f| !f.metrics.is_empty()).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\nWhere the latency accumulates, from the nodes' `/metrics` over the same window \
         (means, both nodes): `store` is `confab_store_latency_seconds` (a send's wait for the \
         group-commit writer, the batch statement and its commit), `commit` is \
         `confab_store_commit_seconds` (one group commit's time in the database: the batch \
         statement with its thread locks, inserts, commit and WAL flush — the rest of `store` is \
         the writer's queue and its linger), `publish → hub` is \
         `confab_fanout_latency_seconds` (after the commit until handed to local sessions); \
         `gap reads` counts `confab_gap_repairs_total{{scope=\"node\"}}` — holes a node still \
         saw after `delivery.gap_grace_ms` and read from the database; `sends per commit` is \
         `confab_store_batch_size` (how many sends shared one group commit, which largely sets \
         the database's cost per message).\n"
    );
    let _ = writeln!(
        w,
        "| run | ack p50 / p99 ms (client) | store mean ms | commit mean ms | sends per commit | \
         publish → hub mean ms | delivery p50 / p99 ms (client) | gap reads |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
    for f in rows {
        let gaps: f64 = f
            .metrics
            .iter()
            .filter_map(|m| m.counters.get("confab_gap_repairs_total{scope=\"node\"}"))
            .sum();
        let _ = writeln!(
            w,
            "| {} | {:.1} / {:.1} | {} | {} | {} | {} | {:.1} / {:.1} | {} |",
            f.label,
            f.ack_latency_ms.p50,
            f.ack_latency_ms.p99,
            ms(metric_mean_ms(&f.metrics, "confab_store_latency_seconds")),
            ms(metric_mean_ms(&f.metrics, "confab_store_commit_seconds")),
            ms(metric_mean(&f.metrics, "confab_store_batch_size")),
            ms(metric_mean_ms(&f.metrics, "confab_fanout_latency_seconds")),
            f.latency_ms.p50,
            f.latency_ms.p99,
            n0(gaps)
        );
    }
}

/// Each run with a flush window against its twin without one (same load, same nodes' code).
fn window_section(w: &mut String, runs: &[FanoutReport]) {
    let pairs = window_pairs(runs);
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\n## Flush window (`session.write_delay_ms`)\n\nThe same load on nodes with a write \
         delay: a session that has something queued waits that long, then writes everything \
         queued by then in one socket write (deliveries, events and the sender's own echo wait; \
         acks and replies do not). Each row against its twin: the same load on nodes without a \
         window, earlier in this run, on the same database.\n"
    );
    let _ = writeln!(
        w,
        "| run | clients / room | offered msg/s | window ms | p50 ms | p99 ms | lost | gateway \
         CPU-s | deliveries per gateway CPU-s | without the window (twin) | gateway CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (f, twin, ms) in pairs {
        let ratio = if twin.deliveries_per_server_cpu_s > 0.0 {
            format!(
                " (×{:.2})",
                f.deliveries_per_server_cpu_s / twin.deliveries_per_server_cpu_s
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "| {} | {} / {} | {} | {ms} | {:.2} | {:.2} | {} | {:.2} | {}{ratio} | `{}`: {} per \
             CPU-s, p50 {:.2} / p99 {:.2} ms | {:+.0}% |",
            f.label,
            n0(f.clients as f64),
            f.room_size,
            n0(f.rate_offered),
            f.latency_ms.p50,
            f.latency_ms.p99,
            f.lost,
            f.server_cpu_s,
            n0(f.deliveries_per_server_cpu_s),
            twin.label,
            n0(twin.deliveries_per_server_cpu_s),
            twin.latency_ms.p50,
            twin.latency_ms.p99,
            if twin.server_cpu_s > 0.0 {
                (f.server_cpu_s / twin.server_cpu_s - 1.0) * 100.0
            } else {
                0.0
            }
        );
    }
}

fn ramp_section(w: &mut String, r: &RampReport) {
    let _ = writeln!(
        w,
        "\n## Ramp ({})\n\nEach step is a fresh fanout (new users, rooms, connections). A step \
         holds when nothing is lost or duplicated, every send is answered, no client is dropped, \
         the generator keeps its schedule, and p99 ≤ {} ms.\n\n{}\n",
        r.label,
        r.max_p99_ms,
        r.summary()
    );
    let _ = writeln!(
        w,
        "| offered msg/s | held | sent/s | acked/s | delivered/s | lost | dup | p99 ms | \
         deliveries per gateway CPU-s | why not |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.steps {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            n0(s.rate),
            if s.held { "yes" } else { "no" },
            n0(s.sent_per_sec),
            n0(s.acked_per_sec),
            n0(s.delivered_per_sec),
            s.lost,
            s.duplicated,
            s.p99_ms,
            n0(s.deliveries_per_server_cpu_s),
            s.reason.clone().unwrap_or_default()
        );
    }
}

fn idle_section(w: &mut String, i: &IdleReport) {
    let _ = writeln!(
        w,
        "\n## Idle connections ({})\n\n{}\n",
        i.label,
        i.summary()
    );
    let _ = writeln!(
        w,
        "Each connection is a distinct session of one of {} users ({} rooms), opened from {} \
         loopback source address(es). The node's fd limit (20,000) caps one process below \
         20,000 sockets, so the 100,000-connection figure is an extrapolation from this \
         measurement, not a measurement. Setup (registration, rooms) took {:.1} s and is not \
         part of the connect rate. What an idle connection's memory is made of (a heap \
         profile), and the two patched dependencies that keep it small, is in \
         `vendor/README.md`.",
        n0(i.users as f64),
        n0(i.rooms as f64),
        i.sources,
        i.setup_s
    );
    let split: Vec<String> = i
        .connect_cpu
        .processes
        .iter()
        .map(|p| format!("{} {:.2} s", p.name, p.cpu_s))
        .collect();
    if !split.is_empty() {
        let _ = writeln!(
            w,
            "\nCPU during the {:.2} s connect phase: {}, load generator {:.2} s, whole machine \
             {:.2} s.",
            i.connect_s,
            split.join(", "),
            i.connect_cpu.bench_cpu_s,
            i.connect_cpu.machine_cpu_s
        );
    }
}

/// Shares of the profile's buckets, largest first.
fn bucket_shares(text: &str) -> Vec<(&'static str, f64)> {
    let lines = symbol_lines(text);
    let total: f64 = lines.iter().map(|l| l.0).sum();
    let mut buckets: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (pct, dso, sym) in &lines {
        *buckets.entry(bucket(sym, dso)).or_default() += pct;
    }
    let mut sorted: Vec<(&'static str, f64)> = buckets
        .into_iter()
        .map(|(k, v)| (k, v / total.max(1e-9) * 100.0))
        .collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    sorted
}

/// Postgres CPU per stored message against how many sends shared a commit, run by run: a
/// batch call has a fixed cost (the function call, its plans, the commit and WAL flush), so
/// the database's cost per message is set mostly by the batch size the load allows.
fn commit_sharing(w: &mut String, runs: &[FanoutReport]) {
    let parts: Vec<String> = runs
        .iter()
        .filter_map(|f| {
            let per_commit = metric_mean(&f.metrics, "confab_store_batch_size")?;
            let pg = f.cpu.cpu_of("postgres");
            (pg > 0.0 && f.sent > 0).then(|| {
                format!(
                    "`{}` {:.1} sends per commit, {:.0} µs",
                    f.label,
                    per_commit,
                    pg / f.sent as f64 * 1e6
                )
            })
        })
        .collect();
    if parts.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\nPostgres CPU per stored message against how many sends shared one group commit \
         (`confab_store_batch_size`): {}. A batch call has a fixed cost (the function call, its \
         plans, the commit and its WAL flush) that the sends of one batch share.",
        parts.join("; ")
    );
}

/// Machine CPU-µs per unit of work (a delivery, a connect, a stored message) over a window,
/// and the µs of each part: the gateway nodes, Postgres, Redis, the load generator, the rest.
fn per_unit(cpu: &CpuWindow, units: f64) -> Option<(f64, [(&'static str, f64); 5])> {
    if units <= 0.0 || cpu.machine_cpu_s <= 0.0 {
        return None;
    }
    let us = |cpu_s: f64| cpu_s / units * 1e6;
    let nodes = cpu.cpu_of("node");
    let pg = cpu.cpu_of("postgres");
    let redis = cpu.cpu_of("redis");
    let bench = cpu.bench_cpu_s;
    let other = (cpu.machine_cpu_s - nodes - pg - redis - bench).max(0.0);
    Some((
        us(cpu.machine_cpu_s),
        [
            ("the gateway nodes", us(nodes)),
            ("Postgres", us(pg)),
            ("Redis", us(redis)),
            ("the load generator", us(bench)),
            ("everything else", us(other)),
        ],
    ))
}

/// CPUs the machine offers (the report is written on the machine that ran the benchmark).
fn machine_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A few sentences computed from the measurements: who used the CPU at ~90k deliveries/s,
/// and what the gateway's own samples were spent on.
fn time_summary(w: &mut String, r: &Results, inputs: &Inputs) {
    let Some(f) = closest(&r.fanout, 90_000.0) else {
        return;
    };
    // Per message: 1 send, 1 stored row, room size − 1 deliveries.
    if let Some((total, parts)) = per_unit(&f.cpu, f.sent.max(1) as f64) {
        let pct = |i: usize| parts[i].1 / total * 100.0;
        let cpus = machine_cpus();
        let _ = writeln!(
            w,
            "In `{}` ({} msgs/s offered, {} deliveries/s) the machine was busy for {:.1} of the \
             window's {:.0} CPU-seconds ({cpus:.0} CPUs × {:.0} s): the two gateway nodes used \
             {:.0}%, the bench database's Postgres backends {:.0}%, Redis {:.0}%, the load \
             generator {:.0}%, everything else {:.0}%. Per message (1 send, 1 stored row, {} \
             deliveries) that is {:.0} µs of gateway CPU and {:.0} µs of Postgres CPU.",
            f.label,
            n0(f.rate_offered),
            n0(f.delivered_per_sec),
            f.cpu.machine_cpu_s,
            cpus * f.duration_s,
            f.duration_s,
            pct(0),
            pct(1),
            pct(2),
            pct(3),
            pct(4),
            f.room_size - 1,
            parts[0].1,
            parts[1].1,
        );
    }
    commit_sharing(w, &r.fanout);
    for (label, text) in &inputs.profiles {
        let shares = bucket_shares(text);
        if shares.is_empty() {
            continue;
        }
        let top: Vec<String> = shares
            .iter()
            .take(4)
            .map(|(name, p)| format!("{name} {p:.0}%"))
            .collect();
        let _ = writeln!(
            w,
            "\nInside the gateway during `{label}`, the sampled CPU went to: {}.",
            top.join(", ")
        );
    }
    let _ = writeln!(w);
}

fn cpu_split(w: &mut String, runs: &[FanoutReport]) {
    let _ = writeln!(
        w,
        "CPU seconds used during each measured window, from `/proc/PID/stat` (utime + stime). \
         `postgres` counts only the backends serving the bench database (the shared WAL writer \
         and checkpointer are left out); `redis` is the whole shared server. \"Other\" is \
         everything else that ran on the machine, including other work sharing it (the \
         kernel's softirq work is charged to whichever process was running).\n"
    );
    let mut names: Vec<String> = Vec::new();
    for f in runs {
        for p in &f.cpu.processes {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    let _ = writeln!(
        w,
        "| run | window s | {} | load generator | other | machine busy (all CPUs) |\n|---|---|{}---|---|---|",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for f in runs {
        let by: BTreeMap<&str, f64> = f
            .cpu
            .processes
            .iter()
            .map(|p| (p.name.as_str(), p.cpu_s))
            .collect();
        let known: f64 = f.cpu.processes.iter().map(|p| p.cpu_s).sum::<f64>() + f.cpu.bench_cpu_s;
        let cols: Vec<String> = names
            .iter()
            .map(|n| by.get(n.as_str()).map_or("-".into(), |v| format!("{v:.2}")))
            .collect();
        let _ = writeln!(
            w,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} |",
            f.label,
            f.duration_s,
            cols.join(" | "),
            f.cpu.bench_cpu_s,
            (f.cpu.machine_cpu_s - known).max(0.0),
            f.cpu.machine_cpu_s
        );
    }
}

/// Buckets for kernel symbols of the gateway, first match wins.
const KERNEL_BUCKETS: &[(&str, &[&str])] = &[
    (
        "kernel: scheduling, wakeups, futex, epoll, syscall entry",
        &[
            "task_switch",
            "schedule",
            "_raw_spin",
            "wake",
            "futex",
            "epoll",
            "ep_",
            "entry_SYSCALL",
            "syscall",
            "pick_next",
            "enqueue",
            "dequeue",
            "hrtimer",
            "native_",
            "irqentry",
            "exit_to_user",
        ],
    ),
    (
        "kernel: TCP/loopback networking",
        &[
            "tcp",
            "sock",
            "skb",
            "inet",
            "__ip",
            "ip_rcv",
            "ip_finish",
            "ip_output",
            "ip_local",
            "ip_queue",
            "loopback",
            "net_rx",
            "napi",
            "netif",
            "dev_queue",
            "dev_hard",
            "sendto",
            "recvfrom",
            "sendmsg",
            "recvmsg",
            "softirq",
        ],
    ),
    (
        "kernel: memory (copies, slab, pages)",
        &[
            "copy", "memcpy", "memset", "kmem", "alloc", "kfree", "page", "slab", "clear_",
        ],
    ),
];

/// Buckets for user-space symbols of the gateway, first match wins.
const USER_BUCKETS: &[(&str, &[&str])] = &[
    (
        "allocator and memcpy",
        &[
            "malloc", "free", "realloc", "alloc::", "memcpy", "memmove", "memset", "_int_",
            "_rjem_", "je_",
        ],
    ),
    ("JSON (serde_json)", &["serde_json", "serde::", "serde_"]),
    (
        "Postgres client (sqlx, sea-orm)",
        &["sqlx", "sea_orm", "sea_query", "postgres"],
    ),
    ("Redis client", &["redis", "deadpool"]),
    ("tokio runtime", &["tokio"]),
    (
        "actix HTTP/WebSocket",
        &["actix", "h1::", "http::", "bytes::", "bytestring"],
    ),
    ("confab (hub, session, chat)", &["confab"]),
    ("hashing and crypto", &["sha2", "argon2", "blake2"]),
];

fn bucket(symbol: &str, dso: &str) -> &'static str {
    let kernel = dso.contains("kernel");
    let list = if kernel { KERNEL_BUCKETS } else { USER_BUCKETS };
    for (name, pats) in list {
        if pats.iter().any(|p| symbol.contains(p)) {
            return name;
        }
    }
    if kernel {
        "kernel: other"
    } else {
        "other user space"
    }
}

/// Parse `perf report --sort dso,sym` lines: `  12.34%  dso  [k] symbol`.
fn symbol_lines(text: &str) -> Vec<(f64, String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let rest = rest.trim();
            let marker = ["[k] ", "[.] ", "[u] ", "[g] "]
                .iter()
                .filter_map(|m| rest.find(m))
                .min();
            let (dso, sym) = match marker {
                Some(i) => (rest[..i].trim().to_owned(), rest[i + 4..].trim().to_owned()),
                None => (String::new(), rest.to_owned()),
            };
            Some((pct, dso, sym))
        })
        .collect()
}

fn profile(w: &mut String, inputs: &Inputs) {
    let _ = writeln!(w, "\n### Profile\n\n{}", inputs.profile_method.trim());
    for (label, text) in &inputs.profiles {
        profile_one(w, label, text);
    }
}

fn profile_one(w: &mut String, label: &str, text: &str) {
    let lines = symbol_lines(text);
    if lines.is_empty() {
        let _ = writeln!(w, "\nRun `{label}`: no samples were recorded.");
        return;
    }
    let _ = writeln!(
        w,
        "\n#### During `{label}`\n\nThe gateway processes' samples grouped by what the symbol \
         belongs to (share of the samples above the report's cut-off):\n\n| where | share |\n\
         |---|---|"
    );
    for (name, pct) in bucket_shares(text) {
        let _ = writeln!(w, "| {name} | {pct:.1}% |");
    }
    let _ = writeln!(w, "\nTop symbols:\n\n```");
    for (pct, dso, sym) in lines.iter().take(25) {
        let sym: String = sym.chars().take(140).collect();
        let _ = writeln!(w, "{pct:6.2}%  {dso:<18} {sym}");
    }
    let _ = writeln!(w, "```");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(n0(1234567.4), "1,234,567");
        assert_eq!(n0(999.0), "999");
        assert_eq!(n0(-4500.0), "-4,500");
    }

    #[test]
    fn perf_lines_parse_and_bucket() {
        let t = "# comment\n    12.50%  [kernel.kallsyms]  [k] tcp_sendmsg_locked\n     \
                 3.00%  confab              [.] serde_json::ser::format_escaped_str\n";
        let l = symbol_lines(t);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].1, "[kernel.kallsyms]");
        assert_eq!(l[0].2, "tcp_sendmsg_locked");
        assert_eq!(bucket(&l[0].2, &l[0].1), "kernel: TCP/loopback networking");
        assert_eq!(bucket(&l[1].2, &l[1].1), "JSON (serde_json)");
        // The gateway links jemalloc statically: its symbols are in the confab binary.
        for sym in [
            "_rjem_je_tcache_bin_flush_small",
            "_rjem_sdallocx",
            "_rjem_malloc",
        ] {
            assert_eq!(bucket(sym, "confab"), "allocator and memcpy", "{sym}");
        }
        let k = "[kernel.kallsyms]";
        for sym in ["finish_task_switch.isra.0", "_raw_spin_unlock_irqrestore"] {
            assert!(bucket(sym, k).starts_with("kernel: scheduling"), "{sym}");
        }
        assert_eq!(
            bucket("__inet_lookup_established", k),
            "kernel: TCP/loopback networking"
        );
        assert_eq!(
            bucket("_copy_to_iter", k),
            "kernel: memory (copies, slab, pages)"
        );
    }

    #[test]
    fn the_latency_split_averages_histograms_over_both_nodes() {
        let node = |sum: f64, count: f64, gaps: f64, commits: f64, commit_s: f64| {
            let mut m = MetricsDelta::default();
            m.counters
                .insert("confab_store_latency_seconds_sum".into(), sum);
            m.counters
                .insert("confab_store_latency_seconds_count".into(), count);
            m.counters
                .insert("confab_gap_repairs_total{scope=\"node\"}".into(), gaps);
            m.counters
                .insert("confab_store_batch_size_sum".into(), count);
            m.counters
                .insert("confab_store_batch_size_count".into(), commits);
            m.counters
                .insert("confab_store_commit_seconds_sum".into(), commit_s);
            m.counters
                .insert("confab_store_commit_seconds_count".into(), commits);
            m
        };
        // 3 s over 1,000 sends and 1 s over 1,000: 2 ms on average, not the mean of means;
        // 2,000 sends in 500 commits: 4 per commit (the mean of the nodes' means would say 6.25);
        // 0.1 s in 100 commits and 0.1 s in 400: 0.4 ms per commit (not 0.625).
        let both = [
            node(3.0, 1000.0, 7.0, 100.0, 0.1),
            node(1.0, 1000.0, 5.0, 400.0, 0.1),
        ];
        let mean = metric_mean_ms(&both, "confab_store_latency_seconds");
        assert!(mean.is_some_and(|v| (v - 2.0).abs() < 1e-9), "{mean:?}");
        assert_eq!(metric_mean_ms(&both, "confab_fanout_latency_seconds"), None);
        let run = FanoutReport {
            label: "fanout-x".into(),
            metrics: both.to_vec(),
            ..Default::default()
        };
        let mut md = String::new();
        latency_split(&mut md, &[run]);
        assert!(
            md.contains("| fanout-x | 0.0 / 0.0 | 2.0 | 0.4 | 4.0 | — | 0.0 / 0.0 | 12 |"),
            "{md}"
        );
        // Runs without scrapes leave the section out.
        let mut none = String::new();
        latency_split(&mut none, &[FanoutReport::default()]);
        assert!(none.is_empty());
    }

    #[test]
    fn the_efficiency_row_takes_the_best_loss_free_run_ramp_steps_that_held_included() {
        let run = |label: &str, eff: f64, p99: f64, lost: u64| {
            let mut f = FanoutReport {
                label: label.into(),
                nodes: 2,
                room_size: 10,
                rate_offered: 1000.0,
                sent_per_sec: 1000.0,
                delivered_per_sec: 9000.0,
                expected_deliveries: 1000,
                lost,
                deliveries_per_server_cpu_s: eff,
                ..FanoutReport::default()
            };
            f.latency_ms.p99 = p99;
            f
        };
        let row = |results: &Results| {
            render(results, &Inputs::default())
                .lines()
                .find(|l| l.starts_with("| fan-out efficiency (rooms of 10"))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let mut results = Results {
            fanout: vec![
                run("fanout-10000", 217_364.0, 9.0, 0),
                // Profiled runs never count, however efficient.
                run("profile-10000", 900_000.0, 50.0, 0),
            ],
            ramp_steps: vec![
                run("ramp-38443", 454_143.0, 317.0, 0),
                // Past the ramp's p99 bound, or lossy: not a step that held.
                run("ramp-43249", 509_293.0, 968.0, 0),
                run("ramp-57665", 600_000.0, 400.0, 1),
            ],
            ..Results::default()
        };
        let best = row(&results);
        assert!(
            best.contains("454,143 (best loss-free run, `ramp-38443`: a ramp step that held"),
            "{best}"
        );
        assert!(best.ends_with("**missed** |"), "{best}");
        results.ramp_steps.clear();
        let fixed = row(&results);
        assert!(
            fixed.contains("217,364 (best loss-free run, `fanout-10000`, "),
            "{fixed}"
        );
    }

    #[test]
    fn flush_window_runs_are_set_against_their_twins_and_kept_out_of_the_90k_rows() {
        assert_eq!(
            window_ms("fanout-10000-window20"),
            Some(("fanout-10000", 20))
        );
        assert_eq!(
            window_ms("rooms100-1000-window5"),
            Some(("rooms100-1000", 5))
        );
        assert_eq!(window_ms("fanout-10000"), None);
        assert_eq!(window_ms("fanout-10000-windowy"), None);
        let run = |label: &str, room_size: usize, eff: f64, cpu: f64, p99: f64| {
            let mut f = FanoutReport {
                label: label.into(),
                nodes: 2,
                clients: 1000,
                room_size,
                rate_offered: 10_000.0,
                sent_per_sec: 10_000.0,
                delivered_per_sec: 90_000.0,
                expected_deliveries: 1000,
                deliveries_per_server_cpu_s: eff,
                server_cpu_s: cpu,
                ..FanoutReport::default()
            };
            f.latency_ms.p99 = p99;
            f
        };
        // The window run first: of runs equally close to 90k, the first would be taken; and it
        // delivered the most, so the ceiling would take it.
        let mut windowed = run("fanout-10000-window20", 10, 230_000.0, 5.2, 31.0);
        windowed.delivered_per_sec = 90_500.0;
        let results = Results {
            fanout: vec![
                windowed,
                run("fanout-10000", 10, 200_000.0, 6.0, 9.0),
                run("rooms100-1000", 100, 130_000.0, 11.5, 9.0),
                run("rooms100-1000-window20", 100, 260_000.0, 5.75, 30.0),
            ],
            ..Results::default()
        };
        let md = render(&results, &Inputs::default());
        let line = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        // The ~90k rows stay on the run without a window, even though the window run has the
        // same offered rate; the efficiency row takes the best and says it had a window.
        assert!(
            line("| fan-out efficiency at ~90k").contains("200,000 (`fanout-10000`)"),
            "{md}"
        );
        assert!(
            line("| p99 send→deliver across nodes").contains("p99 9.00 ms"),
            "{md}"
        );
        assert!(
            line("| loss-free ceiling").contains("(`fanout-10000`: the most"),
            "{md}"
        );
        assert!(
            line("| fan-out efficiency (rooms of 10").contains(
                "230,000 (best loss-free run, `fanout-10000-window20`: a 20 ms flush window"
            ),
            "{md}"
        );
        // Each window run against its twin: ratio of efficiency and change of gateway CPU (the
        // section's row: the run's label, then its twin's).
        let last = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start) && l.contains("per CPU-s, p50"))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let rooms = last("| rooms100-1000-window20 |");
        assert!(
            rooms.contains("| 260,000 (×2.00) | `rooms100-1000`: 130,000 per CPU-s")
                && rooms.ends_with("| -50% |"),
            "{rooms}"
        );
        assert!(
            last("| fanout-10000-window20 |").contains("(×1.15)"),
            "{md}"
        );
        // Without twins, no section.
        let alone = Results {
            fanout: vec![run("fanout-10000-window20", 10, 230_000.0, 5.2, 31.0)],
            ..Results::default()
        };
        assert!(!render(&alone, &Inputs::default()).contains("## Flush window"));
    }

    #[test]
    fn embedded_runs_get_their_own_section_and_never_count_for_the_cluster() {
        let fanout = FanoutReport {
            scenario: "fanout".into(),
            label: "embedded-10000".into(),
            nodes: 1,
            clients: 1000,
            room_size: 10,
            rate_offered: 10_000.0,
            delivered_per_sec: 90_000.0,
            deliveries_per_server_cpu_s: 900_000.0,
            ..FanoutReport::default()
        };
        let idle = crate::idle::IdleReport {
            scenario: "idle".into(),
            label: "embedded-idle".into(),
            connections: 19_000,
            ..Default::default()
        };
        let history = HistoryReport {
            scenario: "history".into(),
            label: "embedded-history".into(),
            messages: 1_000_000,
            page: 20,
            requests: 2000,
            all_ms: crate::stats::LatencyMs {
                p99: 1.25,
                ..crate::stats::LatencyMs::default()
            },
            ..HistoryReport::default()
        };
        let lines = [
            serde_json::to_string(&fanout).unwrap_or_default(),
            serde_json::to_string(&idle).unwrap_or_default(),
            serde_json::to_string(&history).unwrap_or_default(),
        ]
        .join("\n");
        let results = Results::parse(&lines);
        assert_eq!(
            (
                results.embedded_fanout.len(),
                results.embedded_idle.len(),
                results.embedded_history.len()
            ),
            (1, 1, 1)
        );
        assert!(results.fanout.is_empty() && results.idle.is_empty() && results.history.is_empty());
        let md = render(&results, &Inputs::default());
        let section = md
            .split("## The embedded single node")
            .nth(1)
            .unwrap_or_default();
        assert!(section.contains("| embedded-10000 |"), "{md}");
        assert!(section.contains("idle[embedded-idle]"), "{md}");
        assert!(section.contains("history[embedded-history]"), "{md}");
        // The cluster's figures take nothing from it: an embedded run is no evidence for them.
        let figures = md.split("## Fan-out runs").next().unwrap_or_default();
        assert!(
            figures.contains("| p99 send→deliver at 90k deliveries/s | ≤ 5 ms | not measured"),
            "{figures}"
        );
        assert!(!figures.contains("900,000"), "{figures}");
        assert!(section.contains("900,000"), "{section}");
        assert!(
            figures.contains("| history page of 20 | ≤ 5 ms p99 | not measured"),
            "{figures}"
        );
    }

    #[test]
    fn a_report_without_results_says_not_measured() {
        let md = render(&Results::default(), &Inputs::default());
        assert!(md.contains("not measured"));
        assert!(!md.contains("**met**"));
    }

    #[test]
    fn the_crash_row_is_met_only_when_clean_and_within_30_s() {
        let row = |c: CrashReport| {
            let results = Results {
                crash: vec![c],
                ..Results::default()
            };
            let md = render(&results, &Inputs::default());
            md.lines()
                .find(|l| l.starts_with("| presence of a SIGKILLed node's users cleared"))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let ok = CrashReport {
            scenario: "crash".into(),
            label: "crash".into(),
            victims: 500,
            watchers: 500,
            pairs: 2500,
            cleared: 2500,
            time_to_all_offline_s: 21.0,
            ..CrashReport::default()
        };
        let met = row(ok.clone());
        assert!(
            met.contains("500 users offline at all 500 watchers 21.0 s"),
            "{met}"
        );
        assert!(met.ends_with("**met** |"), "{met}");
        let slow = row(CrashReport {
            time_to_all_offline_s: 31.0,
            ..ok.clone()
        });
        assert!(slow.ends_with("**missed** |"), "{slow}");
        let ghost = row(CrashReport { ghosts: 1, ..ok });
        assert!(ghost.ends_with("**missed** |"), "{ghost}");
    }
}
