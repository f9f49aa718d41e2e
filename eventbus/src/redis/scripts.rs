//! The Lua scripts of the Redis backend. Each runs atomically on the server and touches keys of
//! one hash slot (a partition's stream, its DLQ and its leases; or a topic's member registry),
//! except the multi-partition read, renew and view scripts, which are used on a single server
//! only (one call per partition on a cluster).
//!
//! The fence: a partition's lease hash holds `owner` (a member id), `epoch` (incremented by
//! every acquisition, never reset) and `until` (expiry, in ms of the server's clock). Reads,
//! acknowledgements, dead-letter writes and hand-backs first check `owner` and `epoch` against
//! the caller's; a member whose lease was taken over cannot touch the partition any more. A
//! lease that expired but was not taken over still fences correctly: nobody else wrote since.

use std::sync::LazyLock;

use redis::Script;

/// The server's time in ms, as a Lua snippet defining `now`.
const NOW: &str = "local t = redis.call('TIME')\n\
                   local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Reads new entries of held partitions.
/// KEYS: lease, stream (per partition). ARGV: group, member, consumer, budget, epoch (per
/// partition). Returns per partition `{0}` (lease lost), `{1, entries}`, `{2}` (nothing new)
/// or `{3}` (not read: the budget was spent).
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local group, member, consumer = ARGV[1], ARGV[2], ARGV[3]
local budget = tonumber(ARGV[4])
local out = {}
for i = 1, #KEYS / 2 do
  local lease, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local l = redis.call('HMGET', lease, 'owner', 'epoch')
  if l[1] ~= member or l[2] ~= ARGV[4 + i] then
    out[i] = {0}
  elseif budget <= 0 then
    out[i] = {3}
  else
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', budget, 'STREAMS', stream, '>')
    if r then
      local entries = r[1][2]
      budget = budget - #entries
      out[i] = {1, entries}
    else
      out[i] = {2}
    end
  end
end
return out
",
    )
});

/// Claims a page of a partition's pending entries (any consumer's) for this member, in stream
/// order. KEYS: lease, stream. ARGV: group, member, epoch, consumer, start (`-` or `(id`),
/// count, ids to skip (in flight here)... Returns `{0}` (lease lost) or
/// `{1, entries, rows, last, done, last_delivered}` where rows are `{id, count}` of the pending
/// entries seen (counts before this claim), `last` the last id seen, `done` 1 when the page
/// was the last, and `last_delivered` the group's last delivered id when done.
pub(crate) static DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local group, member, epoch, consumer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= member or l[2] ~= epoch then return {0} end
local count = tonumber(ARGV[6])
local skip = {}
for i = 7, #ARGV do skip[ARGV[i]] = true end
local rows = redis.call('XPENDING', KEYS[2], group, ARGV[5], '+', count)
local ids, seen = {}, {}
local last = ''
for _, row in ipairs(rows) do
  last = row[1]
  seen[#seen + 1] = {row[1], row[4]}
  if not skip[row[1]] then ids[#ids + 1] = row[1] end
end
local entries = {}
if #ids > 0 then
  entries = redis.call('XCLAIM', KEYS[2], group, consumer, 0, unpack(ids))
end
local done = 0
local delivered = ''
if #rows < count then
  done = 1
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local name, last_id = nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then last_id = g[j + 1] end
    end
    if name == group then delivered = last_id end
  end
end
return {1, entries, seen, last, done, delivered}
",
    )
});

/// Acknowledges entries of one partition. KEYS: lease, stream. ARGV: group, member, epoch,
/// ids... Returns the count acknowledged, or -1 when the lease was lost.
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= ARGV[2] or l[2] ~= ARGV[3] then return -1 end
return redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, 4))
",
    )
});

/// Moves one entry to the partition's DLQ and acknowledges it, once. KEYS: lease, stream, dlq.
/// ARGV: group, member, epoch, id, dlq max length (0: unbounded), event, error, failed_at,
/// consumer. Returns 1 (moved), 0 (no longer pending: already handled), -1 (lease lost).
pub(crate) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= ARGV[2] or l[2] ~= ARGV[3] then return -1 end
local p = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[4], ARGV[4], 1)
if #p == 0 then return 0 end
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[6], 'error', ARGV[7],
    'failed_at', ARGV[8], 'group', ARGV[1], 'consumer', ARGV[9], 'entry', ARGV[4])
else
  redis.call('XADD', KEYS[3], '*', 'event', ARGV[6], 'error', ARGV[7],
    'failed_at', ARGV[8], 'group', ARGV[1], 'consumer', ARGV[9], 'entry', ARGV[4])
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[4])
return 1
",
    )
});

/// Takes a free or expired lease with a new epoch. KEYS: lease. ARGV: member, ttl ms. Returns
/// the new epoch, or 0 when another member holds it.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local l = redis.call('HMGET', KEYS[1], 'owner', 'until')
if l[1] and l[1] ~= '' and l[1] ~= ARGV[1] and tonumber(l[2] or '0') > now then return 0 end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', string.format('%d', now + tonumber(ARGV[2])))
return epoch
"
    ))
});

/// Extends held leases. KEYS: leases. ARGV: member, ttl ms, epoch (per lease). Returns 1 or 0
/// per lease.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local out = {{}}
for i = 1, #KEYS do
  local l = redis.call('HMGET', KEYS[i], 'owner', 'epoch')
  if l[1] == ARGV[1] and l[2] == ARGV[2 + i] then
    redis.call('HSET', KEYS[i], 'until', string.format('%d', now + tonumber(ARGV[2])))
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"
    ))
});

/// Hands entries that never started back (restoring their delivery counts) and optionally
/// frees the lease. KEYS: lease, stream. ARGV: member, epoch, group, consumer, free (1/0), then
/// id, count pairs. Returns 1, or -1 when the lease was lost.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local l = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if l[1] ~= ARGV[1] or l[2] ~= ARGV[2] then return -1 end
for i = 6, #ARGV, 2 do
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'owner', '', 'until', '0')
end
return 1
",
    )
});

/// Reads leases. KEYS: leases. Returns per lease `{owner, epoch, ms left}` (`owner` empty when
/// free; ms left may be negative once expired).
pub(crate) static VIEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local out = {{}}
for i = 1, #KEYS do
  local l = redis.call('HMGET', KEYS[i], 'owner', 'epoch', 'until')
  out[i] = {{l[1] or '', tonumber(l[2] or '0'), tonumber(l[3] or '0') - now}}
end
return out
"
    ))
});

/// Registers a member and returns the live ones. KEYS: members. ARGV: member, ttl ms.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"
    ))
});

/// Live members. KEYS: members.
pub(crate) static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"
    ))
});

/// Moves a dead letter back to its partition's stream. KEYS: dlq, stream. ARGV: dlq entry id,
/// then the trimming arguments of `XADD` (may be none). Returns 1, or 0 when the dead letter
/// is gone.
pub(crate) static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local fields = e[1][2]
local event = ''
for i = 1, #fields, 2 do
  if fields[i] == 'event' then event = fields[i + 1] end
end
local args = {KEYS[2]}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = '*'
args[#args + 1] = 'event'
args[#args + 1] = event
redis.call('XADD', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
",
    )
});
