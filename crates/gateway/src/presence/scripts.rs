//! The Lua scripts behind Redis presence. Each runs atomically in Redis, so "add a session and
//! tell me whether the user's count went 0→1", "settle an offline exactly once" and "sweep a dead
//! node" never race between nodes. Times come from Redis `TIME` (one clock for every node).
//!
//! Keys (see `keys.rs`): `presence:{user}` hash session → node; `presence_meta:{user}` hash
//! `v` (version, bumped by every 0↔1 change) and `ls` (last seen, ms); `presence_pending` zset
//! user → when the offline event is due (ms); `nodes` zset node → last heartbeat (ms);
//! `node:{node}:alive` heartbeat string with a TTL; `node:{node}:sessions` hash session → user.
//!
//! A presence event is published the way every control announcement is (see the broker's
//! `control_log`): appended to the control log stream and published with the entry's id
//! spliced in, in the same atomic step. A node whose pub/sub connection was down when the
//! event went out reads it back from the log once it has resubscribed; without that, its
//! sessions kept showing the user in the state before, until the user's next transition.

use crate::broker::control_log::log_and_publish_lua;

/// Current time in milliseconds, from Redis.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// KEYS: user sessions, node sessions, user meta, pending, nodes, control log.
/// ARGV: session, node, user, channel, online event ('' = none), control log length.
/// Returns the new version (> 0) when the user came online and an online event is due (and
/// publishes the event given, in the same atomic step); its negation when they came back within
/// the grace period (no event); 0 when nothing changed.
pub const OPEN: &str = concat!(
    now_ms!(),
    log_and_publish_lua!(),
    r"
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 0 or redis.call('HLEN', KEYS[1]) > 1 then
  return 0
end
local v = redis.call('HINCRBY', KEYS[3], 'v', 1)
local due = redis.call('ZSCORE', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
if due and tonumber(due) > now then
  return -v
end
if ARGV[5] ~= '' then
  log_and_publish(KEYS[6], ARGV[6], ARGV[4], ARGV[5])
end
return v
"
);

/// KEYS: user meta, user sessions, control log. ARGV: version, channel, payload, control log
/// length.
/// Publishes the online event if the user is online and unchanged since `version` (for
/// transitions found by a resync; a session's own open publishes with `OPEN`).
pub const ANNOUNCE: &str = concat!(
    log_and_publish_lua!(),
    r"
if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
if redis.call('HLEN', KEYS[2]) == 0 then
  return 0
end
log_and_publish(KEYS[3], ARGV[4], ARGV[2], ARGV[3])
return 1
"
);

/// KEYS: user sessions, node sessions, user meta, pending. ARGV: session, user, grace (ms).
/// Returns `{version, now}` when that was the user's last session (offline pending), else
/// `{0, 0}`.
pub const CLOSE: &str = concat!(
    now_ms!(),
    r"
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 or redis.call('HLEN', KEYS[1]) > 0 then
  return {0, 0}
end
local v = redis.call('HINCRBY', KEYS[3], 'v', 1)
redis.call('HSET', KEYS[3], 'ls', now)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[2])
return {v, now}
"
);

/// KEYS: user sessions, user meta, pending, control log.
/// ARGV: user, version, channel, payload ('' = none), control log length.
/// Returns 0 when settled (and published), > 0 the milliseconds until due, -1 when moot.
pub const SETTLE: &str = concat!(
    now_ms!(),
    log_and_publish_lua!(),
    r"
if redis.call('HLEN', KEYS[1]) > 0 then
  return -1
end
if tonumber(redis.call('HGET', KEYS[2], 'v') or '0') ~= tonumber(ARGV[2]) then
  return -1
end
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not due then
  return -1
end
if tonumber(due) > now then
  return tonumber(due) - now
end
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[4] ~= '' then
  log_and_publish(KEYS[4], ARGV[5], ARGV[3], ARGV[4])
end
return 0
"
);

/// KEYS: pending. ARGV: slack (ms), limit, user-sessions key prefix, user-meta key prefix.
/// Returns a flat list `user, version, last_seen, …` of pending offlines overdue by more than
/// `slack`; drops entries of users who are online (stale).
pub const OVERDUE: &str = concat!(
    now_ms!(),
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, u in ipairs(due) do
  if redis.call('HLEN', ARGV[3] .. u) > 0 then
    redis.call('ZREM', KEYS[1], u)
  else
    local m = redis.call('HMGET', ARGV[4] .. u, 'v', 'ls')
    table.insert(out, u)
    table.insert(out, tonumber(m[1] or '0'))
    table.insert(out, tonumber(m[2] or now))
  end
end
return out
"
);

/// KEYS: nodes, pending.
/// ARGV: mode (`dead`: every other node whose heartbeat expired; `own`: this node), this node,
/// batch, grace (ms), alive-key prefix, alive-key suffix, node-sessions prefix, node-sessions
/// suffix, user-sessions prefix, user-meta prefix.
/// Removes up to `batch` sessions and returns `{more, user, version, last_seen, …}` for each
/// user left with no session (their offline becomes pending; last seen = the node's last
/// heartbeat). A dead node whose sessions are all gone leaves the `nodes` set. Atomic per call,
/// so each session is removed exactly once and each user is vacated exactly once, however many
/// survivors sweep at the same time.
pub const SWEEP: &str = concat!(
    now_ms!(),
    r"
local budget = tonumber(ARGV[3])
local out = {0}
local function clear(node, seen)
  local hk = ARGV[7] .. node .. ARGV[8]
  local fields = redis.call('HRANDFIELD', hk, budget, 'WITHVALUES')
  for i = 1, #fields, 2 do
    local sid, user = fields[i], fields[i + 1]
    redis.call('HDEL', hk, sid)
    local uk = ARGV[9] .. user
    if redis.call('HDEL', uk, sid) == 1 and redis.call('HLEN', uk) == 0 then
      local mk = ARGV[10] .. user
      local v = redis.call('HINCRBY', mk, 'v', 1)
      redis.call('HSET', mk, 'ls', seen)
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), user)
      table.insert(out, user)
      table.insert(out, v)
      table.insert(out, seen)
    end
    budget = budget - 1
  end
  return redis.call('EXISTS', hk) == 0
end
if ARGV[1] == 'own' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[2])
  clear(ARGV[2], seen and tonumber(seen) or now)
else
  local nodes = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #nodes, 2 do
    if budget <= 0 then
      break
    end
    local node = nodes[i]
    if node ~= ARGV[2] and redis.call('EXISTS', ARGV[5] .. node .. ARGV[6]) == 0 then
      if clear(node, tonumber(nodes[i + 1])) then
        redis.call('ZREM', KEYS[1], node)
      end
    end
  end
end
if budget <= 0 then
  out[1] = 1
end
return out
"
);

/// KEYS: this node's alive key, nodes. ARGV: node, TTL (ms).
/// Refreshes the heartbeat; returns whether it was still alive (0: it had lapsed, so survivors
/// may have swept this node's sessions and they must be registered again).
pub const BEAT: &str = concat!(
    now_ms!(),
    r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
return existed
"
);
