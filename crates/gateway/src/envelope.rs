//! What travels between nodes: thread-channel envelopes and control-channel events.
//!
//! A thread-channel payload is a one-line header followed by the exact frame clients receive,
//! so a receiving node forwards the bytes without re-serializing them:
//! `m <seq> <published_micros> <sender>\n{frame}` for messages,
//! `e <published_micros> <exclude|->\n{frame}` for other events.
//!
//! `<sender>` came later (older nodes publish `m <seq> <published_micros>` and ignore what
//! follows it): a session holding its client's own echo behind a pending `ack` compares ids
//! instead of searching every delivered frame for its user's id.

use confab_protocol::{Message, ServerFrame, ThreadId, UserId};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// A parsed thread-channel payload (borrowing the frame bytes).
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The message `seq`, for message frames.
    pub seq: Option<i64>,
    /// When the publisher published it (µs since the epoch), for the fan-out latency metric.
    pub published_micros: Option<i64>,
    /// A user whose sessions must not get this event.
    pub exclude: Option<UserId>,
    /// Who sent the message, for message frames (absent from older nodes' envelopes).
    pub sender: Option<UserId>,
    /// The frame to forward.
    pub frame: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parse a payload; `None` when malformed.
    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        let nl = payload.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&payload[..nl]).ok()?;
        let frame = &payload[nl + 1..];
        let mut parts = header.split(' ');
        match parts.next()? {
            "m" => Some(Self {
                seq: Some(parts.next()?.parse().ok()?),
                published_micros: parts.next().and_then(|p| p.parse().ok()),
                exclude: None,
                sender: parts.next().and_then(|p| p.parse().ok()),
                frame,
            }),
            "e" => Some(Self {
                seq: None,
                published_micros: parts.next().and_then(|p| p.parse().ok()),
                exclude: parts.next().and_then(|p| p.parse().ok()),
                sender: None,
                frame,
            }),
            _ => None,
        }
    }

    /// Build a message payload: the header, then the `message` frame serialized straight
    /// after it in the same buffer (one allocation, no copy of the body).
    pub fn message(msg: &Message) -> bytes::Bytes {
        let now = chrono::Utc::now().timestamp_micros();
        let mut out = Vec::with_capacity(message_capacity(msg));
        // Writing to a Vec cannot fail.
        let _ = writeln!(out, "m {} {now} {}", msg.seq, msg.sender_id);
        ServerFrame::write_message_json(msg, &mut out);
        bytes::Bytes::from(out)
    }

    /// Build an event payload.
    pub fn event(exclude: Option<UserId>, frame: &str) -> bytes::Bytes {
        let now = chrono::Utc::now().timestamp_micros();
        let ex = exclude.map_or_else(|| "-".to_owned(), |u| u.to_string());
        bytes::Bytes::from(format!("e {now} {ex}\n{frame}"))
    }
}

/// Room for a message envelope: the header and the frame's fixed part (field names, three ids,
/// `seq`, timestamps; 401 bytes at most, measured by the test below) around the two strings, so
/// that serializing into it never grows the buffer for a message without escapes. (A first
/// guess of 160 grew it for every message.)
fn message_capacity(msg: &Message) -> usize {
    448 + msg.body.len() + msg.client_msg_id.len()
}

/// Events on the control channel, which every node hears. Used for what is addressed to users
/// rather than to a thread's subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum ControlEvent {
    /// Users joined a thread: their sessions start receiving it after `last_seq`, and get
    /// `frame` (a `thread_created`).
    Joined {
        /// The thread.
        thread: ThreadId,
        /// Who joined.
        users: Vec<UserId>,
        /// The thread's head at the join.
        last_seq: i64,
        /// Sent to each of their sessions.
        frame: String,
    },
    /// A user left a thread: their sessions stop receiving it and get `frame`.
    Left {
        /// The thread.
        thread: ThreadId,
        /// Who left.
        user: UserId,
        /// Sent to each of their sessions.
        frame: String,
    },
    /// A user is leaving a thread: their sessions stop receiving it now, before the removal
    /// is stored (see `Chat::leave`); [`ControlEvent::Left`] follows once it is.
    Leaving {
        /// The thread.
        thread: ThreadId,
        /// Who is leaving.
        user: UserId,
    },
    /// Close every session of this user with "reconnect and resume" (1012): a leave announced
    /// but not stored left them out of a thread they are still in.
    Resync {
        /// The user.
        user: UserId,
        /// The thread they did not leave after all.
        thread: ThreadId,
    },
    /// A frame for every session of these users.
    ToUsers {
        /// The users.
        users: Vec<UserId>,
        /// The frame.
        frame: String,
    },
    /// A frame for every local session in any of these threads, once per session.
    ToThreads {
        /// The threads.
        threads: Vec<ThreadId>,
        /// A user whose sessions must not get it.
        exclude: Option<UserId>,
        /// The frame.
        frame: String,
    },
    /// Close every session opened with this token (logout).
    Kick {
        /// First 8 bytes of the token's hash.
        token_tag: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            thread_id: ThreadId::new(),
            id: confab_protocol::MessageId::new(),
            seq: 42,
            sender_id: UserId::new(),
            client_msg_id: "c1".into(),
            body: "hi \"there\"\n".into(),
            created_at: chrono::Utc::now(),
            deleted: false,
            edited_at: None,
            reactions: vec![],
        }
    }

    #[test]
    fn message_envelope_round_trips() {
        let msg = message();
        let p = Envelope::message(&msg);
        let e = Envelope::parse(&p);
        assert!(matches!(e, Some(Envelope { seq: Some(42), .. })));
        assert_eq!(e.as_ref().and_then(|e| e.sender), Some(msg.sender_id));
        assert_eq!(
            e.map(|e| e.frame.to_vec()),
            Some(ServerFrame::Message(msg).to_json().into_bytes())
        );
    }

    #[test]
    fn a_message_envelope_fits_the_room_made_for_it() {
        let mut msg = message();
        msg.seq = i64::MAX;
        msg.body = "x".repeat(1000);
        msg.client_msg_id = "c".repeat(64);
        msg.edited_at = Some(msg.created_at);
        msg.deleted = true;
        let p = Envelope::message(&msg);
        assert!(p.len() <= message_capacity(&msg), "{} bytes", p.len());
    }

    #[test]
    fn an_older_nodes_message_envelope_has_no_sender() {
        let e = Envelope::parse(b"m 7 1700000000000000\n{}");
        assert!(matches!(
            e,
            Some(Envelope {
                seq: Some(7),
                sender: None,
                ..
            })
        ));
        assert_eq!(e.map(|e| e.frame.to_vec()), Some(b"{}".to_vec()));
    }

    #[test]
    fn event_envelope_carries_exclusion() {
        let u = UserId::new();
        let p = Envelope::event(Some(u), "{}");
        let e = Envelope::parse(&p);
        assert_eq!(e.as_ref().and_then(|e| e.exclude), Some(u));
        assert_eq!(e.and_then(|e| e.seq), None);
        assert!(Envelope::parse(b"garbage").is_none());
        assert!(Envelope::parse(b"x 1\n{}").is_none());
    }
}
