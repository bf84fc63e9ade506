//! `ramp`: run [`fanout`](crate::fanout) at rising offered rates (each step with a fresh set of
//! users, rooms and connections, so a failed step leaves nothing behind for the next) until a
//! step loses or duplicates a message, leaves a send unanswered, drops a client, or its p99
//! passes the bound. Optionally bisect between the last rate that held and the first that did
//! not. Reports the highest rate that held.

use crate::fanout::{self, FanoutConfig, FanoutReport};
use crate::stats::round;
use crate::{BenchError, Result};
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Clone, Debug)]
pub struct RampConfig {
    /// Every step's settings (its `rate` is replaced).
    pub base: FanoutConfig,
    /// The first rate, messages/s.
    pub start_rate: f64,
    /// Each step multiplies the rate by this.
    pub factor: f64,
    /// Never offer more than this.
    pub max_rate: f64,
    /// At most this many steps (bisection included).
    pub max_steps: usize,
    /// Bisection steps after the first failure.
    pub refine: usize,
    /// A step whose send→deliver p99 exceeds this (ms) did not hold.
    pub max_p99_ms: f64,
}

/// One step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RampStep {
    /// Offered rate, messages/s.
    pub rate: f64,
    /// Whether it held.
    pub held: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// Sends written per second.
    pub sent_per_sec: f64,
    /// Acks per second.
    pub acked_per_sec: f64,
    /// Deliveries per second.
    pub delivered_per_sec: f64,
    /// Lost deliveries.
    pub lost: u64,
    /// Duplicated deliveries.
    pub duplicated: u64,
    /// Send → deliver p99, ms.
    pub p99_ms: f64,
    /// Deliveries per gateway CPU-second.
    pub deliveries_per_server_cpu_s: f64,
}

/// The outcome of a ramp.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RampReport {
    /// Always `ramp`.
    pub scenario: String,
    /// The run's label.
    pub label: String,
    /// The p99 bound, ms.
    pub max_p99_ms: f64,
    /// Every step in the order run.
    pub steps: Vec<RampStep>,
    /// The highest offered rate that held (messages/s).
    pub highest_held_rate: Option<f64>,
    /// Deliveries/s measured at that rate.
    pub highest_held_delivered_per_sec: Option<f64>,
    /// Acks (stored messages)/s measured at that rate.
    pub highest_held_acked_per_sec: Option<f64>,
    /// The lowest rate that did not hold.
    pub first_failed_rate: Option<f64>,
    /// Why it did not.
    pub failure: Option<String>,
}

impl RampReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "ramp[{}]: highest rate held {} msgs/s ({} deliveries/s); first failed {} ({})",
            self.label,
            self.highest_held_rate
                .map_or("none".into(), |r| format!("{r:.0}")),
            self.highest_held_delivered_per_sec
                .map_or("-".into(), |r| format!("{r:.0}")),
            self.first_failed_rate
                .map_or("none".into(), |r| format!("{r:.0}")),
            self.failure.clone().unwrap_or_else(|| "-".into())
        )
    }
}

/// Why a step did not hold, if it did not.
pub fn verdict(r: &FanoutReport, max_p99_ms: f64) -> Option<String> {
    if r.lost > 0 {
        return Some(format!("{} deliveries lost", r.lost));
    }
    if r.duplicated > 0 {
        return Some(format!("{} duplicates", r.duplicated));
    }
    if !r.disconnects.is_empty() {
        return Some(format!("clients disconnected: {:?}", r.disconnects));
    }
    if !r.send_errors.is_empty() {
        return Some(format!("send errors: {:?}", r.send_errors));
    }
    if r.unacked > 0 {
        return Some(format!("{} sends unanswered after the drain", r.unacked));
    }
    if r.sent_per_sec < 0.95 * r.rate_offered {
        return Some(format!(
            "load generator fell behind ({:.0}/s of {:.0}/s)",
            r.sent_per_sec, r.rate_offered
        ));
    }
    if r.latency_ms.p99 > max_p99_ms {
        return Some(format!("p99 {:.1} ms > {max_p99_ms} ms", r.latency_ms.p99));
    }
    None
}

/// Run the ramp; `on_step` sees each step's full report as it finishes.
pub async fn run(cfg: &RampConfig, mut on_step: impl FnMut(&FanoutReport)) -> Result<RampReport> {
    if cfg.factor.is_nan()
        || cfg.factor <= 1.0
        || cfg.start_rate.is_nan()
        || cfg.start_rate <= 0.0
        || cfg.max_steps == 0
    {
        return Err(BenchError::Invalid(
            "ramp needs factor > 1, start rate > 0 and at least one step".into(),
        ));
    }
    let mut report = RampReport {
        scenario: "ramp".into(),
        label: cfg.base.label.clone(),
        max_p99_ms: cfg.max_p99_ms,
        ..Default::default()
    };
    let mut held: Option<(f64, f64, f64)> = None;
    let mut failed: Option<(f64, String)> = None;
    let mut rate = cfg.start_rate.min(cfg.max_rate);
    let mut refine_left = cfg.refine;
    for _ in 0..cfg.max_steps {
        let mut step_cfg = cfg.base.clone();
        step_cfg.rate = rate;
        step_cfg.label = format!("{}-{rate:.0}", cfg.base.label);
        let r = fanout::run(&step_cfg).await?;
        on_step(&r);
        let why = verdict(&r, cfg.max_p99_ms);
        report.steps.push(RampStep {
            rate,
            held: why.is_none(),
            reason: why.clone(),
            sent_per_sec: r.sent_per_sec,
            acked_per_sec: r.acked_per_sec,
            delivered_per_sec: r.delivered_per_sec,
            lost: r.lost,
            duplicated: r.duplicated,
            p99_ms: r.latency_ms.p99,
            deliveries_per_server_cpu_s: r.deliveries_per_server_cpu_s,
        });
        match why {
            None => {
                if held.is_none_or(|(h, _, _)| rate > h) {
                    held = Some((rate, r.delivered_per_sec, r.acked_per_sec));
                }
            }
            Some(reason) => {
                if failed.as_ref().is_none_or(|(f, _)| rate < *f) {
                    failed = Some((rate, reason));
                }
            }
        }
        rate = match (&held, &failed) {
            (_, None) if rate >= cfg.max_rate => break,
            (_, None) => (rate * cfg.factor).min(cfg.max_rate),
            (Some((h, _, _)), Some((f, _))) if refine_left > 0 => {
                refine_left -= 1;
                round((h + f) / 2.0, 0)
            }
            _ => break,
        };
    }
    report.highest_held_rate = held.map(|h| h.0);
    report.highest_held_delivered_per_sec = held.map(|h| h.1);
    report.highest_held_acked_per_sec = held.map(|h| h.2);
    report.first_failed_rate = failed.as_ref().map(|f| f.0);
    report.failure = failed.map(|f| f.1);
    Ok(report)
}
