"""Capped lists (feeds): Redis lists kept newest first, rebuilt from the source on a miss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from taskapp.cache import stats
from taskapp.cache.client import Unavailable
from taskapp.cache.counting import EventCounter
from taskapp.cache.entry import Entry, dumps
from taskapp.cache.region import fetch_source
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

# A list is served only while the version it was last made or extended under (its mark) is its
# current version: see list_read, list_push and list_fill in library.lua.


class CappedLists:
    """LPUSH + LTRIM on each change, LRANGE to read, a versioned rebuild on a miss."""

    def __init__(self, store: Store, counter: EventCounter) -> None:
        self.store = store
        self.keys = store.keys
        self.counter = counter

    def push(self, full_key: str, item: Any, maxlen: int) -> None:
        """Prepend ``item`` to a cached list; a list not cached is left to its next reader."""
        try:
            self.store.call(
                "list_push",
                self._keys(full_key),
                self.store.versioned(dumps(item), maxlen),
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
                "list_read", keys, self.store.versioned(limit), op="list"
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
                "list_fill",
                keys,
                self.store.versioned(
                    int(ttl * 1000), version, *(dumps(i) for i in reversed(fetched))
                ),
                op="list",
            )
        except Unavailable:
            log.debug("list %s not stored: Redis unavailable", full_key)
        return fetched[:limit]

    def _keys(self, full_key: str) -> list[str]:
        return [full_key, self.keys.version(full_key), self.keys.list_mark(full_key)]
