"""Lua scripts of the cache, each registered once per client and run atomically by Redis.

Every script takes the server's clock (TIME) rather than a client's, so hosts with skewed clocks
agree on expiry. Scripts touch only the keys they are given; on Redis Cluster the caller keeps
those keys in one hash slot (see ``keys.py``).
"""

# SCOPE: a Lua function (prepended to the scripts that change entries) naming the scope version
# of an entry key. A key's scope is its hash tag ({u:42}), else the key itself; the scope version
# grows with every change of an entry of the scope, and the in-process layer of every process
# trusts an entry only while its scope version is the one Redis has (read-your-writes).
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
  for _, key in ipairs(keys) do
    local version = scope_version(prefix, key)
    if not seen[version] then
      seen[version] = true
      redis.call('INCR', version)
      redis.call('PEXPIRE', version, ttl)
    end
  end
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
# An overwrite (announced on the invalidation channel) bumps the entry's scope version.
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
if stored == 1 then
  local ttl = tonumber(ARGV[2])
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
if stored == 1 and ARGV[3] == '' and ARGV[4] ~= '' and m == 0 then
  bump_scopes(ARGV[7], {KEYS[1]}, ARGV[8])
end
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

# LIST_PUSH: prepend an item to a capped list only if the list is cached (a missing list is
# rebuilt from the source of truth by its next reader), and bump the list's version so that a
# rebuild already in flight is refused.
# KEYS[1] list, KEYS[2] its version key
# ARGV[1] item, ARGV[2] maximum length, ARGV[3] time to live of a version in ms
# returns the new length (0 when the list was not cached)
LIST_PUSH = """
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local length = redis.call('LPUSHX', KEYS[1], ARGV[1])
if length > 0 then redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1) end
return length
"""

# LIST_FILL: store a list rebuilt from the source of truth unless it changed since the rebuild
# began or another caller stored it first.
# KEYS[1] list, KEYS[2] its version key
# ARGV[1] time to live in ms, ARGV[2] the version read before the rebuild, ARGV[3 ..] items,
# oldest first
# returns 1 when stored, 0 otherwise
LIST_FILL = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if #ARGV > 2 then
  redis.call('LPUSH', KEYS[1], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""

# SLIDING_WINDOW: count a request in a sliding window (a sorted set scored by time) and say
# whether it is allowed. Members are unique (time plus a caller-made nonce), so two requests in
# the same millisecond both count.
# KEYS[1] window, KEYS[2] (optional) a scope version to read in the same round trip
# ARGV[1] window length in ms, ARGV[2] limit, ARGV[3] nonce
# returns {allowed (1/0), requests in the window, ms until the oldest request leaves the window,
# the scope version ('0' when unset) when KEYS[2] is given}
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if #oldest == 2 then reset = tonumber(oldest[2]) + window - now end
if KEYS[2] then return {allowed, count, reset, redis.call('GET', KEYS[2]) or '0'} end
return {allowed, count, reset}
"""

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

# STAGE: merge a change into an object's pending state, give it the next version and queue it on
# the write-behind stream, in one step (concurrent changes of one object never lose each other).
# A caller whose view of the object is older than the last version staged (a flusher applied and
# dropped the pending state since the caller read it) is refused, to read again.
# KEYS[1] the object's pending state (JSON, no expiry: it lives until the flusher applied it),
# KEYS[2] the stream, KEYS[3] the last version staged for the object
# ARGV[1] the object as the caller read it (JSON with its version; used when nothing is
# pending), ARGV[2] the change (a JSON object of fields), ARGV[3] the object's id,
# ARGV[4] time to live of the last-version marker in ms
# returns the new pending state (JSON), or false when the caller's object is outdated
STAGE = """
local current = redis.call('GET', KEYS[1])
local state
if current then
  state = cjson.decode(current)
else
  state = cjson.decode(ARGV[1])
  local staged = tonumber(redis.call('GET', KEYS[3]) or '0')
  if (tonumber(state['version']) or 0) < staged then return false end
end
for field, value in pairs(cjson.decode(ARGV[2])) do state[field] = value end
state['version'] = (tonumber(state['version']) or 0) + 1
local encoded = cjson.encode(state)
redis.call('SET', KEYS[1], encoded)
redis.call('SET', KEYS[3], state['version'], 'PX', ARGV[4])
redis.call('XADD', KEYS[2], '*',
  'id', ARGV[3], 'key', KEYS[1], 'version', state['version'], 'state', encoded)
return encoded
"""

# SETTLE: after the flusher applied a change to the source, acknowledge and delete its entry (the
# stream holds only changes not yet applied), and drop the pending state if no newer change
# arrived meanwhile.
# KEYS[1] the stream, KEYS[2] the object's pending state
# ARGV[1] the consumer group, ARGV[2] the stream entry id, ARGV[3] the version applied
# returns 1 when the pending state was dropped, 0 when a newer change is still pending
SETTLE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local current = redis.call('GET', KEYS[2])
if current and tonumber(cjson.decode(current)['version']) <= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# PRUNE_CONSUMERS: forget the consumers of a group that hold no pending change and have been idle
# far longer than a live flusher ever is (a flusher that died or was scaled away). Atomic, so no
# consumer can read entries between the check and the delete (DELCONSUMER drops what it holds).
# KEYS[1] the stream
# ARGV[1] the consumer group, ARGV[2] the idle time in ms past which an empty consumer is dead
# returns the names of the consumers removed
PRUNE_CONSUMERS = """
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""
