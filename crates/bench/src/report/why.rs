//! For each target the run missed: why, from this run's own measurements, and what would reach
//! it. Issue 7 asks for this ("where a figure cannot be reached, show the profile that says why
//! and what would reach it"); computed here rather than written by hand so that it follows the
//! figures of whichever machine ran `make bench`, and says nothing it did not measure.
//!
//! Inputs, all from the same run: the fan-out runs' CPU split (`/proc`), the nodes' kernel share
//! (`perf report --sort dso` of a profiled run) and their system-call counts over the same
//! window (`perf stat`), and the ramp's steps.

use super::{
    closest, counts_unwindowed, machine_cpus, metric_mean_ms, n0, per_unit, window_pairs, Inputs,
    Results,
};
use crate::fanout::FanoutReport;
use crate::procstat::CpuWindow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Deliveries per gateway CPU-second the efficiency target asks for.
const EFFICIENCY_TARGET: f64 = 1_000_000.0;
/// The p99 target at ~90k deliveries/s, in ms.
const P99_TARGET_MS: f64 = 5.0;
/// The loss-free ceiling the target asks for, deliveries/s.
const CEILING_TARGET: f64 = 450_000.0;
/// Authenticated connects per second per node.
const CONNECT_TARGET: f64 = 10_000.0;
/// Durably stored messages per second.
const STORE_TARGET: f64 = 30_000.0;

/// Share (0-100) of a `perf report --sort dso` listing that fell in the kernel; `None` when the
/// listing has no percentage lines.
pub fn kernel_share(dso_report: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut kernel = 0.0;
    for line in dso_report.lines() {
        let line = line.trim();
        let Some((pct, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        total += pct;
        if rest.contains("kernel") {
            kernel += pct;
        }
    }
    (total > 0.0).then(|| kernel / total * 100.0)
}

/// Event → count from `perf stat -x,` output (`value,unit,event,…`); lines that are not
/// counts (comments, `<not counted>`) are skipped.
pub fn perf_counts(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(',');
            let value = f.next()?.trim().parse::<f64>().ok()?;
            let event = f.nth(1)?.trim();
            (!event.is_empty()).then(|| (event.to_owned(), value))
        })
        .collect()
}

/// A count of the `perf stat` listing by the event's name without its tracepoint group
/// (`syscalls:sys_enter_sendto` answers `sys_enter_sendto`).
fn count(counts: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    counts
        .iter()
        .find(|(k, _)| k.as_str() == name || k.rsplit(':').next() == Some(name))
        .map(|(_, v)| *v)
}

