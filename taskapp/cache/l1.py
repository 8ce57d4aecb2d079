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
    """

    def __init__(self, max_items: int, ttl: float) -> None:
        self.enabled = max_items > 0
        self.connected = False
        self.generation = 0
        self._items: TTLCache = TTLCache(maxsize=max(max_items, 1), ttl=ttl)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when entries may be served from memory."""
        return self.enabled and self.connected

    def get(self, key: str) -> tuple[Any, bytes] | None:
        """The entry under ``key`` and its scope version, or None."""
        if not self.active:
            return None
        with self._lock:
            return self._items.get(key)

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

    def __len__(self) -> int:
        return len(self._items)
