//! The integration suite: one test binary, one module per area. Every test talks to real
//! Postgres, real Redis and real gateway nodes over real WebSockets.

mod bench_smoke;
mod chaos;
mod embedded;
mod faults;
mod features;
mod foundation;
mod hostile;
mod membership;
mod ops;
mod outages;
mod presence;
mod storage;
