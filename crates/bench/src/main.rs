//! The `confab-bench` command: parse arguments, run one scenario, print one JSON line per result
//! on stdout and a one-line human summary on stderr.

use clap::{Args, Parser, Subcommand};
use confab_bench::crash::{self, CrashConfig};
use confab_bench::fanout::{self, FanoutConfig};
use confab_bench::history::{self, HistoryConfig};
use confab_bench::idle::{self, IdleConfig};
use confab_bench::procstat::Watched;
use confab_bench::ramp::{self, RampConfig};
use confab_bench::report::{self, Inputs, Results};
use confab_bench::storm::{self, StormConfig};
use confab_bench::target::Node;
use confab_bench::{secs, BenchError, Result};
use serde::Serialize;
use std::path::PathBuf;

/// jemalloc instead of glibc's malloc, as the nodes use: the generator shares the machine with
/// the nodes it measures, so every CPU-second it spends is one the nodes do not get.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load tester for Confab gateway nodes (loopback only).
#[derive(Parser)]
#[command(name = "confab-bench", version, about)]
struct Cli {
    /// Worker threads of the load generator's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open-loop fan-out into rooms spread over the nodes.
    Fanout(FanoutArgs),
    /// Raise the rate until p99 or loss passes a bound.
    Ramp(RampArgs),
    /// Many idle authenticated connections: RSS per connection and connect rate.
    Idle(IdleArgs),
    /// Everyone reconnects at once and resumes.
    Storm(StormArgs),
    /// SIGKILL a node: how long until its users show offline on the others.
    Crash(CrashArgs),
    /// History page latency on a thread with very many messages.
    History(HistoryArgs),
    /// Write BENCHMARKS.md from the JSON lines of a run.
    Report(ReportArgs),
    /// How fast this machine is (one core's arithmetic, loopback TCP round trips): a yardstick
    /// for comparing runs made on different days.
    Calibrate,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// Node base URLs (`http://127.0.0.1:PORT`), comma-separated or repeated.
    #[arg(long, required = true, num_args = 1..)]
    nodes: Vec<String>,
    /// Clients (one user and WebSocket each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Offered messages per second over all clients.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Warm-up seconds (sent, counted for loss, not for figures).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// After sending stops, wait for outstanding acks and deliveries until this many seconds
    /// pass with none arriving ...
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// ... or this many seconds in all.
    #[arg(long, default_value_t = 60.0)]
    drain_max: f64,
    /// Body bytes per message.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Gateway node PIDs (CPU and RSS), in node order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// Other processes to measure as `name=PID` (summed over their process tree).
    #[arg(long, value_delimiter = ',')]
    aux: Vec<String>,
    /// `/metrics` URLs (or node base URLs) to scrape before and after the window.
    #[arg(long, num_args = 1..)]
    metrics: Vec<String>,
    /// Setup HTTP requests in flight.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// WebSocket handshakes in flight.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// A name for the run.
    #[arg(long, default_value = "fanout")]
    label: String,
}

#[derive(Args)]
struct RampArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// First offered rate, messages/s.
    #[arg(long, default_value_t = 5000.0)]
    start_rate: f64,
    /// Rate multiplier per step.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Highest rate offered.
    #[arg(long, default_value_t = 200_000.0)]
    max_rate: f64,
    /// Most steps.
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Bisection steps after the first failure.
    #[arg(long, default_value_t = 0)]
    refine: usize,
    /// A step with a higher send→deliver p99 (ms) did not hold.
    #[arg(long, default_value_t = 500.0)]
    max_p99_ms: f64,
}

#[derive(Args)]
struct IdleArgs {
    /// The node's base URL.
    #[arg(long)]
    node: String,
    /// The node's PID (for RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// Register the users through this node instead (keeps setup garbage out of the measured
    /// node's heap).
    #[arg(long)]
    setup_node: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Distinct users (0: one per connection).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Users per room (0: no rooms).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Most connections per 127.0.0.x source address.
    #[arg(long, default_value_t = confab_bench::conn::DEFAULT_PER_SOURCE)]
    per_source: usize,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Setup HTTP requests in flight.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Seconds to hold the connections before measuring.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// `/metrics` URLs to scrape.
    #[arg(long, num_args = 1..)]
    metrics: Vec<String>,
    /// Other processes to measure while connecting, as `name=PID` (summed over their tree).
    #[arg(long, value_delimiter = ',')]
    aux: Vec<String>,
    /// A name for the run.
    #[arg(long, default_value = "idle")]
    label: String,
}

