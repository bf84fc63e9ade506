//! Confab's wire protocol: every type a client or another crate sees on the wire.
//!
//! This crate does no I/O and depends on nothing but serde, uuid and chrono, so that any client
//! (the load tester, the tests, a future web client compiled to wasm) can share it.
//! It must never grow a dependency on actix, sea-orm or redis.
//!
//! WebSocket frames are JSON text. What a client sends is a [`ClientFrame`], what the server sends
//! is a [`ServerFrame`]; both are internally tagged by a `"type"` field. HTTP bodies are the
//! structs in [`api`]. Errors on both transports carry an [`ErrorCode`].

pub mod api;
mod error_code;
mod frames;
mod ids;

pub use error_code::ErrorCode;
pub use frames::*;
pub use ids::{MessageId, SessionId, ThreadId, UserId};

/// The protocol version this build speaks. Clients may ask for it with `?v=1` on `/ws` (or the
/// `confab.v1` WebSocket subprotocol); an unsupported version is refused before the upgrade.
pub const PROTOCOL_VERSION: u32 = 1;

/// The body a deleted message shows everywhere (history, thread list, live events).
pub const DELETED_BODY: &str = "[message deleted]";

/// Default maximum body length in characters (the seed apps allow 10,000).
pub const DEFAULT_MAX_BODY_CHARS: usize = 10_000;
