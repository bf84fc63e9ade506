//! HTTP API bodies (`/api/v1/...`). Requests refuse unknown fields; responses may grow fields.

use crate::{ErrorCode, Message, MessageId, ThreadId, ThreadKind, UserId, UserRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/users` and `POST /api/v1/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// 3–32 characters: letters, digits, `_`, `-`, `.`.
    pub username: String,
    /// 8–256 characters.
    pub password: String,
}

/// `POST /api/v1/sessions` → 200.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The bearer token for `Authorization: Bearer …` and `/ws?token=…`.
    pub token: String,
    /// Who logged in.
    pub user: UserRef,
    /// When the token stops working.
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/v1/threads`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateThread {
    /// The other members (the caller is always added).
    pub member_ids: Vec<UserId>,
    /// A name makes it a group thread (room); without one, exactly one other member makes a
    /// direct thread.
    #[serde(default)]
    pub name: Option<String>,
    /// Public rooms are listed by `GET /api/v1/rooms` and can be joined by anyone.
    #[serde(default)]
    pub public: bool,
}

/// `POST /api/v1/threads/{id}/members`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Users to add.
    pub user_ids: Vec<UserId>,
}

/// A page of history, newest last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Messages in ascending `seq` order.
    pub messages: Vec<Message>,
    /// Pass as `before_seq` to get the previous page; `null` when this page reaches `seq` 1.
    pub next_before_seq: Option<i64>,
    /// The thread's change counter when the page was read: give it (or a higher `change_seq`
    /// heard live since) as `last_change` when resuming, to get the messages changed after.
    #[serde(default)]
    pub last_change: i64,
}

/// The last message of a thread, as the thread list shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastMessage {
    /// Its id.
    pub id: crate::MessageId,
    /// Its `seq`.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: UserId,
    /// Its body, or `[message deleted]`.
    pub body: String,
    /// True once deleted.
    pub deleted: bool,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
}

/// One entry of `GET /api/v1/threads`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThreadListItem {
    /// The thread id.
    pub id: ThreadId,
    /// The room name (`null` for direct threads).
    pub name: Option<String>,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Whether the room is public.
    pub public: bool,
    /// Every member.
    pub members: Vec<UserRef>,
    /// The newest message, if any.
    pub last_message: Option<LastMessage>,
    /// The thread's newest `seq`.
    pub last_seq: i64,
    /// Messages from others after `last_read_seq` that are not deleted.
    pub unread_count: i64,
    /// How far the caller has read.
    pub last_read_seq: i64,
    /// The time of the last activity (last message, or creation).
    pub last_activity_at: DateTime<Utc>,
    /// The thread's change counter (see `resume`'s `last_change`): changes after it can be
    /// replayed.
    #[serde(default)]
    pub last_change: i64,
}

/// `GET /api/v1/threads` → 200.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThreadList {
    /// Most recent activity first.
    pub threads: Vec<ThreadListItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The JSON body of every HTTP error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// `POST /api/v1/threads/{id}/messages`: send a message over HTTP (bots, integrations, a page
/// without its WebSocket yet) — the rules and guarantees of the `send` frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The sender's idempotency key (1–64 characters): a retry with it stores nothing new.
    pub client_msg_id: String,
    /// The text (1 to `limits.max_body_chars` characters, not only whitespace).
    pub body: String,
}

/// `POST /api/v1/threads/{id}/messages` → 201 when stored, 200 for a retry of a stored one:
/// what the `ack` frame says, after the commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SentMessage {
    /// The thread.
    pub thread_id: ThreadId,
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// The stored message id.
    pub id: MessageId,
    /// Its `seq` in the thread.
    pub seq: i64,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// True when this `client_msg_id` had already been stored in this thread (a retry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `PATCH /api/v1/messages/{id}`: the sender's new text for a message (the `edit` frame).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The new text (the rules of a send's body).
    pub body: String,
}

/// `POST /api/v1/threads/{id}/read`: mark the thread read up to `seq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The highest `seq` the user has seen (clamped to the thread's last `seq`).
    pub seq: i64,
}

/// `POST /api/v1/threads/{id}/read` → 200: the caller's read state after the call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadState {
    /// The thread.
    pub thread_id: ThreadId,
    /// How far the caller has now read (never lower than before the call).
    pub last_read_seq: i64,
}

/// `POST /api/v1/messages/{id}/report`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportMessage {
    /// Why the message is reported (1–500 characters).
    pub reason: String,
}

/// `POST /api/v1/messages/{id}/report` → 201: the stored report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The report id.
    pub id: uuid::Uuid,
    /// The reported message.
    pub message_id: crate::MessageId,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// One entry of `GET /api/v1/rooms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomListItem {
    /// The room (a public group thread).
    pub id: ThreadId,
    /// Its name.
    pub name: String,
    /// How many members it has.
    pub member_count: i64,
    /// Whether the caller is one of them.
    pub joined: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The time of its last activity (last message, or creation).
    pub last_activity_at: DateTime<Utc>,
}

/// `GET /api/v1/rooms` → 200.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomList {
    /// Public rooms, most recent activity first.
    pub rooms: Vec<RoomListItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One entry of `GET /api/v1/presence?user_ids=…` → 200 (a JSON array, in the order asked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserPresence {
    /// The user.
    pub user_id: UserId,
    /// Online while any of their sessions is connected on any node (or within the grace period
    /// after the last one closed); offline otherwise.
    pub status: crate::PresenceStatus,
    /// When they were last connected; `null` while online or if never seen.
    pub last_seen: Option<DateTime<Utc>>,
}
