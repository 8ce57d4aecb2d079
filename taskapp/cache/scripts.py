"""Lua scripts of the cache, each registered once per client and run atomically by Redis.

Every script takes the server's clock (TIME) rather than a client's, so hosts with skewed clocks
agree on expiry. Scripts touch only the keys they are given; on Redis Cluster the caller keeps
those keys in one hash slot (see ``keys.py``).
"""

# SCOPE: a Lua function (prepended to the scripts that change entries) naming the scope version
# of an entry key. A key's scope is its hash tag ({u:42}), else the key itself; the scope version
# grows with every change of an entry of the scope, and the in-process layer of every process
# trusts an entry only while its scope version is the one Redis has (read-your-writes). Each bump
# is announced on the scope channel ("<scope version key> <version>" lines), for the processes
# that learn versions from the channel (see coherence.py).
SCOPE = """
local function scope_version(prefix, key)
  local open = string.find(key, '{', 1, true)
  if open then
    local close = string.find(key, '}', open + 1, true)
    if close and close > open + 1 then return prefix .. 'sv:' .. string.sub(key, open, close) end
  end
  return prefix .. 'sv:{' .. key .. '}'
end
local function bump_scopes(prefix, keys, ttl)
  local seen = {}
  local bumped = {}
  for _, key in ipairs(keys) do
    local version = scope_version(prefix, key)
    if not seen[version] then
      seen[version] = true
      bumped[#bumped + 1] = version .. ' ' .. redis.call('INCR', version)
      redis.call('PEXPIRE', version, ttl)
    end
  end
  if #bumped > 0 then redis.call('PUBLISH', prefix .. 'ch:sv', table.concat(bumped, '\\n')) end
end
"""

# FILL: store a value unless a version read before its fetch has changed since, release the fill
# lock if this caller still owns it, and announce the key: on the fill channel to wake the callers
# waiting for it, or on the invalidation channel when an existing value was overwritten.
# KEYS[1] entry, KEYS[2] lock, KEYS[3 .. 2+m] version keys to check, KEYS[3+m .. 2+m+n] tag sets
# ARGV[1] payload, ARGV[2] time to live in ms, ARGV[3] lock token ('' when no lock is held),
# ARGV[4] channel to announce the key on ('' for none), ARGV[5] m, ARGV[6] n,
# ARGV[7] key prefix, ARGV[8] time to live of a version in ms, ARGV[9 .. 8+m] the versions read
# before the fetch
# An overwrite of an existing entry (announced on the invalidation channel) bumps its scope version.
# returns {1 when stored or 0 when a version changed (nothing stored), the scope version after}
FILL = (
    SCOPE
    + """
local m = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local stored = 1
for i = 1, m do
  if (redis.call('GET', KEYS[2 + i]) or '0') ~= ARGV[8 + i] then stored = 0 end
end
local overwrite = ARGV[3] == '' and ARGV[4] ~= '' and m == 0
if stored == 1 then
  local ttl = tonumber(ARGV[2])
  if overwrite and redis.call('EXISTS', KEYS[1]) == 1 then
    bump_scopes(ARGV[7], {KEYS[1]}, ARGV[8])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 3 + m, 2 + m + n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    redis.call('ZADD', KEYS[i], now + ttl, KEYS[1])
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], KEYS[1]) end
return {stored, redis.call('GET', scope_version(ARGV[7], KEYS[1])) or '0'}
"""
)

# LOOKUP: an entry, or on a miss the versions to fill it under, taking the fill lock if it is free
# (the read, the lease and the lock of a fill in one round trip).
# KEYS[1] entry, KEYS[2] lock, KEYS[3] the entry's scope version, KEYS[4 ..] version keys (the
# entry's own, then one per tag)
# ARGV[1] lock token, ARGV[2] lock time to live in ms
# returns {the entry or nil, 1 when this caller took the lock else 0, the scope version,
# versions ('0' when unset) on a miss}
LOOKUP = """
local scope = redis.call('GET', KEYS[3]) or '0'
local entry = redis.call('GET', KEYS[1])
if entry then return {entry, 0, scope} end
local result = {false, 0, scope}
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then result[2] = 1 end
for i = 4, #KEYS do result[#result + 1] = redis.call('GET', KEYS[i]) or '0' end
return result
"""

# after_then_lookup(BEFORE): BEFORE (another module's script on keys of the entry's hash slot), then
# LOOKUP unless BEFORE refused, in one round trip. Each part sees only its own KEYS and ARGV.
# KEYS BEFORE's keys, then LOOKUP's
# ARGV[1] how many keys BEFORE takes, ARGV[2] how many arguments, then BEFORE's, then LOOKUP's
# returns {BEFORE's result} when its first value is 0 (refused: no lookup, no lock taken), else
# {BEFORE's result, LOOKUP's values...}
_BEFORE_THEN_LOOKUP = """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = (function(KEYS, ARGV)
%s
end)({unpack(KEYS, 1, nk)}, {unpack(ARGV, 3, 2 + na)})
if tonumber(first[1]) == 0 then return {first} end
local second = (function(KEYS, ARGV)
%s
end)({unpack(KEYS, nk + 1)}, {unpack(ARGV, 3 + na)})
return {first, unpack(second)}
"""
_COMBINED: dict[str, str] = {}


