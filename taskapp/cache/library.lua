#!lua name=taskapp
--
-- The cache's code on the Redis server: one library of functions (Redis >= 7.0, FUNCTION LOAD
-- and FCALL), loaded by taskapp/cache/functions.py. The loader names the library and its
-- functions after a digest of this file: it writes the digest into the first line and into
-- VERSION below, and `request` is then called as `request_<digest>`. So two versions of the
-- app can run side by side during a deploy without replacing each other's functions.
--
-- Every function touches only the keys it is given and, where one says so, keys in the same
-- hash slot derived from them (on Redis Cluster the caller keeps them in one slot). Time is the
-- server's (TIME), so hosts with skewed clocks agree on expiry and on rate-limit windows.
--
-- Functions flagged 'allow-oom' still run when Redis is full (maxmemory reached under the
-- noeviction policy): they write only a few small keys, and what they write (an invalidation,
-- a revocation, a lock release, a request's admission) must take effect whatever the memory.
-- A function that stores a value (a fill) is not flagged: a full Redis refuses it, and the
-- value is simply not cached.

-- Versions ----------------------------------------------------------------------------------
--
-- An entry's own version (`v:`), each tag's version (`tagv:`), each scope's version (`sv:`), a
-- list's version and a revocation hash's build hold a value that is unique per change: this
-- server run's mark, then a count of the versions this run made. A check compares for equality,
-- so no check is ever satisfied by state made before a loss:
-- - a version key that is missing (flushed, evicted, expired, restarted empty) is made anew when
--   read, so a fill that read the old value is refused and a memory entry kept under it is not
--   served;
-- - a version made by another server run (restarted from its RDB or AOF file, a replica
--   promoted after a failover) is treated as missing: whatever came back from disk with it, and
--   whatever a fill read before the loss, fails its check.
--
-- The server run's mark lives in this library's Lua state, never in a key: it is made from the
-- server's clock (to the microsecond) by the first call after the library was loaded, and a
-- restart (which loads the library again from the server's files) or a promoted replica (whose
-- library never ran) starts without one. So the mark needs no INFO (which a least-privilege ACL
-- user may not run) and costs nothing per call. A version is written '<mark>.<count>'.

local MARK, RUN = nil, nil  -- the mark (a number below 2^53), and the versions' prefix
local made = 0

-- The version arguments every versioned function takes first: the key prefix and the time to
-- live (ms) of a version key it makes or changes.
local PREFIX, VERSION_TTL

local function start_run()
  if not MARK then
    local now = redis.call('TIME')
    MARK = tonumber(now[1]) * 1000000 + tonumber(now[2])
    RUN = string.format('%d.', MARK)
  end
end

local function begin(prefix, version_ttl)
  PREFIX, VERSION_TTL = prefix, version_ttl
  start_run()
end

local function ours(version)
  return version and string.sub(version, 1, #RUN) == RUN
end

-- Scope states --------------------------------------------------------------------------------
--
-- A scope's version (`sv:<hash tag>`: the in-process layer's check, and the stamp of the entries
-- stored in the scope) is kept in a small string with the scope's rate-limit window, so that a
-- request that only needs both (a hit from the in-process layer) reads and counts them with one
-- BITFIELD and no function call (taskapp/cache/scope_state.py). Its bits, big-endian:
--   0   i64 the mark of the server run that made the version (0: none, made anew when read)
--   64  i64 the version's count in that run (the version is '<mark>.<count>')
--   128 u32 a second until which the key is kept (a reader renews it when it comes near)
--   160 u32 the window's total (see Rate limits)
--   192 the window's 61 slots, each a u32 second and a u32 count (64 bits a slot)
-- A plain rate-limit window (a login's) has the same layout and leaves the version bits at 0.
local MARK_AT, COUNT_AT, UNTIL_AT, TOTAL_AT, SLOTS_AT = 0, 64, 128, 160, 192
local WINDOW = 61
-- A scope state is kept at least this long after its version or its window last changed, or
-- a reader renewed it (`keep_state`): long enough that a window never loses a count it holds.
local STATE_KEEP_MS = 300000

local function is_scope(key)
  return string.sub(key, #PREFIX + 1, #PREFIX + 3) == 'sv:'
end

-- Keep a scope state or a window at least `ms` from now (never shortened), and note until when.
local function keep_state(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -2 then return end  -- gone (expired meanwhile): its next reader makes it anew
  if ttl < ms then
    redis.call('PEXPIRE', key, ms)
    ttl = ms
  end
  local now = redis.call('TIME')
  local kept = math.floor((tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl) / 1000)
  redis.call('BITFIELD', key, 'SET', 'u32', UNTIL_AT, kept)
end

local function write_version(key, count)
  if is_scope(key) then
    redis.call('BITFIELD', key, 'SET', 'i64', MARK_AT, string.format('%d', MARK),
      'SET', 'i64', COUNT_AT, count)
    keep_state(key, math.max(VERSION_TTL, STATE_KEEP_MS))
  else
    redis.call('SET', key, RUN .. count, 'PX', VERSION_TTL)
  end
end

-- The value of a version key, nil when missing or made by another server run.
local function read_version(key)
  if is_scope(key) then
    local version = redis.call('BITFIELD', key, 'GET', 'i64', MARK_AT, 'GET', 'i64', COUNT_AT)
    if version[1] ~= MARK then return nil end
    return string.format('%s%d', RUN, version[2])
  end
  local version = redis.call('GET', key)
  if ours(version) then return version end
  return nil
end

local function new_version(key)
  made = made + 1
  write_version(key, made)
  return RUN .. made
end

-- The current value of a version key, made anew when missing or made by another server run.
local function current(key)
  return read_version(key) or new_version(key)
end

local function bump(key)
  new_version(key)
end

-- Keep version keys at least `ttl` ms (an entry stored under them must not outlive them).
local function keep(keys, from, to, ttl)
  for i = from, to do
    if is_scope(keys[i]) then
      keep_state(keys[i], ttl)
    elseif redis.call('PTTL', keys[i]) < ttl then
      redis.call('PEXPIRE', keys[i], ttl)
    end
  end
end

-- Entries ------------------------------------------------------------------------------------
--
-- Stored form of an entry: a stamp (the scope version it was stored under, or an empty line),
-- its own version, one line per tag ("<version> <tag>"; the tag's version key is derived from
-- the tag, in the same hash slot), an empty line, then the payload. An entry is served only
-- while every version it records is current, so an invalidation is a version bump whatever the
-- number of entries a tag holds.
--
-- The stamp is a shortcut for that check. Every change that bumps an entry's own version or a
-- tag's also bumps the scope version of what it bumps (see invalidate, delete, fill,
-- write_through), so while the scope version is the one an entry was stamped with, none of its
-- versions changed. An entry is stamped only when all its tags are in its own scope; a scope
-- version lost and made anew fails the shortcut, and the entry is then checked version by
-- version.

-- What a stored form records: where its payload starts, the keys of the versions it records
-- (the first, its own version's, left to the caller) and those versions; nil when malformed.
local function recorded(stored)
  local pos = string.find(stored, '\n', 1, true)
  if not pos then return nil end
  local keys, wanted = {}, {}
  pos = pos + 1
  while true do
    local stop = string.find(stored, '\n', pos, true)
    if not stop then return nil end
    if stop == pos then break end
    local line = string.sub(stored, pos, stop - 1)
    if #keys == 0 then
      keys[1], wanted[1] = false, line  -- the own version: its key is the caller's
    else
      local space = string.find(line, ' ', 1, true)
      if not space then return nil end
      wanted[#wanted + 1] = string.sub(line, 1, space - 1)
      keys[#keys + 1] = PREFIX .. 'tagv:' .. string.sub(line, space + 1)
    end
    pos = stop + 1
  end
  return pos + 1, keys, wanted
end

-- The payload of an entry (keys: entry, lock, scope version, own version) still valid, else
-- nil; and the scope version when current (nil when missing or made by another run).
local function valid_entry(keys)
  local stored, scope = redis.call('GET', keys[1]), read_version(keys[3])
  if not stored then return nil, scope end
  local stamp_end = string.find(stored, '\n', 1, true)
  if not stamp_end then return nil, scope end
  if scope and stamp_end == #scope + 1 and string.sub(stored, 1, stamp_end - 1) == scope then
    -- The shortcut: nothing changed in the scope since the entry was stored.
    local header_end = string.find(stored, '\n\n', stamp_end, true)
    return header_end and string.sub(stored, header_end + 2), scope
  end
  local start, version_keys, wanted = recorded(stored)
  if not start then return nil, scope end
  version_keys[1] = keys[4]
  local versions = redis.call('MGET', unpack(version_keys))
  for i = 1, #wanted do
    if versions[i] ~= wanted[i] or not ours(versions[i]) then return nil, scope end
  end
  return string.sub(stored, start), scope
end

-- An entry's stored form under the current versions of its own key (keys[own]) and its n tags
-- (the keys after it), stamped with the scope version `stamp` ('' for none).
local function stored_form(keys, own, n, tags, stamp, payload)
  local lines = {stamp, current(keys[own])}
  for i = 1, n do lines[#lines + 1] = current(keys[own + i]) .. ' ' .. tags[i] end
  return table.concat(lines, '\n') .. '\n\n' .. payload
end

-- The read of a cache entry: the payload when valid (an entry stored under versions that
-- changed since is deleted, never returned), the fill lock when asked for and free, the scope
-- version, and on a miss the versions to fill the entry under.
-- keys: entry, lock, scope version, own version, the tags' versions
-- token: the lock token ('' to take no lock); lock_ttl: its time to live in ms
-- answers {payload or false, 1 when this caller took the lock else 0, scope version, on a miss
-- the current versions of the own key and the tags}
local function read_entry(keys, token, lock_ttl)
  local payload, scope = valid_entry(keys)
  if payload then return {payload, 0, scope or current(keys[3])} end
  redis.call('DEL', keys[1])
  local answer = {false, 0, scope or current(keys[3])}
  if token ~= '' and redis.call('SET', keys[2], token, 'NX', 'PX', lock_ttl) then answer[2] = 1 end
  for i = 4, #keys do answer[#answer + 1] = current(keys[i]) end
  return answer
end

-- Rate limits --------------------------------------------------------------------------------
--
-- A window of the last 61 whole seconds, in the bits of a scope state after its version (see
-- Scope states): one slot per second (its second modulo 61: a slot is reused 61 seconds after
-- it was last used), each the second it counts and its count, and the total of the counts. At
-- most N requests are allowed in any 61 consecutive seconds, hence in any 60-second interval,
-- whatever it straddles: a request may be held back up to one second longer than an exact
-- sliding window would. The window is 512 bytes however many requests it counts.
--
-- A request counts itself in one BITFIELD (here, or in the app on a hit): it sets its slot's
-- second, which answers the second the slot held, and adds one to the slot and to the total.
-- When the slot held another second, that second left the window: the count it held (the count
-- answered, less this request) is stale, and the request takes it out of the slot and the total
-- (the requests of the same second that came meanwhile found their own second there and leave
-- it alone). The total can therefore only hold too much (slots of seconds long gone, not reused
-- since), never too little: a total at or under the limit allows the request; over it, the
-- window is counted again from its slots (those of seconds gone are cleared), and the request
-- is refused, and its count taken back, when that count is still over the limit.

local function slot_bits(second)
  local at = SLOTS_AT + 64 * (second % WINDOW)
  return at, at + 32
end

-- Take `stale` (a second gone's count) out of the slot at `count_at` and out of the total;
-- answers the total.
local function take_out(key, count_at, stale)
  local total = redis.call('BITFIELD', key, 'OVERFLOW', 'SAT',
    'INCRBY', 'u32', count_at, -stale, 'INCRBY', 'u32', TOTAL_AT, -stale)
  return total[2]
end

-- Count the window again from its slots at `second`: clear the slots of seconds that left it and
-- set the total; answers the total and the oldest second still counted (nil when none).
local function recount(key, second)
  local raw = redis.call('GET', key) or ''
  local cleared, total, oldest = {}, 0, nil
  for i = 0, WINDOW - 1 do
    local at = 25 + 8 * i  -- the slot's first byte (Lua strings count from 1)
    if #raw < at + 7 then break end
    local stamp, count = struct.unpack('>I4I4', raw, at)
    if count > 0 then
      if stamp > second - WINDOW then
        total = total + count
        if not oldest or stamp < oldest then oldest = stamp end
      else
        local n = #cleared
        cleared[n + 1], cleared[n + 2], cleared[n + 3], cleared[n + 4] =
          'SET', 'u32', SLOTS_AT + 64 * i + 32, 0
      end
    end
  end
  redis.call('BITFIELD', key, 'SET', 'u32', TOTAL_AT, total, unpack(cleared))
  return total, oldest
end

-- The second and the stale count of what the app counted ('<second> <stale>').
local function app_count(counted)
  local at = string.find(counted, ' ', 1, true)
  return tonumber(string.sub(counted, 1, at - 1)), tonumber(string.sub(counted, at + 1))
end

-- Count one request at server time `now` ({seconds, microseconds}) if `limit` allows it.
-- `counted` is '' or, when the app counted the request already (see above), '<second> <stale
-- count it found>'.
-- answers {1 allowed or 0 refused, requests in the window (this one included when allowed),
-- ms until the oldest counted request leaves the window (when allowed without a recount: until
-- this one does, which bounds it)}
local function count_request(key, limit, now, counted)
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local second, stale, total
  if counted == '' then
    second = tonumber(now[1])
    local stamp_at, count_at = slot_bits(second)
    local found = redis.call('BITFIELD', key, 'OVERFLOW', 'SAT', 'SET', 'u32', stamp_at, second,
      'INCRBY', 'u32', count_at, 1, 'INCRBY', 'u32', TOTAL_AT, 1)
    stale, total = found[1] ~= second and found[2] - 1 or 0, found[3]
  else
    second, stale = app_count(counted)
    total = redis.call('BITFIELD', key, 'GET', 'u32', TOTAL_AT)[1]
  end
  local _, count_at = slot_bits(second)
  if stale > 0 then total = take_out(key, count_at, stale) end
  keep_state(key, (WINDOW + 1) * 1000)
  if total <= limit then return {1, total, (second + WINDOW) * 1000 - now_ms} end
  local oldest
  total, oldest = recount(key, math.max(second, tonumber(now[1])))
  if total <= limit then return {1, total, ((oldest or second) + WINDOW) * 1000 - now_ms} end
  total = take_out(key, count_at, 1)
  return {0, total, (oldest + WINDOW) * 1000 - now_ms}
end

-- Take back the count of a request the app counted (`counted` as in count_request) that a check
-- before its window refused.
local function uncount(key, counted)
  local second, stale = app_count(counted)
  local _, count_at = slot_bits(second)
  take_out(key, count_at, stale + 1)
end

-- Revocation ---------------------------------------------------------------------------------
--
-- A subject's revocation hash (a user's): `built` the run mark of the server run that built it
-- from the source of truth, `building` the build under way (its run mark, then its id), `gen`
-- the subject's token generation (tokens of an older one are refused), `gone` the subject was
-- deleted, `s:<session>` a revoked session. A missing hash, or one built by another server run
-- (restored from disk without the revocations made after, or a replica promoted without them),
-- never reads as "nothing revoked": the verdict is "unknown" and the caller rebuilds it.
local OK, REVOKED, UNKNOWN = 1, -1, -2

-- The verdict on a token (OK, REVOKED or UNKNOWN) of the session whose field is `session_field`
-- (`s:<session>`) and of token generation `generation`.
local function verdict(key, session_field, generation)
  local state = redis.call('HMGET', key, 'built', 'gen', 'gone', session_field)
  if state[1] ~= RUN then return UNKNOWN end
  if state[3] or state[4] or tonumber(generation) < tonumber(state[2] or '0') then
    return REVOKED
  end
  return OK
end

-- Public functions -----------------------------------------------------------------------------

local VERSION = 'dev'  -- the loader writes the digest of this file here

local function register(name, flags, callback)
  redis.register_function{function_name = name .. '_' .. VERSION, callback = callback, flags = flags}
end

local ANYTIME = {'allow-oom'}
local WHEN_ROOM = {}
local R, L, E, S = 82, 76, 69, 83  -- the steps' letters, as string.byte gives them

-- request: what a request asks of Redis, in one call: its checks, then its read.
-- args: the steps (one letter each, in the order they run), the version arguments (prefix,
-- version ttl), then each step's arguments; each step takes the next of the keys:
--   R  a token's revocation check: key the subject's revocation hash; args its session's field
--      (`s:<session>`), its generation; refuses unless the verdict is OK (answers the verdict)
--   L  a rate limit (count_request): key its window (a plain one, or a scope state's); args the
--      limit, and '' or what the app counted already; refuses when over the limit (answers
--      {allowed, count, ms to reset})
--   E  a cache entry's read (read_entry): keys entry, lock, scope version, own version and the
--      n tags' versions; args n, lock token ('' for none), lock ttl in ms (answers read_entry's
--      answer)
--   S  a version's current value (the scope version that checks the in-process layer): key the
--      version key (answers the version)
-- answers {1, each step's answer} when every step ran, or {0, the answers up to and including
-- the step that refused}; a request the app counted already is taken out of its window again
-- when a check before the window refuses it (a refused request counts nowhere)
register('request', ANYTIME, function(keys, args)
  begin(args[2], tonumber(args[3]))
  local steps = args[1]
  local answers, k, a = {1}, 1, 4
  local now = nil
  for i = 1, #steps do
    local step, answer, refused = string.byte(steps, i), nil, false
    if step == R then
      answer = verdict(keys[k], args[a], args[a + 1])
      refused = answer ~= OK
      k, a = k + 1, a + 2
    elseif step == L then
      now = now or redis.call('TIME')
      answer = count_request(keys[k], tonumber(args[a]), now, args[a + 1])
      refused = answer[1] == 0
      k, a = k + 1, a + 2
    elseif step == E then
      local n = tonumber(args[a])
      answer = read_entry({unpack(keys, k, k + 3 + n)}, args[a + 1], args[a + 2])
      k, a = k + 4 + n, a + 3
    elseif step == S then
      answer = current(keys[k])
      k = k + 1
    else
      return redis.error_reply('unknown request step ' .. string.char(step))
    end
    answers[#answers + 1] = answer
    if refused then
      answers[1] = 0
      for j = i + 1, #steps do  -- the checks after it: only windows have keys to give back
        local later = string.byte(steps, j)
        if later == R then
          k, a = k + 1, a + 2
        elseif later == L then
          if args[a + 1] ~= '' then uncount(keys[k], args[a + 1]) end
          k, a = k + 1, a + 2
        else
          break
        end
      end
      return answers
    end
  end
  return answers
end)

-- mark: this server run's mark (see Versions) and the server's clock, for a connection to learn
-- once (a restart or a failover breaks it): a scope state whose version carries another mark
-- was not made by this run.
-- answers {the mark, seconds, microseconds}
register('mark', {'allow-oom', 'no-writes'}, function(keys, args)
  start_run()
  local now = redis.call('TIME')
  return {string.format('%d', MARK), now[1], now[2]}
end)

-- keep_state: keep a scope state (its window) STATE_KEEP_MS more; a reader of the state calls
-- it when the second until which the state is kept comes within a window's length.
-- keys: the scope state
register('keep_state', ANYTIME, function(keys, args)
  keep_state(keys[1], STATE_KEEP_MS)
  return 1
end)

-- fill: store an entry under its current versions, unless versions read before its fetch
-- changed since (a leased fill); then release the fill lock if this caller still owns it and
-- wake the callers waiting for the fill. A store without read versions (a set: it overwrites)
-- bumps the entry's own version, refusing fills in flight, and the scope's, so no process's
-- memory layer serves the value it replaced.
-- keys: entry, lock, scope version, own version, n tag versions
-- args: version arguments, payload, time to live in ms, lock token ('' when no lock is held),
-- fill channel ('' for none), '1' to stamp the entry with its scope version (its tags are all
-- in its scope) else '', n, the n tags, then the versions read before the fetch (own, then the
-- tags'; none for a set)
-- answers {1 stored or 0 refused (a version changed: nothing stored), the scope version after}
register('fill', WHEN_ROOM, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local ttl, n = tonumber(args[4]), tonumber(args[8])
  local stored = 1
  if #args > 8 + n then
    for i = 0, n do
      if current(keys[4 + i]) ~= args[9 + n + i] then stored = 0 end
    end
  else
    bump(keys[4])
    bump(keys[3])
  end
  if stored == 1 then
    local stamp = args[7] == '1' and current(keys[3]) or ''
    redis.call('SET', keys[1], stored_form(keys, 4, n, {unpack(args, 9, 8 + n)}, stamp, args[3]), 'PX', ttl)
    keep(keys, stamp == '' and 4 or 3, 4 + n, ttl)  -- the stamp's scope version too
  end
  if args[5] ~= '' and redis.call('GET', keys[2]) == args[5] then redis.call('DEL', keys[2]) end
  if args[6] ~= '' then redis.call('PUBLISH', args[6], keys[1]) end
  return {stored, current(keys[3])}
end)

-- release: delete the fill lock only if this caller still owns it, and wake the waiters.
-- keys: lock; args: lock token, fill channel, the entry key the waiters wait for
-- answers 1 when released, 0 when the lock had expired or passed to another caller
register('release', ANYTIME, function(keys, args)
  local released = 0
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
    released = 1
  end
  redis.call('PUBLISH', args[2], args[3])
  return released
end)

-- renew: extend the fill lock's expiry only while this caller's token still owns it.
-- keys: lock; args: lock token, time to live in ms
-- answers 1 when extended, 0 when the lock is gone or another caller's
register('renew', ANYTIME, function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('PEXPIRE', keys[1], args[2])
  end
  return 0
end)

-- invalidate: bump the versions of tags and of their scopes. Every entry stored under a tag's
-- earlier version fails its check from now on (fills already in flight included), and memory
-- layers drop what they kept of those scopes.
-- keys: n tag versions, then their n scope versions; args: version arguments
-- answers the number of tags
register('invalidate', ANYTIME, function(keys, args)
  begin(args[1], tonumber(args[2]))
  for i = 1, #keys do bump(keys[i]) end
  return #keys / 2
end)

-- delete: delete entries and bump their own versions (fills in flight are refused) and their
-- scopes' (memory layers drop them).
-- keys: n entries, their n own versions, their n scope versions; args: version arguments
-- answers the number of entries that existed
register('delete', ANYTIME, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local n = #keys / 3
  local existed = 0
  for i = 1, n do existed = existed + redis.call('DEL', keys[i]) end
  for i = n + 1, #keys do bump(keys[i]) end
  return existed
end)

-- write_through: after a write to the source, invalidate tags and store the entry's new value
-- in one step, when no other change of the entry came between the writer's lease (its own
-- version, read before it wrote to the source) and now; else delete it, and the next reader
-- fills it from the source. Writers that overlap never store at all, so the order in which they
-- reach Redis does not matter, and a lease read before a loss of Redis's state never matches.
-- keys: entry, its scope version, its own version, n tag versions, k versions of tags to
-- invalidate, their k scope versions
-- args: version arguments, payload, time to live in ms, the lease, '1' to stamp the entry (see
-- fill), n, k, the n tags
-- answers 1 when stored, 0 when deleted
register('write_through', WHEN_ROOM, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local n, k = tonumber(args[7]), tonumber(args[8])
  for i = 4 + n, 3 + n + 2 * k do bump(keys[i]) end
  bump(keys[2])
  local leased = current(keys[3]) == args[5]
  bump(keys[3])
  if not leased then
    redis.call('DEL', keys[1])
    return 0
  end
  local ttl = tonumber(args[4])
  local stamp = args[6] == '1' and current(keys[2]) or ''
  redis.call('SET', keys[1], stored_form(keys, 3, n, {unpack(args, 9, 8 + n)}, stamp, args[3]), 'PX', ttl)
  keep(keys, stamp == '' and 3 or 2, 3 + n, ttl)  -- the stamp's scope version too
  return 1
end)

-- Capped lists (feeds): a list is served only while the version it was last made or extended
-- under (its mark) is its current version: a list that came back from disk, or that missed a
-- push while its version was lost, is never read.

-- list_read: the first items of a list still valid, and its current version.
-- keys: list, its version, its mark; args: version arguments, how many items
-- answers {the items (none when missing or no longer valid), the current version}
register('list_read', ANYTIME, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local version = current(keys[2])
  if redis.call('GET', keys[3]) ~= version then
    redis.call('DEL', keys[1])
    return {{}, version}
  end
  return {redis.call('LRANGE', keys[1], 0, tonumber(args[3]) - 1), version}
end)

-- list_push: prepend an item to a capped list only if the list is cached and valid (a missing
-- list is rebuilt from the source of truth by its next reader), and bump the list's version so
-- that a rebuild already in flight is refused.
-- keys: list, its version, its mark; args: version arguments, item, maximum length
-- answers the new length (0 when the list was not cached)
register('list_push', WHEN_ROOM, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local valid_list = redis.call('GET', keys[3]) == current(keys[2])
  bump(keys[2])
  if not valid_list then
    redis.call('DEL', keys[1], keys[3])
    return 0
  end
  local length = redis.call('LPUSHX', keys[1], args[3])
  if length > 0 then
    redis.call('LTRIM', keys[1], 0, tonumber(args[4]) - 1)
    redis.call('SET', keys[3], current(keys[2]), 'PX', math.max(redis.call('PTTL', keys[1]), 1))
  end
  return length
end)

-- list_fill: store a list rebuilt from the source of truth unless it changed since the rebuild
-- began or another caller stored a valid one first.
-- keys: list, its version, its mark
-- args: version arguments, time to live in ms, the version read before the rebuild, the items
-- (oldest first)
-- answers 1 when stored, 0 otherwise
register('list_fill', WHEN_ROOM, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local version = current(keys[2])
  if version ~= args[4] then return 0 end
  if redis.call('GET', keys[3]) == version and redis.call('EXISTS', keys[1]) == 1 then return 0 end
  redis.call('DEL', keys[1])
  if #args > 4 then
    redis.call('LPUSH', keys[1], unpack(args, 5))
    redis.call('PEXPIRE', keys[1], args[3])
    redis.call('SET', keys[3], version, 'PX', args[3])
    keep(keys, 2, 2, tonumber(args[3]))
  end
  return 1
end)

-- revocation_begin: before a build reads the source of truth, mark the hash as being built by
-- this server run (once: concurrent builders share the mark), so a build whose hash vanished
-- meanwhile (expired, flushed, restored from disk) is refused instead of recreating the hash
-- without a revocation recorded in it. A hash built, or being built, by another server run is
-- dropped first: every revocation it held is in the source of truth, which the build reads
-- after this.
-- keys: the revocation hash; args: version arguments, time to live in ms, a new build id
-- answers the build id to pass to revocation_record
register('revocation_begin', ANYTIME, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local state = redis.call('HMGET', keys[1], 'built', 'building')
  if (state[1] and state[1] ~= RUN) or (state[2] and not ours(state[2])) then
    redis.call('DEL', keys[1])
  end
  redis.call('HSETNX', keys[1], 'building', RUN .. args[4])
  if redis.call('PTTL', keys[1]) < 0 then redis.call('PEXPIRE', keys[1], args[3]) end
  return redis.call('HGET', keys[1], 'building')
end)

-- revocation_record: add revocations to a subject's hash; the hash expires `ttl` after its
-- first write (the tokens' lifetime: a revoked session only matters while its tokens live). The
-- subject's scope version is bumped too: an app that remembers a verdict under the version it
-- read with it (taskapp/cache/scope_state.py) asks again.
-- keys: the revocation hash, the subject's scope version
-- args: version arguments, time to live in ms, a build id from revocation_begin when this is a
-- build from the source of truth ('' otherwise), a token generation ('' for none; only
-- raises), '1' when the subject is gone, the revoked sessions' fields (`s:<session>`)
-- answers 1, or 0 when a build's hash is no longer the one it began on, in this server run
-- (nothing written)
register('revocation_record', ANYTIME, function(keys, args)
  begin(args[1], tonumber(args[2]))
  local key = keys[1]
  if args[4] ~= '' then
    -- A build records only into the hash it marked, in this server run: a mark restored from
    -- disk (the same id, another run) belongs to a hash without what was recorded since.
    local building = redis.call('HGET', key, 'building')
    if building ~= args[4] or not ours(building) then return 0 end
  end
  if args[5] ~= '' and tonumber(args[5]) > tonumber(redis.call('HGET', key, 'gen') or '-1') then
    redis.call('HSET', key, 'gen', args[5])
  end
  if args[6] == '1' then redis.call('HSET', key, 'gone', '1') end
  for i = 7, #args do redis.call('HSET', key, args[i], '1') end
  if args[4] ~= '' then redis.call('HSET', key, 'built', RUN) end
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, args[3]) end
  bump(keys[2])
  return 1
end)

-- claim: mark something as done once (a refresh token as presented).
-- keys: the claim; args: its time to live in ms
-- answers 1 for the first caller, 0 for every later one
register('claim', ANYTIME, function(keys, args)
  if redis.call('SET', keys[1], '1', 'NX', 'PX', args[1]) then return 1 end
  return 0
end)

-- Write-behind ---------------------------------------------------------------------------------
--
-- Changes answered from Redis at once and applied to the source by flushers: see
-- taskapp/cache/writebehind.py. The pending states, the stream and the apply leases have no
-- expiry (they live until applied); only wb_stage stores a change, so a full Redis refuses a
-- new change (the request is answered 503: nothing was queued) and never what settles one.

-- wb_stage: merge a change into an object's pending state and give it the next version, in one
-- step (concurrent changes of one object never lose each other); when nothing was pending, also
-- queue the object on the write-behind stream (when something was, its entry is queued already:
-- the flusher applies the pending state as it is when it gets there). A caller whose view of the
-- object is older than the last version staged (a flusher applied and dropped the pending state
-- since the caller read it), or was read longer ago than that version is remembered, is refused,
-- to read again. A change of a deleted object (its tombstone is set: the caller read it before
-- the delete) is refused too.
-- keys[1] the object's pending state (JSON, no expiry: it lives until a flusher applied it),
-- keys[2] the stream, keys[3] the last version staged for the object, keys[4] its tombstone
-- args[1] the object as the caller read it (JSON with its version; used when nothing is
-- pending), args[2] the change (a JSON object of fields), args[3] the object's id,
-- args[4] time to live of the last-version marker in ms, args[5] the latest time the change may
-- be queued (ms since the epoch, '' for none): a script that reaches Redis later (it sat in the
-- socket of a paused server) belongs to a request already answered 503, so it changes nothing;
-- args[6] when the caller read the object (ms since the epoch, '' when unknown)
-- answers the new pending state (JSON), false when the caller's object is outdated, 'deleted'
-- when the object has a tombstone, or 'late' past the deadline
register('wb_stage', WHEN_ROOM, function(keys, args)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if args[5] ~= '' and now_ms > tonumber(args[5]) then return 'late' end
  if redis.call('EXISTS', keys[4]) == 1 then return 'deleted' end
  local current = redis.call('GET', keys[1])
  local state
  if current then
    state = cjson.decode(current)
  else
    if args[6] ~= '' and now_ms - tonumber(args[6]) >= tonumber(args[4]) then return false end
    state = cjson.decode(args[1])
    local staged = tonumber(redis.call('GET', keys[3]) or '0')
    if (tonumber(state['version']) or 0) < staged then return false end
  end
  for field, value in pairs(cjson.decode(args[2])) do state[field] = value end
  state['version'] = (tonumber(state['version']) or 0) + 1
  local encoded = cjson.encode(state)
  redis.call('SET', keys[1], encoded)
  redis.call('SET', keys[3], state['version'], 'PX', args[4])
  if not current then
    redis.call('XADD', keys[2], '*', 'id', args[3], 'key', keys[1])
  end
  return encoded
end)

-- wb_tombstone: before an object is deleted from the source, refuse every later change of it (a
-- writer that read it before the delete would otherwise stage a state that brings it back) and
-- drop its pending state (its queued entry then finds nothing to apply).
-- keys[1] the object's pending state, keys[2] its tombstone
-- args[1] time to live of the tombstone in ms
-- answers the pending state dropped (JSON), or false when none was pending
register('wb_tombstone', ANYTIME, function(keys, args)
  local current = redis.call('GET', keys[1])
  redis.call('SET', keys[2], '1', 'PX', args[1])
  redis.call('DEL', keys[1])
  return current
end)

-- wb_revive: the delete failed at the source: lift the tombstone and put back the pending state it
-- dropped, queued again (the entry queued before may have been acknowledged meanwhile, finding
-- nothing to apply; if not, the object is queued twice, which its apply lease makes harmless).
-- keys[1] the object's pending state, keys[2] its tombstone, keys[3] the stream
-- args[1] the pending state the tombstone dropped (JSON, or '' when none), args[2] the object id
-- answers 1 when a pending state was put back, else 0
register('wb_revive', ANYTIME, function(keys, args)
  redis.call('DEL', keys[2])
  if args[1] == '' or redis.call('EXISTS', keys[1]) == 1 then return 0 end
  redis.call('SET', keys[1], args[1])
  redis.call('XADD', keys[3], '*', 'id', args[2], 'key', keys[1])
  return 1
end)

-- wb_take: before a flusher applies an object, take the object's apply lease and read its pending
-- state as it is now, in one step: no other flusher applies the object until the lease is given
-- back (wb_settle, wb_release) or runs out (a flusher that died mid-apply). The lease keeps its end
-- in its value, not as a Redis expiry, so an eviction policy that evicts keys with an expiry
-- (volatile-*) never takes it from under a flusher.
-- keys[1] the object's pending state, keys[2] its apply lease ("<token> <end, ms since epoch>")
-- args[1] this apply's token, args[2] how long the lease lasts in ms
-- answers the pending state (JSON) with the lease taken, false when nothing is pending (applied
-- and settled already, or deleted; no lease taken), or 'busy' when another flusher holds it
register('wb_take', ANYTIME, function(keys, args)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local lease = redis.call('GET', keys[2])
  if lease then
    local holder, ends = string.match(lease, '^(%S+) (%d+)$')
    if holder ~= args[1] and tonumber(ends or '0') > now_ms then return 'busy' end
  end
  local current = redis.call('GET', keys[1])
  if not current then
    if lease then redis.call('DEL', keys[2]) end
    return false
  end
  redis.call('SET', keys[2], args[1] .. ' ' .. (now_ms + tonumber(args[2])))
  return current
end)

-- wb_settle: after the flusher applied an object's pending state to the source (or found nothing
-- to apply), acknowledge and delete the object's entries (the stream holds only objects not yet
-- applied) and forget their failed attempts; then give the lease back and drop the pending
-- state if it is still the version applied, or else queue the object again: a change that came
-- during the apply is applied on the next round. When the lease ran out and another flusher
-- took the object meanwhile, that flusher settles it.
-- keys[1] the stream, keys[2] the object's pending state, keys[3] the failed-attempts hash,
-- keys[4] the object's apply lease
-- args[1] the consumer group, args[2] the version applied ('' when nothing was: only
-- acknowledge), args[3] the lease's token, args[4] the object id, args[5..] the entry ids
-- answers 1 when nothing is left pending, 0 when the object was queued again for a newer
-- change, 2 when another flusher holds the object now
register('wb_settle', ANYTIME, function(keys, args)
  for i = 5, #args do
    redis.call('XACK', keys[1], args[1], args[i])
    redis.call('XDEL', keys[1], args[i])
    redis.call('HDEL', keys[3], args[i])
  end
  if args[2] == '' then return 1 end
  local lease = redis.call('GET', keys[4])
  if lease then
    if string.match(lease, '^%S+') ~= args[3] then return 2 end
    redis.call('DEL', keys[4])
  end
  local current = redis.call('GET', keys[2])
  if not current then return 1 end
  if tonumber(cjson.decode(current)['version']) <= tonumber(args[2]) then
    redis.call('DEL', keys[2])
    return 1
  end
  redis.call('XADD', keys[1], '*', 'id', args[4], 'key', keys[2])
  return 0
end)

-- wb_release: give an object's apply lease back (the apply failed and the source is done with it),
-- only if this apply still holds it (compare and delete).
-- keys[1] the object's apply lease
-- args[1] the lease's token
-- answers 1 when released, 0 when the lease was not this apply's
register('wb_release', ANYTIME, function(keys, args)
  local lease = redis.call('GET', keys[1])
  if lease and string.match(lease, '^%S+') == args[1] then return redis.call('DEL', keys[1]) end
  return 0
end)

-- wb_dead_letter: a change that failed too often (or an entry that cannot even be read) moves to
-- the dead-letter stream, with why, how often it failed and the state tried (with its version);
-- its entry leaves the work stream, and the pending state is dropped if it is the state tried
-- (readers then see what the source has: the truth), or else the object is queued again: a
-- newer change gets tries of its own.
-- keys[1] the stream, keys[2] the dead-letter stream, keys[3] the failed-attempts hash,
-- keys[4] the object's pending state (the stream's own name when the entry names none)
-- args[1] the consumer group, args[2] the entry id, args[3] the version tried ('' when
-- unknown), args[4] the error, args[5] the attempts, args[6] the dead letters kept, args[7] the
-- state tried (JSON, '' when none), args[8] the object id, args[9..] the entry's fields and values
-- answers the dead letter's id
register('wb_dead_letter', ANYTIME, function(keys, args)
  local fields = {}
  for i = 9, #args do fields[#fields + 1] = args[i] end
  if args[3] ~= '' then
    fields[#fields + 1] = 'version'
    fields[#fields + 1] = args[3]
  end
  if args[7] ~= '' then
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = args[7]
  end
  local id = redis.call('XADD', keys[2], 'MAXLEN', '~', args[6], '*',
    'entry', args[2], 'error', args[4], 'attempts', args[5], unpack(fields))
  redis.call('XACK', keys[1], args[1], args[2])
  redis.call('XDEL', keys[1], args[2])
  redis.call('HDEL', keys[3], args[2])
  if keys[4] ~= keys[1] and args[3] ~= '' then
    local current = redis.call('GET', keys[4])
    if current then
      if tonumber(cjson.decode(current)['version']) <= tonumber(args[3]) then
        redis.call('DEL', keys[4])
      else
        redis.call('XADD', keys[1], '*', 'id', args[8], 'key', keys[4])
      end
    end
  end
  return id
end)

-- wb_prune_consumers: forget the consumers of a group that hold no pending change and have been idle
-- far longer than a live flusher ever is (a flusher that died or was scaled away). Atomic, so no
-- consumer can read entries between the check and the delete (DELCONSUMER drops what it holds).
-- keys[1] the stream
-- args[1] the consumer group, args[2] the idle time in ms past which an empty consumer is dead
-- answers the names of the consumers removed
register('wb_prune_consumers', ANYTIME, function(keys, args)
  local removed = {}
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', keys[1], args[1])) do
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(args[2]) then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], args[1], info['name'])
      removed[#removed + 1] = info['name']
    end
  end
  return removed
end)
