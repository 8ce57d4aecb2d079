"""Lua scripts of the cache, each registered once per client and run atomically by Redis.

Every script takes the server's clock (TIME) rather than a client's, so hosts with skewed clocks
agree on expiry. Scripts touch the keys they are given and, in one case named below, keys of the
same hash slot derived from what an entry records; on Redis Cluster the caller keeps those keys in
one hash slot (see ``derived_keys.py``).

Versions. An entry's own version (``v:``), each tag's version (``tagv:``) and each scope's version
(``sv:``) hold a value that is unique per change: the Redis server's run id, then a nonce the
caller made. Nothing can bring a value round again, so a check compares for equality and is never
satisfied by state made before a loss:

- a version key that is missing (flushed, evicted, expired, restarted empty) is made anew when it
  is read, so a fill that read the old value is refused and a memory entry kept under it is not
  served;
- a version made by another server run (restarted from its RDB or AOF file, a replica promoted
  after a failover) is treated as missing: whatever came back from disk with it, and whatever a
  fill read before the loss, fails its check;
- an entry records the versions it was stored under (its own and one per tag) and is served only
  while each is still current, so an invalidation is a version bump, whatever the number of
  entries a tag holds, and an entry that came back from disk is never served.
"""

from __future__ import annotations

from typing import Any

# VERSIONS: a Lua prelude of the scripts that read or change versions (above). Each such script
# takes ARGV[1] the key prefix, ARGV[2] a nonce (unique per call), ARGV[3] the time to live of a
# version in ms, and its own arguments from ARGV[4].
# RUN: a Lua prelude naming this Redis server's run (its run id, new at every start and on a
# promoted replica: what was restored from disk or replicated carries an older one). The
# embedded server has no INFO: its one run is "embedded".
RUN = """
local info = redis.pcall('INFO', 'server')
local RUN = string.sub(type(info) == 'string' and string.match(info, 'run_id:(%x+)') or 'embedded', 1, 16) .. ':'
"""

_VERSION_FUNCTIONS = """
local PREFIX, NONCE, VERSION_TTL = ARGV[1], ARGV[2], tonumber(ARGV[3])
local made = 0
local function new_version()
  made = made + 1
  return RUN .. NONCE .. '.' .. made
end
-- the current value of a version key, made anew when missing or made by another server run
local function current(key)
  local version = redis.call('GET', key)
  if version and string.sub(version, 1, #RUN) == RUN then return version end
  version = new_version()
  redis.call('SET', key, version, 'PX', VERSION_TTL)
  return version
end
local function bump(key)
  redis.call('SET', key, new_version(), 'PX', VERSION_TTL)
end
-- the value of an entry as stored (its versions, then the payload) when every version it records
-- is still current, else nil. Stored form: the entry's own version on the first line, then one
-- line per tag ("<version> <tag>", the tag's version key derived from the tag: same hash slot),
-- an empty line, then the payload.
local function valid(stored, own_key)
  local pos, first = 1, true
  while true do
    local stop = string.find(stored, '\\n', pos, true)
    if not stop then return nil end
    if stop == pos then return string.sub(stored, stop + 1) end
    local line = string.sub(stored, pos, stop - 1)
    local key, version = own_key, line
    if not first then
      local space = string.find(line, ' ', 1, true)
      if not space then return nil end
      version = string.sub(line, 1, space - 1)
      key = PREFIX .. 'tagv:' .. string.sub(line, space + 1)
    end
    if current(key) ~= version then return nil end
    first = false
    pos = stop + 1
  end
end
"""
VERSIONS = RUN + _VERSION_FUNCTIONS

# LOOKUP: an entry still valid (see VERSIONS), the scope version, the versions to fill the entry
# under, and the fill lock if asked for and free: the read, the lease and the lock of a fill in one
# round trip. An entry stored under versions that changed since is deleted, never returned.
# KEYS[1] entry, KEYS[2] lock, KEYS[3] scope version, KEYS[4] the entry's own version,
# KEYS[5 ..] the versions of the caller's tags
# ARGV[1 .. 3] see VERSIONS, ARGV[4] lock token ('' to take no lock), ARGV[5] lock ttl in ms
# returns {the payload or false, 1 when this caller took the lock else 0, the scope version,
# the current versions of KEYS[4 ..]}
LOOKUP = (
    VERSIONS
    + """
local result = {false, 0, current(KEYS[3])}
local stored = redis.call('GET', KEYS[1])
if stored then
  local payload = valid(stored, KEYS[4])
  if payload then result[1] = payload else redis.call('DEL', KEYS[1]) end
end
if not result[1] and ARGV[4] ~= '' and redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
  result[2] = 1
end
for i = 4, #KEYS do result[#result + 1] = current(KEYS[i]) end
return result
"""
)

