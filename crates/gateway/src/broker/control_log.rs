//! The control log: every membership and session announcement (and every presence event, which
//! the presence scripts append themselves) is also appended to a Redis stream, so that a node
//! which was re-subscribing when it was published (pub/sub keeps nothing) reads it back when
//! its subscription is up again.
//!
//! A logged announcement travels as the event's JSON with the stream entry id spliced in first:
//! `{"log_id":"1700000000000-0","k":"joined",…}`. A node that knows nothing of the log (an older
//! one, during a rolling upgrade) reads it as the same event: the extra field is ignored. A node
//! that does remembers the last id it handled and skips anything at or below it, so an
//! announcement heard both live and from the log is handled once.
//!
//! Each announcement also carries an event id of its own, spliced in by its announcer
//! (`{"eid":"<32 hex digits>","k":…}`, behind the `log_id` once logged) and kept across its
//! retries. A retry after a timeout is a second log entry with a new log id — the first attempt
//! may have run after all — so the log id cannot tell the two apart; the event id can, and a
//! node handles each event id once ([`RecentIds`]).

use bytes::Bytes;
use std::collections::{HashSet, VecDeque};

/// The Lua function every logged announcement goes out through, here and in the presence
/// scripts (which log their events in the same atomic step as the transition):
/// `log_and_publish(stream, max, channel, ev)` appends `ev` to the log `stream` (trimmed to about
/// `max` entries), publishes it on `channel` with the entry id spliced in first
/// (`{"log_id":"<id>",…}`, what [`id_of`] reads back), and returns the id.
macro_rules! log_and_publish_lua {
    () => {
        r#"
local function log_and_publish(stream, max, channel, ev)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', max, '*', 'p', ev)
  redis.call('PUBLISH', channel, '{"log_id":"' .. id .. '",' .. string.sub(ev, 2))
  return id
end
"#
    };
}
pub(crate) use log_and_publish_lua;

/// Append to the log (trimmed to about `ARGV[3]` entries) and publish, in one step, so the two
/// can never disagree. `KEYS[1]` the stream, `ARGV[1]` the channel, `ARGV[2]` the event's JSON.
pub(super) const APPEND_AND_PUBLISH: &str = concat!(
    log_and_publish_lua!(),
    "return log_and_publish(KEYS[1], ARGV[3], ARGV[1], ARGV[2])\n"
);

const PREFIX: &[u8] = br#"{"log_id":""#;

/// A stream entry id, `<milliseconds>-<sequence>`, ordered as Redis orders them.
pub(super) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The log id of a published announcement (`None` for one published without the log).
pub(super) fn id_of(payload: &[u8]) -> Option<(u64, u64)> {
    let rest = payload.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    parse_id(std::str::from_utf8(&rest[..end]).ok()?)
}

const EVENT_ID: &[u8] = br#""eid":""#;

/// The event id an announcement was published with (`None` for one without: an older node's).
pub(super) fn event_id_of(payload: &[u8]) -> Option<u128> {
    // Behind the log id, if there is one: `{"log_id":"…","eid":"…"` or `{"eid":"…"`.
    let rest = match payload.strip_prefix(PREFIX) {
        Some(rest) => &rest[rest.iter().position(|b| *b == b'"')? + 2..],
        None => payload.strip_prefix(b"{")?,
    };
    let hex = rest.strip_prefix(EVENT_ID)?.get(..32)?;
    u128::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The most recent event ids handled, at most `max` of them (oldest forgotten first). A
/// retried announcement comes within seconds of its first attempt, far inside the window.
pub(super) struct RecentIds {
    order: VecDeque<u128>,
    set: HashSet<u128>,
    max: usize,
}

impl RecentIds {
    /// A window of `max` ids.
    pub(super) fn new(max: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            max: max.max(1),
        }
    }

    /// Whether an announcement with this event id is new here (and remember it). Those
    /// without one always are.
    pub(super) fn first_time(&mut self, id: Option<u128>) -> bool {
        let Some(id) = id else { return true };
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// An entry read back from the log, as it was published.
pub(super) fn as_published(id: &str, event: &[u8]) -> Option<Bytes> {
    let body = event.strip_prefix(b"{")?;
    let mut out = Vec::with_capacity(PREFIX.len() + id.len() + 2 + body.len());
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(body);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_as_redis_orders_them() {
        assert!(parse_id("1700000000000-2") < parse_id("1700000000000-10"));
        assert!(parse_id("1700000000000-10") < parse_id("1700000000001-0"));
        assert_eq!(parse_id("nonsense"), None);
        assert_eq!(parse_id("1-x"), None);
    }

    #[test]
    fn an_entry_read_back_is_the_announcement_as_published_and_names_its_id() {
        let event = br#"{"k":"kick","token_tag":7}"#;
        let p = as_published("1700000000000-3", event).unwrap_or_default();
        assert_eq!(
            &p[..],
            br#"{"log_id":"1700000000000-3","k":"kick","token_tag":7}"#
        );
        assert_eq!(id_of(&p), Some((1_700_000_000_000, 3)));
        assert_eq!(id_of(event), None, "published without the log");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
        assert_eq!(v["k"], "kick");
    }

    #[test]
    fn the_event_id_is_found_behind_the_log_id_or_alone() {
        let event = br#"{"eid":"000000000000000000000000000000ff","k":"kick","token_tag":7}"#;
        assert_eq!(event_id_of(event), Some(255));
        let logged = as_published("1700000000000-3", event).unwrap_or_default();
        assert_eq!(event_id_of(&logged), Some(255));
        assert_eq!(event_id_of(br#"{"k":"kick","token_tag":7}"#), None);
        let old = as_published("1-0", br#"{"k":"kick"}"#).unwrap_or_default();
        assert_eq!(event_id_of(&old), None);
        assert_eq!(event_id_of(br#"{"eid":"12"}"#), None, "too short");
    }

    #[test]
    fn recent_ids_pass_each_id_once_within_the_window() {
        let mut r = RecentIds::new(2);
        assert!(r.first_time(Some(1)));
        assert!(!r.first_time(Some(1)));
        assert!(r.first_time(None) && r.first_time(None));
        assert!(r.first_time(Some(2)));
        assert!(r.first_time(Some(3)), "1 is forgotten now");
        assert!(r.first_time(Some(1)));
        assert!(!r.first_time(Some(3)));
    }
}