def before_then_lookup(before: str) -> str:
    """The Lua source running ``before`` and then LOOKUP in one call (made once per script)."""
    source = _COMBINED.get(before)
    if source is None:
        source = _COMBINED[before] = _BEFORE_THEN_LOOKUP % (before, LOOKUP)
    return source


# RELEASE: delete the fill lock only if this caller still owns it, and wake the waiters.
# KEYS[1] lock
# ARGV[1] lock token, ARGV[2] fill channel, ARGV[3] the entry key the waiters wait for
# returns 1 when released, 0 when the lock had expired or passed to another caller
RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return released
"""

# INVALIDATE: bump each tag's version (so fills already in flight are refused), delete every entry
# the tag holds and the tag set itself, and tell every process to drop those entries from memory.
# KEYS[1 .. n] tag sets, KEYS[n+1 .. 2n] tag versions
# ARGV[1] time to live of a version in ms, ARGV[2] invalidation channel, ARGV[3] key prefix
# returns the keys of the entries deleted
INVALIDATE = (
    SCOPE
    + """
local n = #KEYS / 2
local deleted = {}
for i = 1, n do
  redis.call('INCR', KEYS[n + i])
  redis.call('PEXPIRE', KEYS[n + i], ARGV[1])
  local members = redis.call('ZRANGE', KEYS[i], 0, -1)
  for j = 1, #members, 500 do
    redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
  end
  for j = 1, #members do deleted[#deleted + 1] = members[j] end
  redis.call('DEL', KEYS[i])
end
bump_scopes(ARGV[3], KEYS, ARGV[1])
bump_scopes(ARGV[3], deleted, ARGV[1])
if #deleted > 0 then redis.call('PUBLISH', ARGV[2], table.concat(deleted, '\\n')) end
return deleted
"""
)

# DELETE: delete entries, bump their own versions (so fills already in flight are refused) and
# tell every process to drop them from memory.
# KEYS[1 .. n] entries, KEYS[n+1 .. 2n] their version keys
# ARGV[1] time to live of a version in ms, ARGV[2] invalidation channel, ARGV[3] key prefix
# returns the number of entries that existed
DELETE = (
    SCOPE
    + """
local n = #KEYS / 2
local existed = 0
for i = 1, n do
  existed = existed + redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[n + i])
  redis.call('PEXPIRE', KEYS[n + i], ARGV[1])
  bump_scopes(ARGV[3], {KEYS[i]}, ARGV[1])
end
redis.call('PUBLISH', ARGV[2], table.concat(KEYS, '\\n', 1, n))
return existed
"""
)

# WRITE_THROUGH: after a write to the source, drop what it affects and store its new value in
# one step, unless a newer write of the same entry is stored already (writers may finish out of
# order). Bumping the versions refuses every fill that read the source before the write.
# KEYS[1] entry, KEYS[2] its version key, KEYS[3] its write-version key,
# KEYS[4 .. 3+n] the entry's tag sets, KEYS[4+n .. 3+n+k] tag sets to invalidate,
# KEYS[4+n+k .. 3+n+2k] their versions
# ARGV[1] payload, ARGV[2] time to live in ms, ARGV[3] the write's version (a number that grows
# with each write of the entry), ARGV[4] time to live of a version in ms, ARGV[5] invalidation
# channel, ARGV[6] n, ARGV[7] k, ARGV[8] key prefix
# returns {1 when stored or 0 when a newer write was stored already, the keys deleted...}
WRITE_THROUGH = (
    SCOPE
    + """
local n = tonumber(ARGV[6])
local k = tonumber(ARGV[7])
local deleted = {KEYS[1]}
for i = 1, k do
  local version = KEYS[3 + n + k + i]
  redis.call('INCR', version)
  redis.call('PEXPIRE', version, ARGV[4])
  local members = redis.call('ZRANGE', KEYS[3 + n + i], 0, -1)
  for j = 1, #members, 500 do
    redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
  end
  for j = 1, #members do deleted[#deleted + 1] = members[j] end
  redis.call('DEL', KEYS[3 + n + i])
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local stored = 0
if tonumber(redis.call('GET', KEYS[3]) or '-1') < tonumber(ARGV[3]) then
  local ttl = tonumber(ARGV[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 4, 3 + n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    redis.call('ZADD', KEYS[i], now + ttl, KEYS[1])
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  stored = 1
end
bump_scopes(ARGV[8], deleted, ARGV[4])
redis.call('PUBLISH', ARGV[5], table.concat(deleted, '\\n'))
table.insert(deleted, 1, stored)
return deleted
"""
)


# HEARTBEAT: renew a process's lease on its in-process layer (see coherence.py): the process is a
# member until its lease ends, by the server's clock; ended leases are dropped.
# KEYS[1] the members (a sorted set scored by the end of each lease, in ms)
# ARGV[1] lease length in ms, ARGV[2] the process's member id
# returns the server's time in ms
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return now
"""

# ACK: a member has applied everything published before a sync message (the writer pops it).
# KEYS[1] the sync's list, ARGV[1] the member id
ACK = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 10000)
"""

# SYNC: after a change, ask every member whose lease has not ended to acknowledge once it has
# applied everything published before (pub/sub keeps each subscriber's messages in order).
# KEYS[1] the members
# ARGV[1] sync channel, ARGV[2] the key the members push their ids to
# returns {the server's time in ms, then member id and lease end (ms) of each member}
SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
if #members > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return {now, unpack(members)}
"""