#[derive(Args)]
struct StormArgs {
    /// Node base URLs.
    #[arg(long, required = true, num_args = 1..)]
    nodes: Vec<String>,
    /// Users in total (one sender per room stays connected; the rest storm).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Messages per room before the storm.
    #[arg(long, default_value_t = 5)]
    before: usize,
    /// Messages per room stored while the clients are away.
    #[arg(long, default_value_t = 5)]
    while_away: usize,
    /// Messages per room sent live during the reconnect.
    #[arg(long, default_value_t = 5)]
    live: usize,
    /// Reconnect to the same node instead of the next one.
    #[arg(long)]
    same_node: bool,
    /// Bound on the reconnection, seconds.
    #[arg(long, default_value_t = 60.0)]
    deadline: f64,
    /// Setup HTTP requests in flight.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Handshakes in flight for the first connect.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// A name for the run.
    #[arg(long, default_value = "storm")]
    label: String,
}

#[derive(Args)]
struct CrashArgs {
    /// Node base URLs.
    #[arg(long, required = true, num_args = 1..)]
    nodes: Vec<String>,
    /// Which node to kill (0-based index into --nodes).
    #[arg(long, default_value_t = 1)]
    victim: usize,
    /// The process id of that node (it must be a process named `confab`).
    #[arg(long)]
    victim_pid: u32,
    /// Users in total.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Members per room (at least one per node).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// How long to wait for every offline event after the kill, seconds.
    #[arg(long, default_value_t = 60.0)]
    deadline: f64,
    /// How long the victims may take to show as online before the kill, seconds.
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
    /// Setup HTTP requests in flight.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// A name for the run.
    #[arg(long, default_value = "crash")]
    label: String,
}

#[derive(Args)]
struct HistoryArgs {
    /// The node's base URL.
    #[arg(long)]
    node: String,
    /// The node's Postgres database URL (loopback only).
    #[arg(long)]
    db_url: String,
    /// Messages in the thread.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Pages to fetch.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Messages per page.
    #[arg(long, default_value_t = 20)]
    page: u64,
    /// A name for the run.
    #[arg(long, default_value = "history")]
    label: String,
}

#[derive(Args)]
struct ReportArgs {
    /// JSON lines written by the scenarios.
    #[arg(long)]
    results: PathBuf,
    /// Markdown describing the machine.
    #[arg(long)]
    machine: Option<PathBuf>,
    /// The exact commands run.
    #[arg(long)]
    commands: Option<PathBuf>,
    /// How the profile was taken.
    #[arg(long)]
    profile_method: Option<PathBuf>,
    /// Profiles of the gateway processes as `LABEL=FILE` (`perf report --sort dso,sym`
    /// output), repeated.
    #[arg(long)]
    profile: Vec<String>,
    /// The same profiles by shared object as `LABEL=FILE` (`perf report --sort dso`), repeated.
    #[arg(long)]
    profile_dso: Vec<String>,
    /// System-call and context-switch counts of the gateway processes over a profiled run's
    /// sampling window as `LABEL=FILE` (`perf stat -x,` output), repeated.
    #[arg(long)]
    counts: Vec<String>,
    /// How long each `--counts` window lasted, seconds.
    #[arg(long)]
    counts_window_s: Option<f64>,
    /// Where to write the markdown.
    #[arg(long)]
    out: PathBuf,
}

fn fanout_config(a: &FanoutArgs) -> Result<FanoutConfig> {
    let mut watched = Vec::new();
    for (i, p) in a.pids.iter().filter(|p| !p.is_empty()).enumerate() {
        let mut w = Watched::parse(p, false)?;
        if !p.contains('=') {
            w.name = format!("node{i}");
        }
        watched.push(w);
    }
    for p in a.aux.iter().filter(|p| !p.is_empty()) {
        watched.push(Watched::parse(p, true)?);
    }
    Ok(FanoutConfig {
        nodes: Node::parse_all(&a.nodes)?,
        clients: a.clients,
        room_size: a.room_size,
        rate: a.rate,
        warmup: secs("warmup", a.warmup)?,
        duration: secs("duration", a.duration)?,
        drain: secs("drain", a.drain)?,
        drain_max: secs("drain_max", a.drain_max)?,
        body_bytes: a.body_bytes,
        watched,
        metrics: a.metrics.clone(),
        setup_concurrency: a.setup_concurrency,
        connect_concurrency: a.connect_concurrency,
        label: a.label.clone(),
    })
}

