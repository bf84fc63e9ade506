//! How fast this machine is today, on the two kinds of work Confab's figures are made of: plain
//! computation on one core, and the kernel's loopback TCP path (a system call, a wake-up and a
//! context switch per message, which dominate the nodes' CPU at moderate rates).
//!
//! Why: the same binary measured 6,459 and 10,973 connects/s, and a loss-free ceiling of 229k and
//! 379k deliveries/s, on two machines of the same kind on different days. Without a yardstick
//! recorded beside the figures, such a drift reads as a regression. `make bench` records these
//! two numbers in BENCHMARKS.md's machine table, measured before any scenario runs.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What [`run`] measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrateReport {
    /// Always `calibrate`.
    pub scenario: String,
    /// Millions of steps of a fixed integer loop (xorshift64*) per second on one core, the best
    /// of three rounds.
    pub cpu_msteps_per_s: f64,
    /// One-byte request/response round trips per second over a loopback TCP connection (both
    /// ends in this process, Nagle off), over one second after a short warm-up.
    pub loopback_round_trips_per_s: f64,
}

impl CalibrateReport {
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "calibrate: cpu {:.0} M steps/s (one core); loopback TCP {:.0} round trips/s",
            self.cpu_msteps_per_s, self.loopback_round_trips_per_s
        )
    }
}

/// Steps per CPU round.
const CPU_STEPS: u64 = 1 << 27;

fn cpu_round() -> Duration {
    let started = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..CPU_STEPS {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x);
    started.elapsed()
}

async fn loopback(window: Duration) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
            s.write_all(&b).await?;
        }
    });
    let mut c = TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let mut b = [1u8; 1];
    let mut trip = async |c: &mut TcpStream| -> std::io::Result<()> {
        c.write_all(&b).await?;
        c.read_exact(&mut b).await?;
        Ok(())
    };
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        trip(&mut c).await?;
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        trip(&mut c).await?;
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(c);
    let _ = echo.await;
    Ok(n as f64 / secs)
}

/// Measure both (about two seconds).
pub async fn run() -> crate::Result<CalibrateReport> {
    let best = tokio::task::spawn_blocking(|| (0..3).map(|_| cpu_round()).min())
        .await
        .map_err(|e| crate::BenchError::Invalid(format!("calibration task: {e}")))?
        .unwrap_or(Duration::from_secs(1));
    let cpu = CPU_STEPS as f64 / best.as_secs_f64() / 1e6;
    let trips = loopback(Duration::from_secs(1)).await?;
    Ok(CalibrateReport {
        scenario: "calibrate".into(),
        cpu_msteps_per_s: crate::stats::round(cpu, 0),
        loopback_round_trips_per_s: crate::stats::round(trips, 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_round_trips_are_counted() {
        let trips = loopback(Duration::from_millis(100)).await.unwrap_or(0.0);
        assert!(trips > 0.0, "{trips}");
    }
}
