"""Capped lists (feeds): Redis lists kept newest first, rebuilt from the source on a miss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from taskapp.cache import stats
from taskapp.cache.client import Unavailable
from taskapp.cache.counting import Counter
from taskapp.cache.entry import Entry, dumps
from taskapp.cache.region import fetch_source
from taskapp.cache.scripts import VERSIONS
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

# A list is served only while the version it was last made or extended under (its mark) is its
# current version (see scripts.VERSIONS): a list that came back from disk, or that missed a push
# while its version was lost, is never read.

# LIST_READ: the first items of a list still valid, and its current version.
# KEYS[1] list, KEYS[2] its version, KEYS[3] its mark
# ARGV[1 .. 3] see scripts.VERSIONS, ARGV[4] how many items
# returns {the items (none when missing or no longer valid), the current version}
LIST_READ = (
    VERSIONS
    + """
local version = current(KEYS[2])
if redis.call('GET', KEYS[3]) ~= version then
  redis.call('DEL', KEYS[1])
  return {{}, version}
end
return {redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1), version}
"""
)

# LIST_PUSH: prepend an item to a capped list only if the list is cached and valid (a missing
# list is rebuilt from the source of truth by its next reader), and bump the list's version so
# that a rebuild already in flight is refused.
# KEYS[1] list, KEYS[2] its version, KEYS[3] its mark
# ARGV[1 .. 3] see scripts.VERSIONS, ARGV[4] item, ARGV[5] maximum length
# returns the new length (0 when the list was not cached)
LIST_PUSH = (
    VERSIONS
    + """
local valid = redis.call('GET', KEYS[3]) == current(KEYS[2])
bump(KEYS[2])
if not valid then
  redis.call('DEL', KEYS[1], KEYS[3])
  return 0
end
local length = redis.call('LPUSHX', KEYS[1], ARGV[4])
if length > 0 then
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[5]) - 1)
  redis.call('SET', KEYS[3], current(KEYS[2]), 'PX', math.max(redis.call('PTTL', KEYS[1]), 1))
end
return length
"""
)

# LIST_FILL: store a list rebuilt from the source of truth unless it changed since the rebuild
# began or another caller stored a valid one first.
# KEYS[1] list, KEYS[2] its version, KEYS[3] its mark
# ARGV[1 .. 3] see scripts.VERSIONS, ARGV[4] time to live in ms, ARGV[5] the version read
# before the rebuild, ARGV[6 ..] items, oldest first
# returns 1 when stored, 0 otherwise
LIST_FILL = (
    VERSIONS
    + """
local version = current(KEYS[2])
if version ~= ARGV[5] then return 0 end
if redis.call('GET', KEYS[3]) == version and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
if #ARGV > 5 then
  redis.call('LPUSH', KEYS[1], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('SET', KEYS[3], version, 'PX', ARGV[4])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
end
return 1
"""
)


class CappedLists:
    """LPUSH + LTRIM on each change, LRANGE to read, a versioned rebuild on a miss."""

    def __init__(self, store: Store, counter: Counter) -> None:
        self.store = store
        self.keys = store.keys
        self.counter = counter

    def push(self, full_key: str, item: Any, maxlen: int) -> None:
        """Prepend ``item`` to a cached list; a list not cached is left to its next reader."""
        try:
            self.store.call(
                LIST_PUSH,
                keys=self._keys(full_key),
                args=self.store.versioned(dumps(item), maxlen),
                op="list",
            )
        except Unavailable:
            self.store.held_back.hold(keys=[full_key])

    def get(
        self, full_key: str, limit: int, fetch: Callable[[], list[Any]], maxlen: int, ttl: float
    ) -> list[Any]:
        """The first ``limit`` items; rebuilt from ``fetch()`` (newest first) on a miss."""
        keys = self._keys(full_key)
        try:
            items, version = self.store.call(
                LIST_READ, keys, self.store.versioned(limit), op="list"
            )
        except Unavailable:
            return fetch_source(fetch)[0][:limit]
        if items:
            self.counter.count(stats.REDIS_HIT, full_key)
            return [Entry(raw, 0, []).value for raw in items]
        self.counter.count(stats.REDIS_MISS, full_key)
        fetched = fetch_source(fetch)[0][:maxlen]
        try:
            self.store.call(
                LIST_FILL,
                keys=keys,
                args=self.store.versioned(
                    int(ttl * 1000), version, *(dumps(i) for i in reversed(fetched))
                ),
                op="list",
            )
        except Unavailable:
            log.debug("list %s not stored: Redis unavailable", full_key)
        return fetched[:limit]

    def _keys(self, full_key: str) -> list[str]:
        return [full_key, self.keys.version(full_key), self.keys.list_mark(full_key)]
