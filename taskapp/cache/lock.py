"""The fill lock: one caller fills a key across threads, processes and hosts; the others wait.

``SET lock token NX PX`` takes it; a compare-and-delete script releases it only for its owner
and announces the key on the fill channel, so waiters wake on the message instead of polling. A
holder that dies leaves a lock that expires after ``ttl``; a waiter gives up after ``wait`` and
fetches for itself (takeover), so no caller waits for a dead holder longer than that.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from taskapp.cache import scripts, stats
from taskapp.cache.client import Unavailable
from taskapp.cache.counting import Counter
from taskapp.cache.entry import Entry
from taskapp.cache.notifier import Notifier
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

#: attempt(waited) -> (a fresh entry or None, the lock's token when taken or "", anything else
#: the attempt read, such as versions for a lease)
Attempt = Callable[[bool], tuple[Entry | None, str, Any]]


class FillLock:
    """The fill lock of one app's cache."""

    def __init__(
        self, store: Store, notifier: Notifier, counter: Counter, ttl: float, wait: float
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.counter = counter
        self.ttl = ttl
        self.wait = wait

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    @staticmethod
    def token() -> str:
        """A new owner token (random: unique across threads, processes and hosts)."""
        return os.urandom(16).hex()

    def acquire(self, full_key: str) -> str:
        """Take the lock of ``full_key`` now: its token, or "" when another caller holds it.

        Raises Unavailable when Redis cannot be reached.
        """
        token = self.token()
        taken = self.store.run(
            lambda: self.store.client.set(
                self.store.keys.lock(full_key), token, nx=True, px=self.ttl_ms
            ),
            op="lock",
        )
        return token if taken else ""

    def release(self, full_key: str, token: str) -> None:
        """Release the lock if ``token`` still owns it, and wake the waiters (never raises)."""
        try:
            self.store.call(
                scripts.RELEASE,
                keys=[self.store.keys.lock(full_key)],
                args=[token, self.store.keys.fill_channel, full_key],
                op="lock",
            )
        except Unavailable:
            log.debug("lock of %s left to expire: Redis unavailable", full_key)

    def fill_or_wait(
        self,
        full_key: str,
        attempt: Attempt,
        read: Callable[[], Entry | None],
        stale: Entry | None = None,
    ) -> tuple[Entry | None, str, Any]:
        """Take the lock, or wait for the holder's fill; every caller of the cache goes here.

        ``attempt`` tries to take the lock (and may read the entry in the same round trip);
        ``read`` reads the entry after a fill message. Returns (entry, "", extra) when another
        caller's fill (or, given ``stale``, the stale entry) answers; (None, token, extra) when
        this caller holds the lock and must fill; (None, "", extra) when the wait ran out and
        the caller fetches without the lock. Raises Unavailable from ``attempt``.
        """
        deadline = time.monotonic() + self.wait
        waited = False
        while True:
            entry, token, extra = attempt(waited)
            if entry is not None:
                return entry, "", extra
            if token:
                log.debug("fill lock for %s taken", full_key)
                return None, token, extra
            if stale is not None:
                log.debug("serving stale %s while another caller refreshes it", full_key)
                self.counter.count(stats.STALE_SERVED, full_key)
                return stale, "", extra
            if not waited:
                self.counter.count(stats.LOCK_WAIT, full_key)
                waited = True
            entry = self._wait_for_fill(full_key, deadline, read)
            if entry is not None:
                return entry, "", extra
            if time.monotonic() >= deadline:
                log.debug("waited %.1fs for %s; fetching without the lock", self.wait, full_key)
                return None, "", extra

    def _wait_for_fill(
        self, full_key: str, deadline: float, read: Callable[[], Entry | None]
    ) -> Entry | None:
        """Wait for a fill message (or poll without a channel); the fresh entry, or None."""
        subscribed = self.notifier.subscribed.is_set()
        event = self.notifier.waiter(full_key) if subscribed else None
        entry = read()  # after registering: a fill now cannot be missed
        if entry is not None and entry.is_fresh():
            return entry
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if event is not None:
            # Woken by the fill, or after a slice to retry the lock of a holder that died.
            if event.wait(min(remaining, max(self.ttl / 5, 0.05))):
                entry = read()  # the fill landed: read it at once
                if entry is not None and entry.is_fresh():
                    return entry
        else:
            time.sleep(min(remaining, 0.005))
        return None
