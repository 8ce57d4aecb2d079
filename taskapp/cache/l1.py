"""The in-process layer in front of Redis: small, short-lived, dropped on any doubt."""

from __future__ import annotations

import threading
from typing import Any

from cachetools import TTLCache


class LocalCache:
    """A size-bounded TTL cache of decoded entries, shared by the threads of one process.

    Each entry is kept with the scope version Redis had when it was read (see ``Keys.
    scope_version``); the cache serves it only while that is still the scope's version, so an
    answered write in any process is never followed by an older answer from this memory.
    Invalidation messages drop entries early. The layer is only used while that channel is
    connected: the notifier drops it whole and switches it off when the channel goes away.
    ``generation`` counts invalidations seen; a reader records it before reading Redis and stores
    the result only if it is unchanged, so an invalidation that arrives while the read is in
    flight is never overwritten by the old value.

    It also keeps the scope versions announced on the scope channel since it was last cleared
    (``announce``), returned with each entry, so that a process whose channel is proven current
    (coherence.py) can check an entry's scope version without asking Redis.
    """

    def __init__(self, max_items: int, ttl: float) -> None:
        self.enabled = max_items > 0
        self.connected = False
        self.generation = 0
        self._items: TTLCache = TTLCache(maxsize=max(max_items, 1), ttl=ttl)
        self._announced: dict[str, bytes] = {}  # scope version key -> the latest version announced
        self._max_announced = max(10 * max_items, 1000)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when entries may be served from memory."""
        return self.enabled and self.connected

    def get(self, key: str, scope_key: str) -> tuple[Any, bytes, bytes | None] | None:
        """The entry under ``key``, the scope version it was read under, and the latest version
        of its scope (``scope_key``) announced since this layer was last cleared (None when none
        was), all read at one moment; None when there is no entry."""
        if not self.active:
            return None
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            return found[0], found[1], self._announced.get(scope_key)

    def announce(self, versions: dict[str, bytes]) -> None:
        """Note scope versions announced on the channel (in the order they were published)."""
        with self._lock:
            self._announced.update(versions)
            if len(self._announced) > self._max_announced:  # bounded: start again, entries too
                self.generation += 1
                self._items.clear()
                self._announced.clear()

    def put(self, key: str, entry: Any, generation: int, scope_version: bytes) -> None:
        """Keep ``entry`` (read under ``scope_version``) unless an invalidation arrived since
        ``generation`` was read."""
        if not self.active:
            return
        with self._lock:
            if generation == self.generation:
                self._items[key] = (entry, scope_version)

    def discard(self, keys: list[str]) -> None:
        """Drop entries (an invalidation, local or from another process)."""
        with self._lock:
            self.generation += 1
            for key in keys:
                self._items.pop(key, None)

    def clear(self) -> None:
        """Drop everything (the channel was lost, or a flush)."""
        with self._lock:
            self.generation += 1
            self._items.clear()
            self._announced.clear()

    def __len__(self) -> int:
        return len(self._items)
