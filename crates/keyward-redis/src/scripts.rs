//! The Lua scripts: each change is one script on one hash slot, so it is atomic on a Cluster
//! as on a single server. `KEYS[1]` is always a key of the slot (which routes the call);
//! `ARGV[1]` is the slot's hash tag, from which the scripts name the other keys they touch:
//! all of them share the tag, hence the slot.

use fred::types::scripts::Script;
use std::sync::LazyLock;

/// Helpers prepended to every script.
const COMMON: &str = r#"
local function hmap(r) local m = {} for i = 1, #r, 2 do m[r[i]] = r[i + 1] end return m end
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
-- The throttle's failures in a sorted set (score: when): those not after `since` go, and all
-- but the newest `keep` (reservations, `p:…` members, are left alone).
local function trim_failures(key, since, keep)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', since)
  local f = {}
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(m, 1, 2) ~= 'p:' then f[#f + 1] = m end
  end
  for i = 1, #f - keep do redis.call('ZREM', key, f[i]) end
end
-- Every change to a session is announced on the feed, from inside the change itself, so a
-- node that caches sessions hears of it before the change is acknowledged to anyone.
-- A replica's copy of every session is kept packed (see feed.rs), the raw token hash then the
-- packed fields, concatenated in one string per shard and second byte of the hash,
-- `{kw.XX}:rx:YY` (~15 sessions each at a million), so a node loads a shard in one reply and a
-- change rewrites one short string.
local FEED = 'kw:feed'
local function raw(h) return (h:gsub('..', function(x) return string.char(tonumber(x, 16)) end)) end
local function rx_key(tag, h) return tag .. ':rx:' .. string.sub(h, 3, 4) end
-- Where the entry of raw hash `hr` starts in `blob`, and its size.
local function rx_find(blob, hr)
  local pos = 1
  while pos <= #blob do
    local size = 90 + string.byte(blob, pos + 32)
    if string.sub(blob, pos, pos + 31) == hr then return pos, size end
    pos = pos + size
  end
  return nil
end
local function rx_put(tag, h, packed)
  local k, hr = rx_key(tag, h), raw(h)
  local blob = redis.call('GET', k) or ''
  local pos, size = rx_find(blob, hr)
  if pos then blob = string.sub(blob, 1, pos - 1) .. string.sub(blob, pos + size) end
  redis.call('SET', k, blob .. hr .. packed)
end
local function rx_drop(tag, h)
  local k = rx_key(tag, h)
  local blob = redis.call('GET', k)
  if not blob then return end
  local pos, size = rx_find(blob, raw(h))
  if not pos then return end
  blob = string.sub(blob, 1, pos - 1) .. string.sub(blob, pos + size)
  if #blob == 0 then redis.call('DEL', k) else redis.call('SET', k, blob) end
end
-- Rewrite the last use (8 bytes, big-endian) of a session's copy.
local function rx_touch(tag, h, last_seen)
  local k = rx_key(tag, h)
  local blob = redis.call('GET', k)
  if not blob then return end
  local pos = rx_find(blob, raw(h))
  if pos then
    redis.call('SET', k, string.sub(blob, 1, pos + 72) .. last_seen .. string.sub(blob, pos + 81))
  end
end
local function put(tag, h, sid, uid, ttl, score, packed, fields)
  local k = tag .. ':s:' .. h
  redis.call('DEL', k)
  redis.call('HSET', k, unpack(fields))
  redis.call('PEXPIRE', k, ttl)
  redis.call('SET', tag .. ':i:' .. sid, h, 'PX', ttl)
  local idx = tag .. ':us:' .. uid
  redis.call('ZADD', idx, score, h)
  extend(idx, ttl)
  rx_put(tag, h, packed)
  local m = hmap(fields)
  redis.call('PUBLISH', FEED, 'c ' .. h .. ' ' .. cjson.encode({i = m.i, u = m.u, n = m.n,
    c = tonumber(m.c), l = tonumber(m.l), e = tonumber(m.e), a = tonumber(m.a or '1')}))
end
-- Revoke the family `fid` (its record `fk`, ending at `e`): marked, listed in the shard's
-- `{kw.XX}:rf` (what a node loads at catch-up), and announced.
local function revoke(tag, fid, fk, e, now)
  redis.call('HSET', fk, 'r', now)
  redis.call('HSET', tag .. ':rf', fid, e)
  redis.call('PUBLISH', FEED, 'f ' .. fid)
end
local function drop(tag, h, sid, uid)
  redis.call('DEL', tag .. ':s:' .. h, tag .. ':i:' .. sid)
  redis.call('ZREM', tag .. ':us:' .. uid, h)
  rx_drop(tag, h)
  redis.call('PUBLISH', FEED, 'd ' .. h)
end
"#;

fn script(body: &str) -> Script {
    Script::from_lua(format!("{COMMON}{body}"))
}

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $body:expr;)*) => {
        $($(#[$doc])* pub static $name: LazyLock<Script> = LazyLock::new(|| script($body));)*
    };
}

scripts! {
    /// KEYS: session. ARGV: tag, hash, sid, uid, ttl, score, packed, fields….
    CREATE_SESSION = r#"
put(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], {unpack(ARGV, 8)})
return 1
"#;

    /// KEYS: session. ARGV: tag, last_seen_ms, idle_ms, last_seen (8 bytes, big-endian).
    /// Moves `l` forward only, in the session and in its packed copy, and extends the TTLs to
    /// the new end of the session.
    TOUCH_SESSION = r#"
local f = redis.call('HMGET', KEYS[1], 'l', 'e', 'i', 'u')
if not f[1] then return 0 end
local new = tonumber(ARGV[2])
if new <= tonumber(f[1]) then return 0 end
local ttl = math.min(new + tonumber(ARGV[3]), tonumber(f[2])) - new
if ttl < 1 then ttl = 1 end
redis.call('HSET', KEYS[1], 'l', ARGV[2])
rx_touch(ARGV[1], string.sub(KEYS[1], 11), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', ARGV[1] .. ':i:' .. f[3], ttl)
extend(ARGV[1] .. ':us:' .. f[4], ttl)
redis.call('PUBLISH', FEED, 't ' .. string.sub(KEYS[1], 11) .. ' ' .. ARGV[2])
return 1
"#;

    /// KEYS: session. ARGV: tag, hash. Returns the removed session's fields, or nothing.
    DELETE_SESSION = r#"
local r = redis.call('HGETALL', KEYS[1])
if #r == 0 then return r end
local m = hmap(r)
drop(ARGV[1], ARGV[2], m.i, m.u)
return r
"#;

    /// KEYS: id map. ARGV: tag, owner ('' for any). Returns the fields (with `h`), or nothing.
    DELETE_SESSION_BY_ID = r#"
local h = redis.call('GET', KEYS[1])
if not h then return {} end
local r = redis.call('HGETALL', ARGV[1] .. ':s:' .. h)
if #r == 0 then redis.call('DEL', KEYS[1]) return {} end
local m = hmap(r)
if ARGV[2] ~= '' and m.u ~= ARGV[2] then return {} end
drop(ARGV[1], h, m.i, m.u)
r[#r + 1] = 'h'
r[#r + 1] = h
return r
"#;

    /// KEYS: user index. ARGV: tag, session id to keep ('' for none). Returns how many went.
    DELETE_USER_SESSIONS = r#"
local n = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. ':s:' .. h, 'i', 'u')
  if not f[1] then
    redis.call('ZREM', KEYS[1], h)
  elseif f[1] ~= ARGV[2] then
    drop(ARGV[1], h, f[1], f[2])
    n = n + 1
  end
end
return n
"#;

    /// KEYS: user index. ARGV: tag. Every live session's fields (with `h`); entries whose
    /// session has expired are removed from the index on the way.
    LIST_USER_SESSIONS = r#"
local out = {}
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local r = redis.call('HGETALL', ARGV[1] .. ':s:' .. h)
  if #r == 0 then
    redis.call('ZREM', KEYS[1], h)
  else
    r[#r + 1] = 'h'
    r[#r + 1] = h
    out[#out + 1] = r
  end
end
return out
"#;

    /// KEYS: old session. ARGV: tag, old hash, new hash, new sid, uid, ttl, score, packed,
    /// fields….
    REPLACE_SESSION = r#"
local r = redis.call('HGETALL', KEYS[1])
if #r == 0 then return 0 end
local m = hmap(r)
if m.u ~= ARGV[5] then return redis.error_reply('replace across users') end
drop(ARGV[1], ARGV[2], m.i, m.u)
put(ARGV[1], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8], {unpack(ARGV, 9)})
return 1
"#;

    /// KEYS: user index. ARGV: tag, now_ms, idle_cutoff_ms. Removes sessions past their
    /// absolute expiry or unused since the cutoff; returns how many.
    PURGE_USER_SESSIONS = r#"
local now, cutoff, n = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. ':s:' .. h, 'i', 'u', 'l', 'e')
  if not f[1] then
    redis.call('ZREM', KEYS[1], h)
  elseif tonumber(f[4]) <= now or tonumber(f[3]) < cutoff then
    drop(ARGV[1], h, f[1], f[2])
    n = n + 1
  end
end
return n
"#;

    /// KEYS: a shard's tag. ARGV: tag. Removes the copies of sessions whose key has expired
    /// (TTL expiry announces nothing); returns how many.
    PURGE_REPLICA_INDEX = r#"
local n = 0
for i = 0, 255 do
  local k = ARGV[1] .. ':rx:' .. string.format('%02x', i)
  local blob = redis.call('GET', k)
  if blob then
    local kept, pos = {}, 1
    while pos <= #blob do
      local size = 90 + string.byte(blob, pos + 32)
      local h = string.sub(blob, pos, pos + 31):gsub('.', function(c) return string.format('%02x', string.byte(c)) end)
      if redis.call('EXISTS', ARGV[1] .. ':s:' .. h) == 1 then
        kept[#kept + 1] = string.sub(blob, pos, pos + size - 1)
      else
        n = n + 1
      end
      pos = pos + size
    end
    if #kept == 0 then redis.call('DEL', k) else redis.call('SET', k, table.concat(kept)) end
  end
end
return n
"#;

    /// KEYS: family. ARGV: tag, fid, uid, username, created_ms, expires_ms, first hash, ttl.
    CREATE_FAMILY = r#"
local ttl = tonumber(ARGV[8])
redis.call('HSET', KEYS[1], 'u', ARGV[3], 'n', ARGV[4], 'c', ARGV[5], 'e', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ttl)
local rk = ARGV[1] .. ':r:' .. ARGV[7]
redis.call('HSET', rk, 'f', ARGV[2])
redis.call('PEXPIRE', rk, ttl)
local uf = ARGV[1] .. ':uf:' .. ARGV[3]
redis.call('SADD', uf, ARGV[2])
extend(uf, ttl)
return 1
"#;

    /// KEYS: presented token. ARGV: tag, next hash, now_ms, grace_ms.
    /// Returns {outcome, uid, username, created, expires, fid}, outcome being
    /// `rotated`, `reused` or `invalid` (alone).
    ROTATE = r#"
local tag, nh, now, grace = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('HMGET', KEYS[1], 'f', 'used', 'next')
if not t[1] then return {'invalid'} end
local fk = tag .. ':f:' .. t[1]
local fam = redis.call('HMGET', fk, 'u', 'n', 'c', 'e', 'r')
if not fam[1] or fam[5] or tonumber(fam[4]) <= now then return {'invalid'} end
if not t[2] then
  local ttl = redis.call('PTTL', fk)
  redis.call('HSET', KEYS[1], 'used', ARGV[3], 'next', nh)
  local nk = tag .. ':r:' .. nh
  redis.call('HSET', nk, 'f', t[1])
  if ttl > 0 then redis.call('PEXPIRE', nk, ttl) end
  return {'rotated', fam[1], fam[2], fam[3], fam[4], t[1]}
end
if now < tonumber(t[2]) + grace and t[3] == nh then
  local n = redis.call('HMGET', tag .. ':r:' .. nh, 'f', 'used')
  if n[1] and not n[2] then return {'rotated', fam[1], fam[2], fam[3], fam[4], t[1]} end
end
revoke(tag, t[1], fk, fam[4], ARGV[3])
return {'reused', fam[1], fam[2], fam[3], fam[4], t[1]}
"#;

    /// KEYS: token. ARGV: tag, now_ms. The family of a live, unused token, or nothing.
    FAMILY_OF = r#"
local t = redis.call('HMGET', KEYS[1], 'f', 'used')
if not t[1] or t[2] then return {} end
local fam = redis.call('HMGET', ARGV[1] .. ':f:' .. t[1], 'u', 'n', 'c', 'e', 'r')
if not fam[1] or fam[5] or tonumber(fam[4]) <= tonumber(ARGV[2]) then return {} end
return {fam[1], fam[2], fam[3], fam[4], t[1]}
"#;

    /// KEYS: family. ARGV: tag, now_ms. 1 when this call revoked it.
    REVOKE_FAMILY = r#"
local f = redis.call('HMGET', KEYS[1], 'e', 'r')
if not f[1] or f[2] then return 0 end
revoke(ARGV[1], string.match(KEYS[1], ':f:(.*)$'), KEYS[1], f[1], ARGV[2])
return 1
"#;

    /// KEYS: refresh token (any of its family, used or not). ARGV: tag, now_ms. Revokes the
    /// family unless it already is; returns {uid, username, created, expires, fid, changed}
    /// while the family is known and not over, else nothing.
    REVOKE_BY_TOKEN = r#"
local fid = redis.call('HGET', KEYS[1], 'f')
if not fid then return {} end
local fk = ARGV[1] .. ':f:' .. fid
local fam = redis.call('HMGET', fk, 'u', 'n', 'c', 'e', 'r')
if not fam[1] or tonumber(fam[4]) <= tonumber(ARGV[2]) then return {} end
local changed = '0'
if not fam[5] then
  revoke(ARGV[1], fid, fk, fam[4], ARGV[2])
  changed = '1'
end
return {fam[1], fam[2], fam[3], fam[4], fid, changed}
"#;

    /// KEYS: user's family set. ARGV: tag, now_ms. How many families this call revoked.
    REVOKE_USER_FAMILIES = r#"
local n = 0
for _, fid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fk = ARGV[1] .. ':f:' .. fid
  local f = redis.call('HMGET', fk, 'e', 'r')
  if not f[1] then
    redis.call('SREM', KEYS[1], fid)
  elseif not f[2] then
    revoke(ARGV[1], fid, fk, f[1], ARGV[2])
    n = n + 1
  end
end
return n
"#;

    /// KEYS: refresh token. ARGV: tag, now_ms. Removes it when its family is gone or over.
    PURGE_TOKEN = r#"
local fid = redis.call('HGET', KEYS[1], 'f')
if not fid then return 0 end
local e = redis.call('HGET', ARGV[1] .. ':f:' .. fid, 'e')
if e and tonumber(e) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

    /// KEYS: family. ARGV: tag, now_ms. Removes it once past its absolute expiry.
    PURGE_FAMILY = r#"
local f = redis.call('HMGET', KEYS[1], 'u', 'e')
if not f[2] or tonumber(f[2]) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
local fid = string.match(KEYS[1], ':f:(.*)$')
redis.call('SREM', ARGV[1] .. ':uf:' .. f[1], fid)
return 1
"#;

    /// KEYS: a bucket's deny list (sorted set: `jti` by when its token expires). ARGV: tag
    /// (unused), jti, until_ms. Keeps the list at least until then by Redis's clock (and a
    /// minute at least): whether an entry still counts is decided against the caller's clock.
    DENY = r#"
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
extend(KEYS[1], math.max(tonumber(ARGV[3]) - now, 60000))
redis.call('PUBLISH', FEED, 'x ' .. ARGV[3] .. ' ' .. ARGV[2])
return 1
"#;

    /// KEYS: a shard's tag. ARGV: tag, now_ms, family afterlife_ms. Drops denials whose
    /// tokens have expired and revoked families past their end and afterlife; returns how
    /// many denials went.
    PURGE_SHARD_DENIALS = r#"
local n = redis.call('ZREMRANGEBYSCORE', ARGV[1] .. ':dl', '-inf', ARGV[2])
local rf = ARGV[1] .. ':rf'
local r = redis.call('HGETALL', rf)
for i = 1, #r, 2 do
  if tonumber(r[i + 1]) + tonumber(ARGV[3]) <= tonumber(ARGV[2]) then redis.call('HDEL', rf, r[i]) end
end
return n
"#;

    /// KEYS: a shard's tag. ARGV: tag. The shard's denials and revoked families:
    /// {{jti, until, jti, until, …}, {fid, …}}.
    LOAD_SHARD_DENIALS = r#"
return {redis.call('ZRANGE', ARGV[1] .. ':dl', 0, -1, 'WITHSCORES'), redis.call('HKEYS', ARGV[1] .. ':rf')}
"#;

    /// KEYS: failure log. ARGV: tag (unused), since_ms. The times of the failures after it
    /// (reservations, members `p:<attempt>`, are not failures).
    FAILURES = r#"
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  if string.sub(r[i], 1, 2) ~= 'p:' then out[#out + 1] = r[i + 1] end
end
return out
"#;

    /// KEYS: failure log. ARGV: tag (unused), now_ms, since_ms, keep, window_ms, nonce.
    RECORD_FAILURE = r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2] .. ':' .. ARGV[6])
trim_failures(KEYS[1], ARGV[3], tonumber(ARGV[4]))
extend(KEYS[1], tonumber(ARGV[5]))
return 1
"#;

    /// KEYS: failure log. ARGV: tag (unused). Removes the failures, keeps the reservations.
    RECORD_FORGET = r#"
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, 2) ~= 'p:' then redis.call('ZREM', KEYS[1], m) end
end
return 1
"#;

    /// KEYS: failure log. ARGV: tag (unused), attempt, now_ms, since_ms, pending_since_ms,
    /// limit, ttl_ms. Admits (`{}`) and adds the reservation `p:<attempt>` while the failures
    /// after `since` and the reservations after `pending_since` are fewer than `limit`;
    /// otherwise returns {pending count, failure times…}.
    RESERVE = r#"
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[4], '+inf', 'WITHSCORES')
local failures, pending = {}, 0
for i = 1, #r, 2 do
  if string.sub(r[i], 1, 2) == 'p:' then
    if tonumber(r[i + 1]) > tonumber(ARGV[5]) then pending = pending + 1
    else redis.call('ZREM', KEYS[1], r[i]) end
  else
    failures[#failures + 1] = r[i + 1]
  end
end
if #failures + pending >= tonumber(ARGV[6]) then
  table.insert(failures, 1, tostring(pending))
  return failures
end
redis.call('ZADD', KEYS[1], ARGV[3], 'p:' .. ARGV[2])
extend(KEYS[1], tonumber(ARGV[7]))
return {}
"#;

    /// KEYS: failure log. ARGV: tag (unused), attempt, failed ('1' or '0'), now_ms, since_ms,
    /// keep, window_ms, nonce. Ends a reservation, as a failure when `failed`.
    SETTLE = r#"
redis.call('ZREM', KEYS[1], 'p:' .. ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[4] .. ':' .. ARGV[8])
  trim_failures(KEYS[1], ARGV[5], tonumber(ARGV[6]))
  extend(KEYS[1], tonumber(ARGV[7]))
end
return 1
"#;
}
