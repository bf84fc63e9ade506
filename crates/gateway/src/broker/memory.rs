//! In-process broker for a single node: a publish is handed straight to the hub.
//! It cannot reach other processes, which is why start-up refuses it when `cluster.replicas > 1`.

use super::{BoxFuture, Broker, BrokerError, Inbound};
use bytes::Bytes;
use std::sync::{OnceLock, Weak};
use tokio::sync::oneshot;

/// Delivers publishes to the local hub only.
#[derive(Default)]
pub struct MemoryBroker {
    inbound: OnceLock<Weak<dyn Inbound>>,
}

impl MemoryBroker {
    /// A broker with no receiver yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach the receiver (the hub). Weak, because the hub owns the broker.
    pub fn attach(&self, inbound: Weak<dyn Inbound>) {
        let _ = self.inbound.set(inbound);
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, channel: String, payload: Bytes) {
        if let Some(inbound) = self.inbound.get().and_then(Weak::upgrade) {
            inbound.on_message(&channel, payload);
        }
    }

    fn publish_logged(
        &self,
        channel: String,
        payload: Bytes,
    ) -> BoxFuture<Result<(), BrokerError>> {
        self.publish(channel, payload);
        Box::pin(async { Ok(()) })
    }

    fn was_logged(&self, _event_id: u128) -> BoxFuture<Result<bool, BrokerError>> {
        // Every publish here is delivered at once: none has an unknown outcome to look up.
        Box::pin(async { Ok(true) })
    }

    fn subscribe(&self, _channels: Vec<String>) -> oneshot::Receiver<Result<(), BrokerError>> {
        // Every publish reaches the hub, which keeps what its sessions want: nothing to do.
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }

    fn unsubscribe(&self, _channels: Vec<String>) {}

    fn is_healthy(&self) -> bool {
        true
    }

    fn shutdown(&self) {}
}
