"""One app's cache in one process: its parts wired together, found from the app (``state_of``)."""

from __future__ import annotations

import logging
import os
from functools import partial

from flask import Flask

from taskapp.cache import stats
from taskapp.cache.client import Unavailable, connect
from taskapp.cache.counting import EventCounter
from taskapp.cache.derived_keys import Keys
from taskapp.cache.l1 import LocalCache
from taskapp.cache.lists import CappedLists
from taskapp.cache.lock import FillLock
from taskapp.cache.notifier import Notifier
from taskapp.cache.region import Region
from taskapp.cache.settings import CacheSettings
from taskapp.cache.store import Store
from taskapp.cache.writebehind import Flusher, WriteBehindQueue

#: Where an app keeps its cache state (``app.extensions``).
EXTENSION_NAME = "taskapp.cache"
log = logging.getLogger("taskapp.cache")


class CacheState:
    """One app's cache in one process: its parts, wired together (made anew after a fork)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.counter = EventCounter(self.keys)
        self.l1 = LocalCache(settings.l1_max_items, settings.l1_ttl)
        self.store = Store(settings, self.keys, self.counter, on_outage=self.l1.clear)
        self.notifier = Notifier(self.store.client, self.keys, on_tick=self.flush_stats)
        self.lock = FillLock(
            self.store,
            self.notifier,
            self.counter,
            settings.lock_ttl,
            settings.lock_wait,
            settings.fill_timeout,
        )
        self.region = Region(settings, self.store, self.lock, self.l1, self.counter)
        self.lists = CappedLists(self.store, self.counter)
        self.flushers: list[Flusher] = []
        self._write_behind: WriteBehindQueue | None = None

    def write_behind(self) -> WriteBehindQueue:
        """The write-behind queue: requests use the cache's client through the breaker; the
        flushers a connection of their own (they block on the stream longer than the cache's
        short socket timeout allows)."""
        if self._write_behind is None:
            settings = self.settings
            flusher_client = (
                self.store.client
                if settings.redis_url.startswith("memory://")
                else connect(settings.redis_url, cluster=settings.cluster, timeout=5.0)
            )
            self._write_behind = WriteBehindQueue(
                self.store.client,
                self.keys.prefix,
                flush_ms=settings.flush_ms,
                claim_idle_ms=settings.claim_idle_ms,
                apply_lease_ms=settings.apply_lease_ms,
                guard=partial(self.store.run, op="write_behind"),
                flusher_client=flusher_client,
            )
        return self._write_behind

    def flush_stats(self) -> None:
        """Add this process's counts to the shared stats hash (from the listener thread)."""
        recorder = self.counter.recorder
        if recorder.flush_due(1.0):
            gauges: dict[str, float] = {stats.L1_SIZE: len(self.l1)}
            try:
                self.store.run(lambda: recorder.flush(self.store.client, self.keys.stats, gauges))
            except Unavailable:
                log.debug("stats kept in memory: Redis unavailable")

    def close(self) -> None:
        for flusher in self.flushers:
            flusher.stop()
        self.region.close()
        self.notifier.stop()
        self.store.close()


def state_of(app: Flask) -> CacheState:
    """The cache state of ``app`` in this process, without needing an app context."""
    state: CacheState = app.extensions[EXTENSION_NAME]
    if state.pid != os.getpid():  # forked: connections and threads are not ours
        state = app.extensions[EXTENSION_NAME] = CacheState(state.settings)
    if not state.notifier.running:
        state.notifier.start()
    return state
