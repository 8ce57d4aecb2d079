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
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

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
                keys=[full_key, self.keys.version(full_key)],
                args=[dumps(item), maxlen, self.store.version_ttl_ms],
                op="list",
            )
        except Unavailable:
            self.store.held_back.hold(keys=[full_key])

    def get(
        self, full_key: str, limit: int, fetch: Callable[[], list[Any]], maxlen: int, ttl: float
    ) -> list[Any]:
        """The first ``limit`` items; rebuilt from ``fetch()`` (newest first) on a miss."""
        version_key = self.keys.version(full_key)
        client = self.store.client
        try:
            items, version = self.store.run(
                lambda: (
                    client.pipeline(transaction=False)
                    .lrange(full_key, 0, limit - 1)
                    .get(version_key)
                    .execute()
                ),
                op="list",
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
                keys=[full_key, version_key],
                args=[int(ttl * 1000), version or b"0", *(dumps(i) for i in reversed(fetched))],
                op="list",
            )
        except Unavailable:
            log.debug("list %s not stored: Redis unavailable", full_key)
        return fetched[:limit]