fn emit<T: Serialize>(value: &T, summary: String) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
    eprintln!("{summary}");
}

fn read_opt(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Fanout(a) => {
            let r = fanout::run(&fanout_config(&a)?).await?;
            emit(&r, r.summary());
        }
        Cmd::Ramp(a) => {
            let cfg = RampConfig {
                base: fanout_config(&a.fanout)?,
                start_rate: a.start_rate,
                factor: a.factor,
                max_rate: a.max_rate,
                max_steps: a.max_steps,
                refine: a.refine,
                max_p99_ms: a.max_p99_ms,
            };
            let r = ramp::run(&cfg, |step| emit(step, step.summary())).await?;
            emit(&r, r.summary());
        }
        Cmd::Idle(a) => {
            let cfg = IdleConfig {
                node: Node::parse(&a.node)?,
                setup_node: a.setup_node.as_deref().map(Node::parse).transpose()?,
                pid: a.pid,
                connections: a.connections,
                users: if a.users == 0 { a.connections } else { a.users },
                room_size: a.room_size,
                per_source: a.per_source,
                concurrency: a.concurrency,
                setup_concurrency: a.setup_concurrency,
                hold: secs("hold", a.hold)?,
                metrics: a.metrics,
                aux: a
                    .aux
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| Watched::parse(p, true))
                    .collect::<Result<Vec<_>>>()?,
                label: a.label,
            };
            let r = idle::run(&cfg).await?;
            emit(&r, r.summary());
        }
        Cmd::Storm(a) => {
            let cfg = StormConfig {
                nodes: Node::parse_all(&a.nodes)?,
                clients: a.clients,
                room_size: a.room_size,
                before: a.before,
                while_away: a.while_away,
                live: a.live,
                move_node: !a.same_node,
                deadline: secs("deadline", a.deadline)?,
                setup_concurrency: a.setup_concurrency,
                connect_concurrency: a.connect_concurrency,
                label: a.label,
            };
            let r = storm::run(&cfg).await?;
            emit(&r, r.summary());
        }
        Cmd::Crash(a) => {
            let cfg = CrashConfig {
                nodes: Node::parse_all(&a.nodes)?,
                victim: a.victim,
                victim_pid: a.victim_pid,
                clients: a.clients,
                room_size: a.room_size,
                deadline: secs("deadline", a.deadline)?,
                settle: secs("settle", a.settle)?,
                setup_concurrency: a.setup_concurrency,
                connect_concurrency: a.connect_concurrency,
                label: a.label,
            };
            let r = crash::run(&cfg).await?;
            emit(&r, r.summary());
        }
        Cmd::History(a) => {
            let cfg = HistoryConfig {
                node: Node::parse(&a.node)?,
                db_url: a.db_url,
                messages: a.messages,
                requests: a.requests,
                page: a.page,
                label: a.label,
            };
            let r = history::run(&cfg).await?;
            emit(&r, r.summary());
        }
        Cmd::Calibrate => {
            let r = confab_bench::calibrate::run().await?;
            emit(&r, r.summary());
        }
        Cmd::Report(a) => {
            let text = std::fs::read_to_string(&a.results)?;
            let results = Results::parse(&text);
            let inputs = Inputs {
                machine: read_opt(&a.machine),
                commands: read_opt(&a.commands),
                profiles: labelled_files(&a.profile),
                profile_method: read_opt(&a.profile_method),
                profile_dso: labelled_files(&a.profile_dso),
                counts: labelled_files(&a.counts),
                counts_window_s: a.counts_window_s,
            };
            std::fs::write(&a.out, report::render(&results, &inputs))?;
            eprintln!("wrote {}", a.out.display());
        }
    }
    Ok(())
}

/// `LABEL=FILE` arguments read into (label, the file's text); an unreadable file reads as
/// empty (its part of the report is then left out).
fn labelled_files(args: &[String]) -> Vec<(String, String)> {
    args.iter()
        .filter_map(|p| p.split_once('='))
        .map(|(label, file)| {
            (
                label.to_owned(),
                std::fs::read_to_string(file).unwrap_or_default(),
            )
        })
        .collect()
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.clamp(1, 64))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab-bench: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        eprintln!("confab-bench: {e}");
        let code = match e {
            BenchError::NotLoopback(_) | BenchError::Invalid(_) => 2,
            _ => 1,
        };
        std::process::exit(code);
    }
}
