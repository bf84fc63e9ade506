//! Confab's persistence: SeaORM entities and every query the gateway runs.
//!
//! The same code runs on Postgres (a cluster) and on an embedded SQLite file (a single node with
//! nothing installed). It must never know about actix, Redis or WebSockets: it takes ids and
//! values and returns protocol types or plain rows.

mod batch;
mod changes;
mod edits;
pub mod entity;
mod error;
mod messages;
mod reactions;
mod read_state;
mod reports;
mod rooms;
mod store;
mod thread_list;
mod threads;
mod users;

pub use batch::{BatchHooks, OnBatch, OnCommit, OnStored, SendBatcher};
pub use error::{Error, Result};
pub use messages::{EditOutcome, SendOutcome};
pub use reactions::ReactOutcome;
pub use read_state::{MarkReadOutcome, ReadPosition};
pub use store::{Backend, Store, StoreOptions};
pub use thread_list::ActivityCursor;
pub use users::UserAuth;