/// The parts of [`per_unit`] that were measured, as text.
fn split_text(parts: &[(&'static str, f64); 5]) -> String {
    parts
        .iter()
        .filter(|(_, us)| *us > 0.0)
        .map(|(name, v)| format!("{name} {}", us(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Microseconds as text: two decimals below 100, none above (336 µs, not 336.41).
fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// How busy the machine was over a window, in % of all its CPUs.
fn busy_pct(cpu: &CpuWindow, secs: f64) -> f64 {
    cpu.machine_cpu_s / (machine_cpus() * secs.max(1e-9)) * 100.0
}

/// The sentence that ends each rate target's paragraph: at the measured CPU per unit, how many
/// CPUs the target rate needs, and how much cheaper a unit would have to be.
fn rate_needs(w: &mut String, what: &str, target: f64, total_us: f64, generator_us: f64) {
    let cpus = machine_cpus();
    let needed = target * total_us / 1e6;
    if needed <= cpus {
        let _ = writeln!(
            w,
            " At that cost {} {what} need {needed:.2} of the {cpus:.0} CPUs: the CPU would \
             allow it; the limit was latency or queueing, not CPU.",
            n0(target)
        );
        return;
    }
    let without_generator = target * (total_us - generator_us) / 1e6;
    let _ = writeln!(
        w,
        " At that cost {} {what} need {needed:.2} CPUs of the {cpus:.0} there are. **What would \
         reach it**: {:.0}% less machine CPU per unit (≤ {} µs). The load generator's {} µs \
         is part of it: on cores of its own, the rest would need {without_generator:.2} \
         CPUs{}.",
        n0(target),
        (1.0 - cpus / needed) * 100.0,
        us(total_us * cpus / needed),
        us(generator_us),
        if without_generator <= cpus {
            ", which fits"
        } else {
            ", still more than there are"
        }
    );
}

/// Runs that count for the latency and ceiling figures (fanout runs and ramp steps).
fn measured(r: &Results) -> impl Iterator<Item = &FanoutReport> {
    r.fanout
        .iter()
        .chain(&r.ramp_steps)
        .filter(|f| counts_unwindowed(f))
}

/// The section; empty when every one of these targets was met or none was measured.
pub fn section(w: &mut String, r: &Results, inputs: &Inputs) {
    let mut body = String::new();
    efficiency(&mut body, r, inputs);
    latency(&mut body, r);
    ceiling(&mut body, r);
    connects(&mut body, r);
    store(&mut body, r);
    if body.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\n### Why the missed targets are missed, and what would reach them\n\nComputed from \
         this run's measurements (the CPU split below, the profile and its system-call counts, \
         the ramp).\n{body}"
    );
}

fn efficiency(w: &mut String, r: &Results, inputs: &Inputs) {
    let Some(f) = closest(&r.fanout, 90_000.0) else {
        return;
    };
    if f.deliveries_per_server_cpu_s >= EFFICIENCY_TARGET || f.deliveries_per_server_cpu_s <= 0.0 {
        return;
    }
    let per = 1e6 / f.deliveries_per_server_cpu_s;
    let budget = 1e6 / EFFICIENCY_TARGET;
    let _ = write!(
        w,
        "\n**Fan-out efficiency.** In `{}` the nodes spent {per:.2} µs of CPU per delivery; \
         1,000,000 deliveries per CPU-second leaves {budget:.0} µs.",
        f.label
    );
    // The profiled run at the same offered rate says how such a delivery's CPU divides. Its
    // own figures are used throughout (the sampling costs the nodes CPU too, and on a slow
    // machine pushes them further into saturation, where writes carry more frames).
    let rate_label = format!("profile-{:.0}", f.rate_offered);
    let profiled = r
        .fanout
        .iter()
        .find(|p| p.label == rate_label && p.deliveries_per_server_cpu_s > 0.0);
    let kernel = inputs
        .profile_dso
        .iter()
        .find(|(l, _)| *l == rate_label)
        .and_then(|(_, t)| kernel_share(t));
    let (Some(p), Some(k)) = (profiled, kernel) else {
        return efficiency_tail(w, r, f);
    };
    let p_per = 1e6 / p.deliveries_per_server_cpu_s;
    let kernel_us = p_per * k / 100.0;
    let user_us = p_per - kernel_us;
    let _ = write!(
        w,
        " Its profiled twin `{rate_label}` (the same offered rate under perf; p50 {:.1} ms, \
         {p_per:.2} µs per delivery) divides that CPU {k:.0}% kernel — {kernel_us:.2} µs per \
         delivery in system calls, TCP over loopback and wake-ups — and {user_us:.2} µs user \
         space (Confab, actix, tokio, the allocator, JSON). {}",
        p.latency_ms.p50,
        if user_us > budget && kernel_us > budget {
            "Either half alone is over the whole budget: no user-space change can reach the \
             target while the kernel's part stays as it is, nor the other way round."
        } else if kernel_us > budget {
            "The kernel's part alone is over the whole budget."
        } else if user_us > budget {
            "The user-space part alone is over the whole budget."
        } else {
            "Both halves would have to shrink."
        }
    );
    let counts = inputs
        .counts
        .iter()
        .find(|(l, _)| *l == rate_label)
        .map(|(_, t)| perf_counts(t));
    if let (Some(counts), Some(window)) = (counts, inputs.counts_window_s) {
        let deliveries = p.delivered_per_sec * window;
        if let (Some(sends), true) = (count(&counts, "sys_enter_sendto"), deliveries > 0.0) {
            let per_write = deliveries / sends.max(1.0);
            let _ = write!(
                w,
                " Over {window:.0} s of that run the two nodes made {} `sendto` calls for {} \
                 deliveries ({per_write:.1} deliveries per socket write, counting the writes to \
                 Postgres and Redis too)",
                n0(sends),
                n0(deliveries)
            );
            let waits = count(&counts, "sys_enter_epoll_wait");
            let switches = count(&counts, "context-switches").or(count(&counts, "cs"));
            if let (Some(e), Some(c)) = (waits, switches) {
                let _ = write!(
                    w,
                    ", {:.0} `epoll_wait`s and {:.0} context switches per 1,000 deliveries",
                    e / deliveries * 1000.0,
                    c / deliveries * 1000.0
                );
            }
            // Kernel time per write: what every delivery that needs a write of its own costs
            // before Confab's code runs at all.
            let kernel_per_write = kernel_us * per_write;
            let _ = write!(
                w,
                ". That is ≈ {kernel_per_write:.1} µs of kernel time per write: within \
                 {budget:.0} µs per delivery, each write would have to carry ≥ {:.0} deliveries \
                 even if user space cost nothing.",
                (kernel_per_write / budget).ceil()
            );
        }
    }
    efficiency_tail(w, r, f);
}

/// The efficiency paragraph's end: the best run of the benchmark, and what would reach it.
fn efficiency_tail(w: &mut String, r: &Results, f: &FanoutReport) {
    // Under load writes fill up by themselves: the most efficient run of this benchmark.
    if let Some(best) = measured(r)
        .filter(|x| x.deliveries_per_server_cpu_s > f.deliveries_per_server_cpu_s)
        .max_by(|a, b| {
            a.deliveries_per_server_cpu_s
                .total_cmp(&b.deliveries_per_server_cpu_s)
        })
    {
        let _ = write!(
            w,
            " The most efficient run measured here is `{}` at {} msgs/s offered: {} deliveries \
             per gateway CPU-second ({}); the busier the nodes, the more deliveries share \
             each write and each wake-up.",
            best.label,
            n0(best.rate_offered),
            n0(best.deliveries_per_server_cpu_s),
            if best.lost == 0 && best.duplicated == 0 {
                "nothing lost"
            } else {
                "with loss: past the ceiling"
            }
        );
    }
    // A flush window measured in this run: what holding each socket's frames bought.
    let windows: Vec<String> = window_pairs(&r.fanout)
        .into_iter()
        .filter(|(_, t, _)| t.deliveries_per_server_cpu_s > 0.0)
        .map(|(x, t, ms)| {
            format!(
                "`{}` ({ms} ms, rooms of {}) ×{:.2} against `{}`, p99 {:.1} ms",
                x.label,
                x.room_size,
                x.deliveries_per_server_cpu_s / t.deliveries_per_server_cpu_s,
                t.label,
                x.latency_ms.p99
            )
        })
        .collect();
    if windows.is_empty() {
        let _ = writeln!(
            w,
            " **What would reach it** (not measured here): many deliveries per system call and \
             per wake-up at moderate rates — a write delay that holds each socket's frames for a \
             few milliseconds (latency for CPU), or batched submission (io_uring) that the actix \
             stack does not offer — and a user-space path of a fraction of a µs per delivery."
        );
    } else {
        let _ = writeln!(
            w,
            " A write delay (`session.write_delay_ms`, the flush-window section) gave: {}. The \
             fewer frames each socket receives per window, the less it buys: in rooms of 10 each \
             message's cost beyond its writes (the send, its commit, Redis, the ack) is shared by \
             9 deliveries only. **What would reach it**: more deliveries per system call and per \
             wake-up — longer windows (latency for CPU), or batched submission (io_uring) that the \
             actix stack does not offer — and a user-space path of a fraction of a µs per \
             delivery.",
            windows.join("; ")
        );
    }
}

fn latency(w: &mut String, r: &Results) {
    let Some(f) = closest(&r.fanout, 90_000.0) else {
        return;
    };
    if f.latency_ms.p99 <= P99_TARGET_MS || f.latency_ms.count == 0 {
        return;
    }
    let cpus = machine_cpus();
    let busy = |x: &FanoutReport| busy_pct(&x.cpu, x.duration_s);
    let _ = write!(
        w,
        "\n**p99 at 90k deliveries/s.** `{}`: p50 {:.2} ms, p99 {:.2} ms, the machine {:.0}% busy \
         ({} CPUs).",
        f.label,
        f.latency_ms.p50,
        f.latency_ms.p99,
        busy(f),
        cpus
    );
    if let Some(store) = metric_mean_ms(&f.metrics, "confab_store_latency_seconds") {
        let most = if store >= f.latency_ms.p50 / 2.0 {
            " — most of the median"
        } else {
            ""
        };
        // Results from nodes that time their commits split the wait: the database's part, and
        // the writer's queue and linger (what more CPU for Postgres would not shorten).
        match metric_mean_ms(&f.metrics, "confab_store_commit_seconds").filter(|c| *c <= store) {
            Some(commit) => {
                let _ = write!(
                    w,
                    " A send waits {store:.1} ms on average for its group commit before it is \
                     published{most}: {commit:.1} ms of it in the database per commit (the batch \
                     statement, the other node's locks on the same threads, the WAL flush), \
                     {:.1} ms in the writer's queue behind the commit in flight and its linger \
                     (`database.send_linger_us`).",
                    store - commit
                );
            }
            None => {
                let _ = write!(
                    w,
                    " A send waits {store:.1} ms on average for its group commit (the linger, \
                     the batch statement, the WAL flush) before it is published{most}."
                );
            }
        }
    }
    // The fastest rate at which the tail still met the target, and how busy the machine was.
    let held = measured(r)
        .filter(|x| x.clean() && x.latency_ms.count > 0 && x.latency_ms.p99 <= P99_TARGET_MS)
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec));
    match held {
        Some(h) => {
            let _ = write!(
                w,
                " The highest rate at which p99 stayed ≤ {P99_TARGET_MS:.0} ms in this run was \
                 `{}`: {} deliveries/s, p99 {:.2} ms, with the machine {:.0}% busy. The tail \
                 grows with the machine's load, not with anything one process does alone: at \
                 90k the nodes, Postgres, Redis and the load generator share {} CPUs, and a \
                 send's commit or delivery waits for a CPU.",
                h.label,
                n0(h.delivered_per_sec),
                h.latency_ms.p99,
                busy(h),
                cpus
            );
            let need = (1.0 - busy(h) / busy(f).max(1e-9)) * 100.0;
            if need > 0.0 {
                let _ = write!(
                    w,
                    " **What would reach it**: the machine no busier at 90k deliveries/s than it \
                     was there — about {need:.0}% less CPU per message across the nodes, \
                     Postgres and the load generator — or the database and the load generator \
                     on cores of their own, as a deployment has them."
                );
            }
        }
        None => {
            let _ = write!(
                w,
                " No run of this benchmark had p99 ≤ {P99_TARGET_MS:.0} ms: even the lowest \
                 rate's tail is above it on this machine."
            );
        }
    }
    let _ = writeln!(w);
}

fn ceiling(w: &mut String, r: &Results) {
    let bound = r.ramp.first().map_or(500.0, |x| x.max_p99_ms);
    let Some(top) = measured(r)
        .filter(|f| crate::ramp::verdict(f, bound).is_none())
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
    else {
        return;
    };
    if top.delivered_per_sec >= CEILING_TARGET {
        return;
    }
    let Some((total, parts)) = per_unit(&top.cpu, top.delivered_per_sec * top.duration_s) else {
        return;
    };
    let busy = busy_pct(&top.cpu, top.duration_s);
    let _ = write!(
        w,
        "\n**Loss-free ceiling.** At the highest rate that held (`{}`, {} deliveries/s) the \
         machine was {busy:.0}% busy and spent {total:.2} µs of CPU per delivery ({}). Past the \
         ceiling the queues grow until a client is closed as a slow consumer, which the \
         benchmark counts as loss.",
        top.label,
        n0(top.delivered_per_sec),
        split_text(&parts)
    );
    rate_needs(w, "deliveries/s", CEILING_TARGET, total, parts[3].1);
}

fn connects(w: &mut String, r: &Results) {
    let Some(i) = r.idle.first() else {
        return;
    };
    if i.connects_per_sec >= CONNECT_TARGET || i.connections == 0 {
        return;
    }
    let Some((total, parts)) = per_unit(&i.connect_cpu, i.connections as f64) else {
        return;
    };
    let busy = busy_pct(&i.connect_cpu, i.connect_s);
    let _ = write!(
        w,
        "\n**Connects per second.** `{}`: {} connects/s; over the connect phase the machine was \
         {busy:.0}% busy and spent {total:.0} µs of CPU per connect ({}).",
        i.label,
        n0(i.connects_per_sec),
        split_text(&parts)
    );
    rate_needs(w, "connects/s", CONNECT_TARGET, total, parts[3].1);
}

fn store(w: &mut String, r: &Results) {
    let Some(f) = r.fanout.iter().find(|f| f.label.starts_with("store")) else {
        return;
    };
    if f.acked_per_sec >= STORE_TARGET || f.acked_total == 0 {
        return;
    }
    let Some((total, parts)) = per_unit(&f.cpu, f.acked_per_sec * f.duration_s) else {
        return;
    };
    let busy = busy_pct(&f.cpu, f.duration_s);
    let _ = write!(
        w,
        "\n**Durably stored messages per second.** `{}`: {} acked/s of {} offered; the machine \
         was {busy:.0}% busy and spent {total:.0} µs of CPU per stored message ({}).",
        f.label,
        n0(f.acked_per_sec),
        n0(f.rate_offered),
        split_text(&parts)
    );
    if let Some(batch) = super::metric_mean(&f.metrics, "confab_store_batch_size") {
        let _ = write!(w, " Each commit stored {batch:.0} sends on average.");
    }
    rate_needs(w, "stored messages/s", STORE_TARGET, total, parts[3].1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procstat::ProcessUsage;

    #[test]
    fn the_kernel_share_comes_from_the_dso_listing() {
        let t = "# header\n    55.00%  [kernel.kallsyms]\n    40.00%  confab\n     5.00%  \
                 libc.so.6\n";
        let k = kernel_share(t);
        assert!(k.is_some_and(|k| (k - 55.0).abs() < 1e-9), "{k:?}");
        assert_eq!(kernel_share("# nothing\n"), None);
    }

    #[test]
    fn perf_stat_csv_parses_by_event_name() {
        let t = "# started on …\n\n151426,,syscalls:sys_enter_sendto,5001051376,100.00,,\n\
                 <not counted>,,syscalls:sys_enter_futex,0,0.00,,\n10636,,context-switches,\
                 5001000000,100.00,,\n";
        let c = perf_counts(t);
        assert_eq!(count(&c, "sys_enter_sendto"), Some(151426.0));
        assert_eq!(count(&c, "context-switches"), Some(10636.0));
        assert_eq!(count(&c, "sys_enter_futex"), None);
    }

    fn run(label: &str, rate: f64, p99: f64, nodes_cpu: f64, machine: f64) -> FanoutReport {
        let mut f = FanoutReport {
            label: label.into(),
            room_size: 10,
            rate_offered: rate,
            duration_s: 10.0,
            sent: (rate * 10.0) as u64,
            sent_per_sec: rate,
            delivered_per_sec: rate * 9.0,
            deliveries_per_server_cpu_s: rate * 9.0 * 10.0 / nodes_cpu,
            cpu: CpuWindow {
                processes: vec![ProcessUsage {
                    name: "node0".into(),
                    pid: 1,
                    cpu_s: nodes_cpu,
                    rss_kib: 0,
                }],
                bench_cpu_s: machine / 4.0,
                machine_cpu_s: machine,
            },
            ..Default::default()
        };
        f.latency_ms.count = 1000;
        f.latency_ms.p50 = p99 / 3.0;
        f.latency_ms.p99 = p99;
        f.acked_total = f.sent;
        f.sent_total = f.sent;
        f.expected_deliveries = f.sent * 9;
        f.delivered = f.expected_deliveries;
        f
    }

    #[test]
    fn a_missed_run_gets_its_reasons_and_a_met_one_none() {
        let mut r = Results::default();
        r.fanout.push(run("fanout-2000", 2000.0, 4.0, 3.0, 8.0));
        let mut at_90k = run("fanout-10000", 10_000.0, 11.0, 6.0, 18.0);
        // 100,000 sends waited 300 s for their commits (3 ms each), 8,000 commits took 12 s.
        let mut node = crate::scrape::MetricsDelta::default();
        for (k, v) in [
            ("confab_store_latency_seconds_sum", 300.0),
            ("confab_store_latency_seconds_count", 100_000.0),
            ("confab_store_commit_seconds_sum", 12.0),
            ("confab_store_commit_seconds_count", 8_000.0),
        ] {
            node.counters.insert(k.into(), v);
        }
        at_90k.metrics = vec![node];
        r.fanout.push(at_90k);
        // Its profiled twin: 900,000 deliveries on 9 CPU-s, 10 µs each.
        r.fanout
            .push(run("profile-10000", 10_000.0, 40.0, 9.0, 19.0));
        r.idle.push(crate::idle::IdleReport {
            label: "idle".into(),
            connections: 10_000,
            connect_s: 2.0,
            connects_per_sec: 5_000.0,
            connect_cpu: run("x", 1.0, 1.0, 1.0, 3.0).cpu,
            ..Default::default()
        });
        let inputs = Inputs {
            profile_dso: vec![(
                "profile-10000".into(),
                "60.00%  [kernel.kallsyms]\n40.00%  confab\n".into(),
            )],
            ..Default::default()
        };
        let mut md = String::new();
        section(&mut md, &r, &inputs);
        // 900,000 deliveries on 6 CPU-s: 6.67 µs each; the profiled twin's 10 µs, 60 % of
        // it in the kernel.
        assert!(md.contains("6.67 µs of CPU per delivery"), "{md}");
        assert!(md.contains("60% kernel — 6.00 µs per delivery"), "{md}");
        assert!(
            md.contains("Either half alone is over the whole budget"),
            "{md}"
        );
        // The fastest run whose p99 met 5 ms is named, with the machine's load then.
        assert!(
            md.contains("was `fanout-2000`: 18,000 deliveries/s"),
            "{md}"
        );
        // The store's wait split into the database's part and the writer's queue.
        assert!(
            md.contains(
                "waits 3.0 ms on average for its group commit before it is published — \
                 most of the median: 1.5 ms of it in the database per commit"
            ),
            "{md}"
        );
        assert!(md.contains("1.5 ms in the writer's queue"), "{md}");
        assert!(md.contains("**Loss-free ceiling.**"), "{md}");
        // 3 CPU-s over 10,000 connects: 300 µs each; 10,000/s would need 3 CPUs.
        assert!(md.contains("spent 300 µs of CPU per connect"), "{md}");
        assert!(md.contains("10,000 connects/s need 3.00 CPUs"), "{md}");
        // No store run: nothing said about it.
        assert!(!md.contains("Durably stored"), "{md}");

        // Every target met: nothing to explain.
        let mut fast = run("fanout-10000", 10_000.0, 3.0, 0.5, 2.0);
        fast.delivered_per_sec = 500_000.0;
        fast.deliveries_per_server_cpu_s = 2_000_000.0;
        let met = Results {
            fanout: vec![fast],
            ..Default::default()
        };
        let mut none = String::new();
        section(&mut none, &met, &Inputs::default());
        assert!(none.is_empty(), "{none}");
    }
}
