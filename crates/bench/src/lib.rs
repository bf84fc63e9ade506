//! `confab-bench`: the load tester. It drives real gateway nodes over real WebSockets with the
//! real protocol (`confab-protocol` types), on loopback only, bounded in count and time.
//!
//! Scenarios, one module each: [`fanout`] (open-loop offered rate into rooms spread over nodes),
//! [`ramp`] (raise the rate until latency or loss passes a bound), [`idle`] (many idle
//! authenticated connections: server memory per connection and the connect rate), [`storm`]
//! (everyone reconnects at once and resumes), [`crash`] (a node SIGKILLed: how long until its
//! users show offline) and [`history`] (page latency on a huge thread); [`calibrate`] measures
//! the machine itself (a yardstick recorded beside the figures).
//! [`report`] turns their JSON lines into `BENCHMARKS.md`.
//!
//! The library never prints; the binary (`main.rs`) prints one JSON line per result and a
//! one-line human summary.

pub mod calibrate;
pub mod conn;
pub mod crash;
pub mod fanout;
pub mod fleet;
pub mod history;
pub mod idle;
pub mod procstat;
pub mod ramp;
pub mod report;
pub mod scrape;
pub mod stats;
pub mod storm;
pub mod target;
pub mod wire;

use std::time::Duration;

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A target that is not on this machine's loopback interface.
    #[error("refusing non-loopback target {0}: the load tester only drives local nodes")]
    NotLoopback(String),
    /// A malformed argument or a scenario outside its bounds.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An HTTP call failed or answered with an unexpected status.
    #[error("http: {0}")]
    Http(String),
    /// A WebSocket could not be opened or broke during setup.
    #[error("websocket: {0}")]
    Ws(String),
    /// Reading `/proc` or a file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The bench database could not be reached or refused a statement.
    #[error("database: {0}")]
    Db(String),
    /// A wait exceeded its bound.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Results of this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Hard bounds on every scenario, whatever the command line says.
pub mod bounds {
    /// Most WebSocket clients one scenario opens.
    pub const MAX_CLIENTS: usize = 200_000;
    /// Highest offered rate, messages per second.
    pub const MAX_RATE: f64 = 1_000_000.0;
    /// Longest measured window or warm-up, seconds.
    pub const MAX_SECS: f64 = 600.0;
    /// Most messages inserted into a history thread.
    pub const MAX_HISTORY_MESSAGES: u64 = 10_000_000;
    /// Most requests of the history scenario.
    pub const MAX_REQUESTS: usize = 1_000_000;
}

/// Check a duration given in seconds against [`bounds::MAX_SECS`].
pub fn secs(name: &str, v: f64) -> Result<Duration> {
    if !(0.0..=bounds::MAX_SECS).contains(&v) || v.is_nan() {
        return Err(BenchError::Invalid(format!(
            "{name} must be 0 to {} seconds",
            bounds::MAX_SECS
        )));
    }
    Ok(Duration::from_secs_f64(v))
}
