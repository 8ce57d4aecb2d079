"""The in-process layer in front of Redis: small, short-lived, dropped on any doubt."""

from __future__ import annotations

import threading
from typing import Any

from cachetools import TTLCache


class LocalCache:
    """A size-bounded TTL cache of decoded entries, shared by the threads of one process.

    Each entry is kept with the scope version Redis returned with it, in the same script (see
    ``Keys.scope_version``); the region serves it only while that is still the scope's version in
    Redis, so an answered write in any process is never followed by an older answer from this
    memory. Versions are unique per change (library.lua): a scope version lost with Redis's
    state comes back as a new value, never as the one an entry was kept under.
    """

    def __init__(self, max_items: int, ttl: float) -> None:
        self.active = max_items > 0
        self._items: TTLCache = TTLCache(maxsize=max(max_items, 1), ttl=ttl)
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Any, bytes] | None:
        """The entry under ``key`` and the scope version it was read under; None when none."""
        if not self.active:
            return None
        try:
            with self._lock:
                return self._items[key]  # type: ignore[no-any-return]
        except KeyError:  # missing or expired (one lookup: ``get`` asks ``in`` first)
            return None

    def put(self, key: str, entry: Any, scope_version: bytes) -> None:
        """Keep ``entry``, read from Redis together with ``scope_version``."""
        if self.active:
            with self._lock:
                self._items[key] = (entry, scope_version)

    def discard(self, keys: list[str]) -> None:
        """Drop entries (this process changed them: memory is not kept for nothing)."""
        with self._lock:
            for key in keys:
                self._items.pop(key, None)

    def clear(self) -> None:
        """Drop everything (an outage, or a flush)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
