//! The Confab gateway node: HTTP API, WebSocket sessions, fan-out across nodes through a broker,
//! presence and metrics.
//!
//! Data flows one way: socket → session → chat service → (store, broker) → hub → sessions.

pub mod auth;
pub mod broker;
pub mod chat;
pub mod coalesce;
pub mod config;
pub mod cors;
pub mod directory;
pub mod envelope;
pub mod error;
pub mod hub;
pub mod keys;
pub mod listener;
pub mod lookups;
pub mod mailbox;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod ratelimit;
pub mod redis_shared;
pub mod routes;
pub mod session;
pub mod single_thread;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use config::Settings;
pub use startup::{Application, StopHandle};
