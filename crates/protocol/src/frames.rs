//! WebSocket frames: [`ClientFrame`] (client → server) and [`ServerFrame`] (server → client).
//!
//! Every client request carries a client-chosen `req` string that the direct reply (`ack`, `ok`,
//! `pong`, `resumed` or `error`) echoes. Server events that are not replies carry no `req`.

use crate::{ErrorCode, MessageId, SessionId, ThreadId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A frame a client sends. Unknown `type`s and unknown fields are refused with `bad_request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Send a message to a thread. Retrying with the same `client_msg_id` is safe: the original
    /// ack is returned and nothing is stored twice.
    Send {
        /// Echoed in the reply.
        req: String,
        /// The thread to post to; the sender must be a member.
        thread_id: ThreadId,
        /// The client's idempotency key for this message (unique per sender).
        client_msg_id: String,
        /// The text, at most the configured number of characters.
        body: String,
    },
    /// After a reconnect: the last `seq` the client holds per thread. The server replays what
    /// came after, in order, before live delivery continues, then answers `resumed`.
    Resume {
        /// Echoed in the reply.
        req: String,
        /// One entry per thread the client wants to resume.
        threads: Vec<ResumePoint>,
    },
    /// Mark a thread read up to `seq` (read state never moves backwards).
    MarkRead {
        /// Echoed in the reply.
        req: String,
        /// The thread.
        thread_id: ThreadId,
        /// The highest `seq` the user has seen.
        seq: i64,
    },
    /// The user is typing in a thread (ephemeral, never stored, rate-limited).
    Typing {
        /// Echoed in the reply.
        req: String,
        /// The thread.
        thread_id: ThreadId,
    },
    /// Replace the body of one's own message.
    Edit {
        /// Echoed in the reply.
        req: String,
        /// The message to edit.
        message_id: MessageId,
        /// The new text.
        body: String,
    },
    /// Delete one's own message; it stays in place as `[message deleted]`.
    Delete {
        /// Echoed in the reply.
        req: String,
        /// The message to delete.
        message_id: MessageId,
    },
    /// Add an emoji reaction to a message.
    React {
        /// Echoed in the reply.
        req: String,
        /// The message.
        message_id: MessageId,
        /// One emoji (a short grapheme sequence, validated by the server).
        emoji: String,
    },
    /// Remove one's emoji reaction from a message.
    Unreact {
        /// Echoed in the reply.
        req: String,
        /// The message.
        message_id: MessageId,
        /// The emoji to remove.
        emoji: String,
    },
    /// Application-level ping (WebSocket pings work too); answered with `pong`.
    Ping {
        /// Echoed in the reply.
        req: String,
    },
}

impl ClientFrame {
    /// The request id the reply must echo.
    pub fn req(&self) -> &str {
        match self {
            Self::Send { req, .. }
            | Self::Resume { req, .. }
            | Self::MarkRead { req, .. }
            | Self::Typing { req, .. }
            | Self::Edit { req, .. }
            | Self::Delete { req, .. }
            | Self::React { req, .. }
            | Self::Unreact { req, .. }
            | Self::Ping { req } => req,
        }
    }
}

/// Where a client stands in one thread when it resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumePoint {
    /// The thread.
    pub thread_id: ThreadId,
    /// The last `seq` the client has (0 for none).
    pub last_seq: i64,
    /// The last `change_seq` the client saw in this thread (from `message_edited`,
    /// `message_deleted`, `reaction`, `message_changed` or a `resumed` reply; 0 for none). When
    /// given, the messages changed since are replayed as `message_changed` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<i64>,
}

/// The outcome of resuming one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeResult {
    /// The thread.
    pub thread_id: ThreadId,
    /// How many messages were replayed before this frame.
    pub replayed: u32,
    /// True when the gap was larger than the server replays; the client should page history
    /// (`GET /api/v1/threads/{id}/messages`) for the part before `from_seq`.
    pub truncated: bool,
    /// The first `seq` replayed (or the thread's head when nothing was).
    pub from_seq: i64,
    /// The thread's last `seq` at the time of the replay.
    pub last_seq: i64,
    /// When the client gave `last_change`: the thread's last `change_seq`, what to give next
    /// time (with the higher `change_seq`s of changes heard live since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<i64>,
    /// How many `message_changed` frames were replayed before this frame (0 unless the
    /// client gave `last_change`).
    #[serde(default)]
    pub changes_replayed: u32,
    /// True when more messages changed than the server replays (`session.max_resume_replay`):
    /// reload the thread's history instead.
    #[serde(default)]
    pub changes_truncated: bool,
}

/// A user as other users see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    /// Their id.
    pub id: UserId,
    /// Their unique username.
    pub username: String,
}

/// Direct (two people, unique per pair) or group (named, any number of members).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadKind {
    /// A one-to-one conversation; creating it twice returns the same thread.
    Direct,
    /// A named room with any number of members.
    Group,
}

/// A thread as returned on creation and in `thread_created` events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    /// The thread id.
    pub id: ThreadId,
    /// The room name (`null` for direct threads).
    pub name: Option<String>,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Whether anyone may find and join it (rooms only).
    #[serde(default)]
    pub public: bool,
    /// Every member.
    pub members: Vec<UserRef>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The `seq` of its newest message (0 when empty).
    #[serde(default)]
    pub last_seq: i64,
    /// Its change counter (see `resume`'s `last_change`): changes after it can be replayed.
    #[serde(default)]
    pub last_change: i64,
}

/// One message as delivered live (`message` events) and in history pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// Its id.
    pub id: MessageId,
    /// Its position in the thread: 1, 2, 3, … without gaps.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The text (`[message deleted]` once deleted).
    pub body: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// True once the sender deleted it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// When it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    /// Per-emoji reaction counts (history pages only; live messages start with none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
}

/// How many users reacted with one emoji, and whether the caller did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: i64,
    /// Whether the caller is one of them.
    pub me: bool,
}

/// Online or offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one session connected on some node.
    Online,
    /// No session anywhere (after the grace period).
    Offline,
}

/// A frame the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame of every connection: the negotiated version and who you are.
    Hello {
        /// The protocol version in use.
        protocol: u32,
        /// This connection's id.
        session_id: SessionId,
        /// The authenticated user.
        user: UserRef,
        /// The node serving this connection.
        node_id: String,
        /// The server pings at this interval; a client silent for 2× this is dropped.
        heartbeat_ms: u64,
        /// The largest text frame the server accepts, in bytes.
        max_frame_bytes: usize,
    },
    /// A `send` was stored (durably committed) under this id and `seq`.
    Ack {
        /// The request id of the `send`.
        req: String,
        /// The thread.
        thread_id: ThreadId,
        /// The client's idempotency key.
        client_msg_id: String,
        /// The stored message id.
        id: MessageId,
        /// Its `seq` in the thread.
        seq: i64,
        /// When it was stored.
        created_at: DateTime<Utc>,
        /// True when this `client_msg_id` had already been stored (a retry).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// A message in one of your threads (live, or replayed on resume).
    Message(Message),
    /// A request that needs no data succeeded.
    Ok {
        /// The request id.
        req: String,
    },
    /// Reply to `ping`.
    Pong {
        /// The request id.
        req: String,
    },
    /// Reply to `resume`, sent after every replayed message.
    Resumed {
        /// The request id.
        req: String,
        /// One result per requested thread the caller is a member of.
        threads: Vec<ResumeResult>,
    },
    /// A request failed, or (without `req`) the connection hit a problem.
    Error {
        /// The request id, when the error answers a request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// The machine-readable code.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// A message was deleted; it stays in place with the deleted body.
    MessageDeleted {
        /// The thread.
        thread_id: ThreadId,
        /// The message.
        id: MessageId,
        /// Its `seq`.
        seq: i64,
        /// Always `[message deleted]`.
        body: String,
        /// Always true.
        deleted: bool,
        /// The thread's change number this deletion took (see `resume`'s `last_change`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_seq: Option<i64>,
    },
    /// A message was edited.
    MessageEdited {
        /// The thread.
        thread_id: ThreadId,
        /// The message.
        id: MessageId,
        /// Its `seq`.
        seq: i64,
        /// The new text.
        body: String,
        /// When it was edited.
        edited_at: DateTime<Utc>,
        /// The thread's change number this edit took (see `resume`'s `last_change`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_seq: Option<i64>,
    },
    /// A reaction was added or removed.
    Reaction {
        /// The thread.
        thread_id: ThreadId,
        /// The message.
        message_id: MessageId,
        /// Who reacted.
        user_id: UserId,
        /// The emoji.
        emoji: String,
        /// True when added, false when removed.
        added: bool,
        /// How many users now react with this emoji.
        count: i64,
        /// The thread's change number this change took (see `resume`'s `last_change`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_seq: Option<i64>,
    },
    /// A message the client already has changed while it was away (edited, deleted, reacted
    /// to): replayed by `resume` when asked with `last_change`, as the message is now.
    MessageChanged {
        /// The change number of its latest change.
        change_seq: i64,
        /// The message as it is now (reaction counts as the caller sees them).
        message: Message,
    },
    /// A member read a thread up to `seq` (read receipts; also syncs your other devices).
    Read {
        /// The thread.
        thread_id: ThreadId,
        /// Who read.
        user_id: UserId,
        /// Up to which `seq`.
        seq: i64,
    },
    /// A member is typing; forget it after `expires_ms` without a refresh.
    Typing {
        /// The thread.
        thread_id: ThreadId,
        /// Who is typing.
        user_id: UserId,
        /// How long the indicator lasts without a refresh.
        expires_ms: u64,
    },
    /// You were added to a new thread.
    ThreadCreated {
        /// The thread with its members.
        thread: Thread,
    },
    /// Someone (possibly you) joined a thread you are in.
    MemberJoined {
        /// The thread.
        thread_id: ThreadId,
        /// Who joined.
        user: UserRef,
        /// The thread's last `seq` when they joined; they receive what comes after.
        last_seq: i64,
    },
    /// Someone (possibly you) left a thread.
    MemberLeft {
        /// The thread.
        thread_id: ThreadId,
        /// Who left.
        user_id: UserId,
    },
    /// A user you share a thread with came online or went offline.
    Presence {
        /// The user.
        user_id: UserId,
        /// Their new status.
        status: PresenceStatus,
        /// When they were last connected (offline events only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<DateTime<Utc>>,
    },
}

impl ServerFrame {
    /// An error frame answering request `req`.
    pub fn error(req: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            req,
            code,
            message: message.into(),
        }
    }

    /// Serialize to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail (no maps with non-string keys, no foreign types),
        // so a failure would be a bug; an empty object keeps the connection alive regardless.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Append the JSON of `ServerFrame::Message(msg)` to `out` without cloning `msg`: the
    /// node that stores a message serializes it once for every node, and the copy of its body
    /// that building the frame would make is pure overhead there.
    pub fn write_message_json(msg: &Message, out: &mut Vec<u8>) {
        /// The `message` variant of [`ServerFrame`], borrowing: the same tag, the same fields
        /// in the same order (a unit test compares the bytes).
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Borrowed<'a> {
            Message(&'a Message),
        }
        let mark = out.len();
        if serde_json::to_writer(&mut *out, &Borrowed::Message(msg)).is_err() {
            // As in `to_json`: cannot happen for these types; keep the output well-formed.
            out.truncate(mark);
            out.extend_from_slice(b"{}");
        }
    }
}

/// The reason a server closed a WebSocket, with its close code.
/// Codes 4000–4099 are Confab's own (see `docs/guarantees.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: the client closed, or logged out.
    Normal,
    /// 1008: the token expired or was revoked mid-session.
    PolicyViolation,
    /// 1009: a frame exceeded the configured maximum size.
    TooBig,
    /// 1011: unexpected server error.
    InternalError,
    /// 1012: the node is draining (deploy or scale-down); reconnect elsewhere and resume.
    ServiceRestart,
    /// 1013: the node refuses new sessions for now (admission control); retry with backoff.
    TryAgainLater,
    /// 4000: the client did not read fast enough; its outbound queue overflowed.
    SlowConsumer,
    /// 4001: no pong or frame from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// 4002: the client kept sending after being rate-limited.
    RateLimited,
    /// 1007: the client sent a text frame that is not valid UTF-8.
    UnsupportedData,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::PolicyViolation => 1008,
            Self::TooBig => 1009,
            Self::InternalError => 1011,
            Self::ServiceRestart => 1012,
            Self::TryAgainLater => 1013,
            Self::SlowConsumer => 4000,
            Self::HeartbeatTimeout => 4001,
            Self::RateLimited => 4002,
            Self::UnsupportedData => 1007,
        }
    }

    /// The reason for a close code this server sends, if it is one of them.
    pub fn from_code(code: u16) -> Option<Self> {
        [
            Self::Normal,
            Self::PolicyViolation,
            Self::TooBig,
            Self::InternalError,
            Self::ServiceRestart,
            Self::TryAgainLater,
            Self::SlowConsumer,
            Self::HeartbeatTimeout,
            Self::RateLimited,
            Self::UnsupportedData,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    /// A short reason text sent with the close frame.
    pub fn description(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::PolicyViolation => "token expired or revoked",
            Self::TooBig => "frame too large",
            Self::InternalError => "internal error",
            Self::ServiceRestart => "node draining, reconnect and resume",
            Self::TryAgainLater => "node busy, retry with backoff",
            Self::SlowConsumer => "slow consumer",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::RateLimited => "rate limited",
            Self::UnsupportedData => "invalid UTF-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn send_frame_matches_the_contract() {
        let tid = ThreadId::new();
        let v = json!({"type":"send","req":"r1","thread_id":tid,"client_msg_id":"c1","body":"hi"});
        let f: ClientFrame =
            serde_json::from_value(v).unwrap_or(ClientFrame::Ping { req: "x".into() });
        assert_eq!(
            f,
            ClientFrame::Send {
                req: "r1".into(),
                thread_id: tid,
                client_msg_id: "c1".into(),
                body: "hi".into()
            }
        );
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let tid = ThreadId::new();
        let extra = json!({"type":"send","req":"r1","thread_id":tid,"client_msg_id":"c1","body":"hi","x":1});
        assert!(serde_json::from_value::<ClientFrame>(extra).is_err());
        assert!(serde_json::from_value::<ClientFrame>(json!({"type":"nope","req":"r"})).is_err());
        assert!(serde_json::from_value::<ClientFrame>(
            json!({"type":"send","req":"r","thread_id":"not-a-uuid","client_msg_id":"c","body":"b"})
        )
        .is_err());
    }

    #[test]
    fn ack_and_error_frames_match_the_contract() {
        let ack = ServerFrame::Ack {
            req: "r1".into(),
            thread_id: ThreadId::new(),
            client_msg_id: "c1".into(),
            id: MessageId::new(),
            seq: 7,
            created_at: Utc::now(),
            duplicate: false,
        };
        let v: serde_json::Value = serde_json::from_str(&ack.to_json()).unwrap_or_default();
        assert_eq!(v["type"], "ack");
        assert_eq!(v["req"], "r1");
        assert_eq!(v["seq"], 7);
        assert!(v.get("duplicate").is_none());
        let err = ServerFrame::error(Some("r1".into()), ErrorCode::NotMember, "no");
        let v: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap_or_default();
        assert_eq!(
            v,
            json!({"type":"error","req":"r1","code":"not_member","message":"no"})
        );
    }

    #[test]
    fn message_frame_is_flat() {
        let m = Message {
            thread_id: ThreadId::new(),
            id: MessageId::new(),
            seq: 3,
            sender_id: UserId::new(),
            client_msg_id: "c".into(),
            body: "hi".into(),
            created_at: Utc::now(),
            deleted: false,
            edited_at: None,
            reactions: vec![],
        };
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(m).to_json()).unwrap_or_default();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["body"], "hi");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = uuid::Uuid> {
        any::<u128>().prop_map(uuid::Uuid::from_u128)
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (".{0,20}", id(), ".{0,20}", ".{0,200}").prop_map(|(req, t, c, body)| {
                ClientFrame::Send {
                    req,
                    thread_id: ThreadId(t),
                    client_msg_id: c,
                    body,
                }
            }),
            (".{0,20}", id(), any::<i64>()).prop_map(|(req, t, seq)| ClientFrame::MarkRead {
                req,
                thread_id: ThreadId(t),
                seq
            }),
            (
                ".{0,20}",
                prop::collection::vec((id(), any::<i64>(), any::<Option<i64>>()), 0..4)
            )
                .prop_map(|(req, v)| {
                    ClientFrame::Resume {
                        req,
                        threads: v
                            .into_iter()
                            .map(|(t, s, c)| ResumePoint {
                                thread_id: ThreadId(t),
                                last_seq: s,
                                last_change: c,
                            })
                            .collect(),
                    }
                }),
            (".{0,20}", id(), ".{0,8}").prop_map(|(req, m, emoji)| ClientFrame::React {
                req,
                message_id: MessageId(m),
                emoji
            }),
            ".{0,20}".prop_map(|req| ClientFrame::Ping { req }),
        ]
    }

    proptest! {
        #[test]
        fn any_text_decodes_or_errors_without_panicking(s in ".{0,300}") {
            let _ = serde_json::from_str::<ClientFrame>(&s);
        }

        #[test]
        fn borrowed_message_json_is_the_frames_json(
            (t, m, u) in (id(), id(), id()),
            seq in any::<i64>(),
            client_msg_id in ".{0,20}",
            body in ".{0,200}",
            micros in 0i64..4_000_000_000_000_000,
            deleted in any::<bool>(),
            edited in any::<bool>(),
            reactions in prop::collection::vec((".{0,8}", any::<i64>(), any::<bool>()), 0..3),
        ) {
            let created_at = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
            let msg = Message {
                thread_id: ThreadId(t),
                id: MessageId(m),
                seq,
                sender_id: UserId(u),
                client_msg_id,
                body,
                created_at,
                deleted,
                edited_at: edited.then_some(created_at),
                reactions: reactions
                    .into_iter()
                    .map(|(emoji, count, me)| ReactionCount { emoji, count, me })
                    .collect(),
            };
            let mut out = b"prefix ".to_vec();
            ServerFrame::write_message_json(&msg, &mut out);
            let expected = format!("prefix {}", ServerFrame::Message(msg).to_json());
            prop_assert_eq!(String::from_utf8(out).ok(), Some(expected));
        }

        #[test]
        fn client_frames_round_trip(f in client_frame()) {
            let text = serde_json::to_string(&f).unwrap_or_default();
            let back: Result<ClientFrame, _> = serde_json::from_str(&text);
            prop_assert_eq!(back.ok(), Some(f));
        }
    }
}
