//! Latency recording (HDR histograms in microseconds) and the monotonic clock every timestamp in
//! a message body is taken from.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Microseconds since one `Instant` shared by every task of a run, so a time written into a
/// message body by one client can be compared with the time another client reads it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// The `Instant` at `us` microseconds after the start.
    pub fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    /// Microseconds from the start to `t` (0 before the start).
    pub fn us_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 600_000_000, 3) {
        Ok(h) => h,
        // Constant, valid bounds: this cannot fail.
        Err(e) => panic!("histogram bounds: {e}"),
    }
}

/// Record a microsecond value (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl LatencyMs {
    /// Summarize a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Round to `digits` decimals (for readable JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, us * 10);
        }
        let l = LatencyMs::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 5.0).abs() < 0.05, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.05, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.05, "{l:?}");
        assert_eq!(LatencyMs::of(&histogram()), LatencyMs::default());
    }
}