# SCOPE_READ: the current version of a scope (the in-process layer's check) or of any version key
# (a write-through lease).
# KEYS[1] scope version; ARGV[1 .. 3] see VERSIONS
# returns the version
SCOPE_READ = (
    VERSIONS
    + """
return current(KEYS[1])
"""
)

# FILL: store an entry under its current versions, unless versions read before its fetch changed
# since (a leased fill), then release the fill lock if this caller still owns it and wake the
# callers waiting for the fill. A store without read versions (a set: it overwrites) bumps the
# entry's own version, refusing fills in flight, and the scope's, so no process's memory layer
# serves the value it replaced.
# KEYS[1] entry, KEYS[2] lock, KEYS[3] scope version, KEYS[4] the entry's own version,
# KEYS[5 .. 4+n] the versions of its tags
# ARGV[1 .. 3] see VERSIONS, ARGV[4] payload, ARGV[5] time to live in ms, ARGV[6] lock token (''
# when no lock is held), ARGV[7] fill channel ('' for none), ARGV[8] n, ARGV[9 .. 8+n] the tags,
# ARGV[9+n ..] the versions read before the fetch (own, then the tags'; none for a set)
# returns {1 when stored or 0 when a version changed (nothing stored), the scope version after}
FILL = (
    VERSIONS
    + """
local n = tonumber(ARGV[8])
local ttl = tonumber(ARGV[5])
local stored = 1
if #ARGV > 8 + n then
  for i = 0, n do
    if current(KEYS[4 + i]) ~= ARGV[9 + n + i] then stored = 0 end
  end
else
  bump(KEYS[4])
  bump(KEYS[3])
end
if stored == 1 then
  local lines = {current(KEYS[4])}
  for i = 1, n do lines[#lines + 1] = current(KEYS[4 + i]) .. ' ' .. ARGV[8 + i] end
  redis.call('SET', KEYS[1], table.concat(lines, '\\n') .. '\\n\\n' .. ARGV[4], 'PX', ttl)
  for i = 4, 4 + n do
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], KEYS[1]) end
return {stored, current(KEYS[3])}
"""
)

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

# INVALIDATE: bump the versions of tags and of their scopes. Every entry stored under a tag's
# earlier version fails its check from now on (fills already in flight included), and memory
# layers drop what they kept of those scopes; the work is the same however many entries a tag
# holds.
# KEYS[1 .. n] tag versions, KEYS[n+1 .. 2n] their scope versions
# ARGV[1 .. 3] see VERSIONS
# returns the number of tags
INVALIDATE = (
    VERSIONS
    + """
for i = 1, #KEYS do bump(KEYS[i]) end
return #KEYS / 2
"""
)

# DELETE: delete entries and bump their own versions (fills in flight are refused) and their
# scopes' (memory layers drop them).
# KEYS[1 .. n] entries, KEYS[n+1 .. 2n] their own versions, KEYS[2n+1 .. 3n] their scope versions
# ARGV[1 .. 3] see VERSIONS
# returns the number of entries that existed
DELETE = (
    VERSIONS
    + """
local n = #KEYS / 3
local existed = 0
for i = 1, n do existed = existed + redis.call('DEL', KEYS[i]) end
for i = n + 1, #KEYS do bump(KEYS[i]) end
return existed
"""
)

