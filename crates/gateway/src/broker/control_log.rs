//! The control log: every membership and session announcement is also appended to a Redis
//! stream, so that a node which was re-subscribing when it was published (pub/sub keeps
//! nothing) reads it back when its subscription is up again.
//!
//! A logged announcement travels as the event's JSON with the stream entry id spliced in first:
//! `{"log_id":"1700000000000-0","k":"joined",…}`. A node that knows nothing of the log (an older
//! one, during a rolling upgrade) reads it as the same event: the extra field is ignored. A node
//! that does remembers the last id it handled and skips anything at or below it, so an
//! announcement heard both live and from the log is handled once.

use bytes::Bytes;

/// Append to the log (trimmed to about `ARGV[3]` entries) and publish, in one step, so the two
/// can never disagree. `KEYS[1]` the stream, `ARGV[1]` the channel, `ARGV[2]` the event's JSON.
pub(super) const APPEND_AND_PUBLISH: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[2])
redis.call('PUBLISH', ARGV[1], '{"log_id":"' .. id .. '",' .. string.sub(ARGV[2], 2))
return id
"#;

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
}
