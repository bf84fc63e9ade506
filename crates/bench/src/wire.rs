//! Cheap client-side decoding of the frames the hot path sees (`message`, `ack`, `error`),
//! borrowing from the text instead of building a full `ServerFrame`: the load generator shares
//! the machine's cores with the nodes it measures, so its own cost per frame matters. Other
//! frames are decoded with the real `confab_protocol::ServerFrame`.

use confab_protocol::{ClientFrame, ThreadId};
use serde::Deserialize;
use std::borrow::Cow;

/// The fields of a server frame the load tester looks at.
#[derive(Debug, Deserialize)]
pub struct Peek<'a> {
    /// The frame type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// `seq` of a `message` or `ack`.
    #[serde(default)]
    pub seq: Option<i64>,
    /// Body of a `message`.
    #[serde(default, borrow)]
    pub body: Option<Cow<'a, str>>,
    /// `req` of a reply.
    #[serde(default, borrow)]
    pub req: Option<Cow<'a, str>>,
    /// Sender of a `message`.
    #[serde(default, borrow)]
    pub sender_id: Option<Cow<'a, str>>,
    /// Thread of a `message` or `ack`.
    #[serde(default, borrow)]
    pub thread_id: Option<Cow<'a, str>>,
    /// Code of an `error`.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

/// Decode the interesting fields of a frame (`None` if it is not JSON with a `type`).
pub fn peek(text: &str) -> Option<Peek<'_>> {
    serde_json::from_str(text).ok()
}

/// Whether a message belongs to the warm-up or the measured window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sent during the warm-up: counted for loss, not for latency or rates.
    Warmup,
    /// Sent in the measured window.
    Measured,
}

impl Phase {
    fn tag(self) -> char {
        match self {
            Self::Warmup => 'w',
            Self::Measured => 'm',
        }
    }

    fn from_tag(c: char) -> Option<Self> {
        match c {
            'w' => Some(Self::Warmup),
            'm' => Some(Self::Measured),
            _ => None,
        }
    }
}

/// The body of a benchmark message: `<sent_us> <phase> <padding>`, padded to `len` bytes.
pub fn body(sent_us: u64, phase: Phase, len: usize) -> String {
    let mut b = format!("{sent_us} {} ", phase.tag());
    while b.len() < len {
        b.push('x');
    }
    b
}

/// The send time and phase written into a body.
pub fn parse_body(body: &str) -> Option<(u64, Phase)> {
    let mut it = body.splitn(3, ' ');
    let us = it.next()?.parse().ok()?;
    let phase = Phase::from_tag(it.next()?.chars().next()?)?;
    Some((us, phase))
}

/// The `req` of a send: `<phase><k>.<sent_us>`, so the ack tells when its send left.
pub fn send_req(phase: Phase, k: u64, sent_us: u64) -> String {
    format!("{}{k}.{sent_us}", phase.tag())
}

/// The phase and send time carried by a send's `req`.
pub fn parse_req(req: &str) -> Option<(Phase, u64)> {
    let phase = Phase::from_tag(req.chars().next()?)?;
    let (_, us) = req.split_once('.')?;
    Some((phase, us.parse().ok()?))
}

/// A `send` frame as JSON text.
pub fn send_frame(req: String, thread: ThreadId, client_msg_id: String, body: String) -> String {
    let f = ClientFrame::Send {
        req,
        thread_id: thread,
        client_msg_id,
        body,
    };
    serde_json::to_string(&f).unwrap_or_default()
}

/// The set of `seq`s one client received in one thread: a bitset, so duplicates are detected
/// exactly with one bit per message.
#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    count: u64,
    max: i64,
}

/// Largest `seq` tracked (a protection against a corrupt frame asking for a huge bitset).
const MAX_TRACKED_SEQ: i64 = 1 << 28;

impl SeqSet {
    /// Record `seq`; true when it was new. Sequences outside `1..=2^28` are refused (false).
    pub fn insert(&mut self, seq: i64) -> bool {
        if !(1..=MAX_TRACKED_SEQ).contains(&seq) {
            return false;
        }
        let (word, bit) = ((seq as usize) / 64, seq as usize % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.count += 1;
        self.max = self.max.max(seq);
        true
    }

    /// Whether `seq` was received.
    pub fn contains(&self, seq: i64) -> bool {
        if seq < 1 {
            return false;
        }
        let (word, bit) = ((seq as usize) / 64, seq as usize % 64);
        self.bits.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    /// How many distinct `seq`s were received.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The highest `seq` received (0 for none).
    pub fn max(&self) -> i64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_reqs_round_trip() {
        let b = body(123_456, Phase::Measured, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(parse_body(&b), Some((123_456, Phase::Measured)));
        assert_eq!(
            parse_body(&body(7, Phase::Warmup, 0)),
            Some((7, Phase::Warmup))
        );
        assert_eq!(parse_body("hello"), None);
        let r = send_req(Phase::Warmup, 42, 99);
        assert_eq!(parse_req(&r), Some((Phase::Warmup, 99)));
        assert_eq!(parse_req("x1.2"), None);
    }

    #[test]
    fn seq_sets_count_each_seq_once() {
        let mut s = SeqSet::default();
        assert!(s.insert(1));
        assert!(s.insert(200));
        assert!(!s.insert(200));
        assert!(!s.insert(0));
        assert!(!s.insert(-3));
        assert!(s.contains(200) && s.contains(1) && !s.contains(2));
        assert_eq!((s.len(), s.max()), (2, 200));
    }

    #[test]
    fn frames_are_peeked_without_the_full_type() {
        let t = ThreadId::new();
        let text = send_frame("m1.5".into(), t, "c0-1".into(), "5 m xx".into());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["type"], "send");
        assert_eq!(v["thread_id"], t.to_string());
        let p = peek(r#"{"type":"message","thread_id":"t","id":"i","seq":3,"sender_id":"u","client_msg_id":"c","body":"12 m x","created_at":"2024-01-01T00:00:00Z"}"#)
            .unwrap_or_else(|| panic!("no peek"));
        assert_eq!(p.kind, "message");
        assert_eq!(p.seq, Some(3));
        assert_eq!(p.body.as_deref(), Some("12 m x"));
        assert!(peek("not json").is_none());
    }
}
