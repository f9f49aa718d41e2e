//! The Lua scripts of the Redis store. Each runs atomically on one node: every key a script
//! touches carries the tenant's hash tag (`{orgid}`), so on Redis Cluster all of them are in
//! one slot. Every key is declared in `KEYS`, except the tag keys of `READ` / `READ_MANY`,
//! which the script finds in the stored header (same tenant, so same slot).

/// KEYS[1] entry. ARGV[1] tag key prefix. Returns false, or {value, {tag versions}}.
pub(crate) const READ: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, 5) ~= 'WLC1 ' then return {v, {}} end
local hend = string.find(v, '\n\n', 1, true)
if not hend then return {v, {}} end
local keys = {}
for tag in string.gmatch(string.sub(v, 1, hend), '\nT %S+ ([^\n]+)') do
  keys[#keys + 1] = ARGV[1] .. tag
end
if #keys == 0 then return {v, {}} end
local vers = redis.call('MGET', unpack(keys))
for i = 1, #keys do
  if not vers[i] then vers[i] = '' end
end
return {v, vers}
"#;

/// KEYS entries (one tenant). ARGV[1] tag key prefix. Returns one {value, {versions}} or
/// {false} per key.
pub(crate) const READ_MANY: &str = r#"
local out = {}
for k = 1, #KEYS do
  local v = redis.call('GET', KEYS[k])
  if not v then
    out[k] = {false}
  else
    local keys = {}
    local hend = string.find(v, '\n\n', 1, true)
    if string.sub(v, 1, 5) == 'WLC1 ' and hend then
      for tag in string.gmatch(string.sub(v, 1, hend), '\nT %S+ ([^\n]+)') do
        keys[#keys + 1] = ARGV[1] .. tag
      end
    end
    local vers = {}
    if #keys > 0 then
      vers = redis.call('MGET', unpack(keys))
      for i = 1, #keys do
        if not vers[i] then vers[i] = '' end
      end
    end
    out[k] = {v, vers}
  end
end
return out
"#;

/// KEYS[1] entry, KEYS[2..] tag keys. ARGV[1] TTL (ms) of a tag created here, ARGV[i] (i >= 2)
/// a fresh version for KEYS[i]. Returns {write id ('' absent, '?' garbage), {versions}, now ms}.
pub(crate) const PREPARE: &str = r#"
local cur = redis.call('GET', KEYS[1])
local id = ''
if cur then
  id = string.match(cur, '^WLC1 (%S+)') or '?'
end
local vers = {}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    v = ARGV[i]
    redis.call('SET', KEYS[i], v, 'PX', ARGV[1])
  end
  vers[#vers + 1] = v
end
local t = redis.call('TIME')
return {id, vers, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
"#;

/// KEYS[1] entry, KEYS[2..] tag keys. ARGV[1] expected write id ('*' any, '' absent),
/// ARGV[2] TTL ms, ARGV[3] value, ARGV[4] not-after (unix ms on the server's clock, '0' none),
/// ARGV[5] channel, ARGV[6] notice ('' none), ARGV[7] TTL (ms) the tags must at least keep,
/// ARGV[6 + i] the version KEYS[i] must have. Returns 1 written, 0 refused.
pub(crate) const WRITE: &str = r#"
if ARGV[4] ~= '0' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[4]) then
    return 0
  end
end
if ARGV[1] ~= '*' then
  local cur = redis.call('GET', KEYS[1])
  local id = ''
  if cur then
    id = string.match(cur, '^WLC1 (%S+)') or '?'
  end
  if id ~= ARGV[1] then return 0 end
end
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[6 + i] then return 0 end
end
local keep = tonumber(ARGV[7])
for i = 2, #KEYS do
  -- Extend rarely (to twice what is needed): every PEXPIRE also tells trackers the key changed.
  if redis.call('PTTL', KEYS[i]) < keep then
    redis.call('PEXPIRE', KEYS[i], keep * 2)
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
"#;

/// KEYS tag keys. ARGV[1] channel, ARGV[2] notice ('' none), ARGV[3] TTL (ms) of a tag that has
/// none, ARGV[3 + i] the new version of KEYS[i] (never used before). A tag keeps its TTL (the
/// entries that carried it extended it); the old version is gone for good.
pub(crate) const INVALIDATE: &str = r#"
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) > 0 then
    redis.call('SET', KEYS[i], ARGV[3 + i], 'KEEPTTL')
  else
    redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', ARGV[3])
  end
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return #KEYS
"#;