# WRITE_THROUGH: after a write to the source, invalidate tags and store the entry's new value in
# one step, when no other change of the entry came between the writer's lease (its own version,
# read before it wrote to the source) and now; else delete it, and the next reader fills it from
# the source. Writers that overlap never store at all, so the order in which they reach Redis
# does not matter, and a lease read before a loss of Redis's state never matches.
# KEYS[1] entry, KEYS[2] its scope version, KEYS[3] its own version, KEYS[4 .. 3+n] its tags'
# versions, KEYS[4+n .. 3+n+k] versions of tags to invalidate, KEYS[4+n+k .. 3+n+2k] their scopes
# ARGV[1 .. 3] see VERSIONS, ARGV[4] payload, ARGV[5] time to live in ms, ARGV[6] the lease,
# ARGV[7] n, ARGV[8] k, ARGV[9 .. 8+n] the entry's tags
# returns 1 when stored, 0 when deleted
WRITE_THROUGH = (
    VERSIONS
    + """
local n, k = tonumber(ARGV[7]), tonumber(ARGV[8])
for i = 4 + n, 3 + n + 2 * k do bump(KEYS[i]) end
bump(KEYS[2])
local leased = current(KEYS[3]) == ARGV[6]
bump(KEYS[3])
if not leased then
  redis.call('DEL', KEYS[1])
  return 0
end
local ttl = tonumber(ARGV[5])
local lines = {current(KEYS[3])}
for i = 1, n do lines[#lines + 1] = current(KEYS[3 + i]) .. ' ' .. ARGV[8 + i] end
redis.call('SET', KEYS[1], table.concat(lines, '\\n') .. '\\n\\n' .. ARGV[4], 'PX', ttl)
for i = 3, 3 + n do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""
)


# A chain: scripts run one after the other in one call (one round trip, atomic as one script),
# each on its own KEYS and ARGV as if it were called alone; the preludes they start with (RUN,
# VERSIONS) run once, at the top. A script refuses by answering a list whose first value is 0, and
# the chain stops there. It answers {1, each script's answer} when every script ran, or {0, the
# answers up to and including the refusal}, so a chain is a script like any other: it can be
# chained again, and the caller of a chain that refused knows which script refused.
# KEYS each script's keys, in order
# ARGV the VERSIONS arguments when a script of the chain starts with VERSIONS (prefix, nonce,
# version ttl: given once, and passed to each such script as its ARGV[1 .. 3]), then each
# script's number of keys and of its other arguments, then those arguments
_CHAIN = """
local answers, k, a = {1}, 1, %(first_arg)d
local scripts, versioned = {%(scripts)s}, {%(versioned)s}
for i = 1, #scripts do
  local nk, na = tonumber(ARGV[%(counts)d + 2 * i]), tonumber(ARGV[%(counts)d + 2 * i + 1])
  local args = {unpack(ARGV, a, a + na - 1)}
  if versioned[i] then args = {ARGV[1], ARGV[2], ARGV[3], unpack(ARGV, a, a + na - 1)} end
  local answer = scripts[i]({unpack(KEYS, k, k + nk - 1)}, args)
  k, a = k + nk, a + na
  answers[#answers + 1] = answer
  if type(answer) == 'table' and answer[1] == 0 then
    answers[1] = 0
    return answers
  end
end
return answers
"""
_SCRIPT = """
function(KEYS, ARGV)
%s
end"""

#: The preludes a script may start with, in the order they must run.
PRELUDES = (RUN, _VERSION_FUNCTIONS)

#: A script to run: its Lua source, its keys and its arguments.
Call = tuple[str, list[str], list[Any]]

_CHAINED: dict[tuple[str, ...], tuple[str, tuple[bool, ...]]] = {}


def chain(*calls: Call) -> Call:
    """One call running ``calls`` in order (see ``_CHAIN``): stops at the first that refuses."""
    sources = tuple(source for source, _, _ in calls)
    made = _CHAINED.get(sources)
    if made is None:
        made = _CHAINED[sources] = _chained(sources)
    source, versioned = made
    head: list[Any] = []
    counts: list[int] = []
    keys: list[str] = []
    args: list[Any] = []
    for (_, call_keys, call_args), has_versions in zip(calls, versioned, strict=True):
        if has_versions:
            head = head or call_args[:3]
            call_args = call_args[3:]
        counts += (len(call_keys), len(call_args))
        keys += call_keys
        args += call_args
    return source, keys, head + counts + args


def _chained(sources: tuple[str, ...]) -> tuple[str, tuple[bool, ...]]:
    """The Lua source of a chain of ``sources`` (their preludes once, then each body), and
    which of them take the VERSIONS arguments."""
    bodies = []
    versioned = []
    for source in sources:
        versioned.append(source.startswith(VERSIONS))
        for prelude in PRELUDES:
            if source.startswith(prelude):
                source = source[len(prelude) :]
        bodies.append(_SCRIPT % source)
    uses_run = any(source.startswith(RUN) for source in sources)
    preludes = VERSIONS if any(versioned) else RUN if uses_run else ""
    first_count = 4 if any(versioned) else 1
    return preludes + _CHAIN % {
        "scripts": ",".join(bodies),
        "versioned": ",".join("true" if v else "false" for v in versioned),
        "counts": first_count - 2,
        "first_arg": first_count + 2 * len(sources),
    }, tuple(versioned)
