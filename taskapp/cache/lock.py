"""The fill lock: one caller fills a key across threads, processes and hosts; the others wait.

``SET lock token NX PX`` takes it; a compare-and-delete function (``release`` in
``library.lua``) releases it only for its owner and announces the key on the fill channel, so
waiters wake on the message instead of polling.

A holder keeps its lock alive while it works: a renewer thread (one per process) extends every
lock this process holds, every ``ttl / 3``, for as long as the owner token still owns it, up to
``fill_timeout`` after it was taken. So a fill slower than the lock's TTL or the waiters' wait is
still one fill: waiters look at the lock again every ``wait`` (at most) and keep waiting while it
is held. A holder that dies stops renewing: its lock expires after ``ttl`` and the next waiter to
look takes it over and fills. No caller waits longer than ``fill_timeout``, then it fetches for
itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from taskapp.cache import functions, stats
from taskapp.cache.client import Unavailable
from taskapp.cache.context import RequestState
from taskapp.cache.counting import EventCounter
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
        self,
        store: Store,
        notifier: Notifier,
        counter: EventCounter,
        ttl: float,
        wait: float,
        fill_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.counter = counter
        self.ttl = ttl
        self.wait = wait
        self.fill_timeout = fill_timeout
        # (full key, token) -> the monotonic time its renewal ends: the locks this process holds
        self._held: dict[tuple[str, str], float] = {}
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

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
        if not taken:
            return ""
        self.hold(full_key, token)
        return token

    def release(self, full_key: str, token: str) -> None:
        """Release the lock if ``token`` still owns it, and wake the waiters (never raises)."""
        self.done(full_key, token)
        try:
            self.store.call(
                "release",
                [self.store.keys.lock(full_key)],
                [token, self.store.keys.fill_channel, full_key],
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
        first: tuple[Entry | None, str, Any] | None = None,
        request: RequestState | None = None,
    ) -> tuple[Entry | None, str, Any]:
        """Take the lock, or wait for the holder's fill; every caller of the cache goes here.

        ``attempt`` tries to take the lock (and may read the entry in the same round trip);
        ``first``, when given, is what the first attempt returned (the caller made it in a call
        of its own); ``read`` reads the entry after a fill message. Returns (entry, "", extra)
        when another caller's fill (or, given ``stale``, the stale entry) answers; (None, token,
        extra) when this caller holds the lock and must fill; (None, "", extra) when the wait ran
        out and the caller fetches without the lock. Raises Unavailable from ``attempt``.

        A ``request`` waits for fills, as for the source itself, at most ``fill_timeout`` in
        all: what it spent on the source before (``source_time``) shortens its wait, and its
        wait is added to it.
        """
        spent = request.source_time if request is not None else 0.0
        deadline = time.monotonic() + max(0.0, self.fill_timeout - spent)
        waited = False
        outcome = first
        while True:
            entry, token, extra = outcome if outcome is not None else attempt(waited)
            outcome = None
            if entry is not None:
                return entry, "", extra
            if token:
                # Taken at once, or taken over from a holder whose lock expired (it died).
                log.debug("fill lock for %s taken", full_key)
                self.hold(full_key, token)
                return None, token, extra
            if stale is not None:
                log.debug("serving stale %s while another caller refreshes it", full_key)
                self.counter.count(stats.STALE_SERVED, full_key)
                return stale, "", extra
            if not waited:
                self.counter.count(stats.LOCK_WAIT, full_key)
                waited = True
            began = time.monotonic()
            entry = self._wait_for_fill(full_key, deadline, read)
            if request is not None:
                request.source_time += time.monotonic() - began
            if entry is not None:
                return entry, "", extra
            if time.monotonic() >= deadline:
                log.debug("gave up waiting for the fill of %s; fetching without the lock", full_key)
                return None, "", extra
            # Still held (the next attempt takes it if not): the holder is alive and renewing.

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
            # Woken by the fill, or after a slice to look at the lock again: a holder that died
            # is taken over within a slice of its lock's expiry.
            if event.wait(min(remaining, self.wait, max(self.ttl / 5, 0.05))):
                entry = read()  # the fill landed: read it at once
                if entry is not None and entry.is_fresh():
                    return entry
        else:
            time.sleep(min(remaining, 0.005))
        return None

    # -- renewal --------------------------------------------------------------------------

    def hold(self, full_key: str, token: str) -> None:
        """Keep renewing the lock ``token`` took until ``done``, it is lost, or fill_timeout."""
        with self._held_lock:
            self._held[(full_key, token)] = time.monotonic() + self.fill_timeout
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="taskapp-cache-lock-renewer", daemon=True
                )
                self._renewer.start()

    def done(self, full_key: str, token: str) -> None:
        """Stop renewing that lock (its fill stored or released it)."""
        with self._held_lock:
            self._held.pop((full_key, token), None)

    def _renew_loop(self) -> None:
        """Renew every held lock each ttl/3 until none is held (then the thread ends; the next
        ``hold`` starts another)."""
        while True:
            time.sleep(self.ttl / 3)
            with self._held_lock:
                now = time.monotonic()
                for held, until in list(self._held.items()):
                    if until <= now:
                        log.debug("lock of %s left to expire: held past fill_timeout", held[0])
                        del self._held[held]
                held_now = list(self._held)
                if not held_now:
                    self._renewer = None
                    return
            for (full_key, token), renewed in zip(held_now, self._renew(held_now), strict=True):
                if not renewed:
                    self.done(full_key, token)

    def _renew(self, held: list[tuple[str, str]]) -> list[bool]:
        """Extend each lock's TTL while its token still owns it (``renew`` in ``library.lua``),
        in one round trip (one per lock on a cluster, whose locks live on several nodes):
        whether each still is its token's. A fill that stored its value released its lock in
        the same function, so here it shows as no longer owned and is dropped."""
        store = self.store
        renew = functions.LIBRARY.function("renew")

        def renew_all() -> list[Any]:
            if store.cluster:
                return [
                    store.fcall("renew", [store.keys.lock(key)], [token, self.ttl_ms])
                    for key, token in held
                ]
            pipe = store.client.pipeline(transaction=False)
            for key, token in held:
                pipe.execute_command("FCALL", renew, 1, store.keys.lock(key), token, self.ttl_ms)
            return pipe.execute()  # type: ignore[no-any-return]

        try:
            return [bool(renewed) for renewed in store.run(renew_all, op="lock")]
        except Unavailable:
            # Kept for the next round; a lock expires meanwhile if Redis stays away (and a
            # server that lost the functions gets them back with the next request's call).
            return [True] * len(held)
