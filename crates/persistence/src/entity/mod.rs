//! SeaORM entities, one module per table. They mirror `migrations/` exactly.

pub mod auth_token;
pub mod message;
pub mod reaction;
pub mod report;
pub mod thread;
pub mod thread_member;
pub mod user;
