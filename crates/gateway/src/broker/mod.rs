//! The broker: how a node hears about events published by any node. One trait, two
//! implementations chosen by configuration — Redis pub/sub for a cluster, in-process for a
//! single node — and the rest of the gateway does not know which it has.
//!
//! A broker never interprets payloads: it moves bytes on named channels and hands what arrives
//! to an [`Inbound`] (the hub). Subscription commands are *ordered*: they are enqueued
//! synchronously (the hub issues them under its lock), so a subscribe can never overtake the
//! unsubscribe that preceded it.

pub(crate) mod control_log;
mod memory;
mod redis;

pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisBrokerOptions};

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::oneshot;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a subscription could not be confirmed.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

const UNANSWERED: &str = "redis did not answer (the command may have run)";

impl BrokerError {
    /// Redis did not answer a command it may have run: its connection dropped after the
    /// command was written, before the reply came.
    pub fn unanswered(detail: impl std::fmt::Display) -> Self {
        Self(format!("{UNANSWERED}: {detail}"))
    }

    /// Redis took longer than `redis.command_timeout_ms` to answer: the command may still run.
    pub fn timed_out() -> Self {
        Self::unanswered("no reply in time")
    }

    /// Whether the outcome is unknown ([`BrokerError::timed_out`],
    /// [`BrokerError::unanswered`]) rather than a refusal: the command may have taken effect.
    pub fn may_have_run(&self) -> bool {
        self.0.starts_with(UNANSWERED)
    }

    /// Whether this was [`BrokerError::timed_out`]: the command may have run, or still be
    /// waiting on a connection Redis has not read yet (it may run later).
    pub fn is_timeout(&self) -> bool {
        self.0 == Self::timed_out().0
    }
}

/// Receives what the broker hears. Implemented by the hub.
pub trait Inbound: Send + Sync + 'static {
    /// A payload arrived on `channel`. Must not block: called on the broker's reader task.
    fn on_message(&self, channel: &str, payload: Bytes);
    /// The broker (re)connected and every subscription is back: look for gaps now, since
    /// anything published while it was away was lost by pub/sub.
    fn on_resubscribed(&self);
    /// Control announcements published while the broker was away are lost for good (the
    /// control log was trimmed past them): what local sessions were told about memberships,
    /// logouts and presence may be out of date, and only starting over corrects it.
    fn on_control_lost(&self);
}

/// Publish and subscribe on named channels.
pub trait Broker: Send + Sync + 'static {
    /// Queue a publish. Never blocks; failures are counted and left to gap repair, because the
    /// message is already durable and every node sweeps for gaps.
    fn publish(&self, channel: String, payload: Bytes);
    /// Publish now and resolve once the broker accepted it. For control events whose loss
    /// would leave sessions in the wrong threads (joins, leaves, logouts): the caller answers
    /// only after this, so a later message cannot overtake it. Also kept where a node that was
    /// re-subscribing reads it back (the Redis broker's control log), so no node misses it
    /// because its pub/sub was reconnecting.
    fn publish_logged(&self, channel: String, payload: Bytes)
        -> BoxFuture<Result<(), BrokerError>>;
    /// Whether an announcement with this event id (see `control_log`) is in the log: after an
    /// attempt whose connection dropped before Redis answered, whether it ran. (Such an attempt
    /// cannot run later: Redis handles what a connection sent before its close.)
    fn was_logged(&self, event_id: u128) -> BoxFuture<Result<bool, BrokerError>>;
    /// Subscribe to channels; the receiver resolves once the broker confirmed them (or failed;
    /// the channels stay wanted and are subscribed on reconnect either way).
    fn subscribe(&self, channels: Vec<String>) -> oneshot::Receiver<Result<(), BrokerError>>;
    /// Unsubscribe from channels.
    fn unsubscribe(&self, channels: Vec<String>);
    /// Connected, and (for Redis) the liveness probe came back in time.
    fn is_healthy(&self) -> bool;
    /// Stop background tasks.
    fn shutdown(&self);
}
