"""Resilience: the circuit breaker every Redis call crosses, and the invalidations an outage
held back, replayed before the cache is trusted again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from taskapp.cache.client import REDIS_ERRORS, CommandError, Unavailable, is_command_error

log = logging.getLogger("taskapp.cache")
T = TypeVar("T")

#: A call of one of the cache's functions that must reach Redis: (function, keys, arguments).
Call = tuple[str, tuple[str, ...], tuple[Any, ...]]


class Breaker:
    """A circuit breaker in front of Redis, per process.

    After ``threshold`` consecutive failures it opens: for ``cooldown`` seconds every call is
    refused at once (a miss, served from the source), instead of each request waiting for a
    timeout. Then a probe runs in a thread of its own, so no request waits for it:
    ``on_recover`` replays the invalidations that could not be sent (nothing cached before the
    outage may hide a write made during it) and, if that succeeds, the breaker closes. One log
    line marks the start and the end of an outage.
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown: float = 1.0,
        on_recover: Callable[[], None] | None = None,
        on_open: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.on_recover = on_recover
        self.on_open = on_open
        self.on_error = on_error
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # monotonic time the outage began
        self._retry_at = 0.0
        self._probing = False
        self._last_refusal = ""

    @property
    def is_open(self) -> bool:
        """True during an outage (until a probe succeeds)."""
        return self._opened_at is not None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` against Redis, or raise ``Unavailable`` (counted, logged once per outage)."""
        if self._opened_at is not None:
            if self._begin_probe():
                threading.Thread(
                    target=self._probe, name="taskapp-cache-probe", daemon=True
                ).start()
            raise Unavailable("circuit open")
        try:
            result = fn()
        except REDIS_ERRORS as exc:
            if is_command_error(exc):
                self._refused(exc)
                raise CommandError(str(exc)) from exc
            self._failed(exc)
            raise Unavailable(str(exc)) from exc
        if self._failures:
            self._succeeded()
        return result

    def _begin_probe(self) -> bool:
        """Let exactly one caller through once the cool-down has passed."""
        with self._lock:
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True
            return True

    def _probe(self) -> None:
        """Replay what the outage held back; close the breaker if Redis took it all."""
        log.debug("probing Redis after %.1fs of outage", time.monotonic() - (self._opened_at or 0))
        try:
            if self.on_recover is not None:
                self.on_recover()
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return
        except Exception as exc:  # a bug in a hook must not leave the breaker open for good
            log.exception("probing Redis failed")
            self._failed(exc)
            return
        self._succeeded()

    def _refused(self, exc: BaseException) -> None:
        """One command refused by a server that answers: counted and logged (once while the same
        refusal repeats), not a failure."""
        if self.on_error is not None:
            self.on_error()
        refusal = f"{type(exc).__name__}: {exc}"
        if refusal != self._last_refusal:
            self._last_refusal = refusal
            log.warning("Redis refused a command (%s)", refusal)
        else:
            log.debug("Redis refused a command again (%s)", refusal)

    def _failed(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error()
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._opened_at is None and self._failures >= self.threshold:
                self._opened_at = time.monotonic()
                log.warning(
                    "Redis unavailable (%s: %s); serving from the source without the cache",
                    type(exc).__name__,
                    exc,
                )
                opened = True
            else:
                opened = False
            if self._opened_at is not None:
                self._retry_at = time.monotonic() + self.cooldown
        if opened and self.on_open is not None:
            self.on_open()

    def close(self) -> None:
        """End the outage: calls go to Redis again (the probe's recovery hook decides when)."""
        self._succeeded()

    def trip(self, reason: str) -> None:
        """Open now: Redis answers but refused something this process must send before it uses
        the cache again (the probe sends it, and closes the breaker once Redis takes it)."""
        with self._lock:
            if self._opened_at is not None:
                return
            self._opened_at = time.monotonic()
            self._retry_at = self._opened_at + self.cooldown
        log.warning("cache not used by this process until Redis takes what it refused (%s)", reason)
        if self.on_open is not None:
            self.on_open()

    def _succeeded(self) -> None:
        with self._lock:
            outage = self._opened_at
            self._failures = 0
            self._opened_at = None
            self._probing = False
        if outage is not None:
            log.warning(
                "Redis reachable again after %.1fs; cache back in use", time.monotonic() - outage
            )


class HeldBack:
    """Invalidations Redis did not take, kept until they are sent.

    ``send`` is the store's way to send tag and key invalidations (raises a Redis error on
    failure); ``run`` sends through the breaker; ``on_hold`` drops what this process keeps in
    memory. The breaker's probe calls ``replay`` and closes
    the breaker under this object's lock once nothing is left, so a writer whose invalidation
    failed either adds it before (and the probe sends it) or finds the breaker closed and sends
    it itself before its write is answered (``hold``). The cache is never used again while a
    write answered during an outage is still unsent.
    """

    def __init__(
        self,
        breaker: Breaker,
        send: Callable[[list[str], list[str], list[Call]], None],
        ping: Callable[[], object],
        run: Callable[[Callable[[], None]], None],
        on_hold: Callable[[], None],
    ) -> None:
        self._breaker = breaker
        self._on_hold = on_hold
        self._send = send
        self._ping = ping
        self._run = run
        self._lock = threading.Lock()
        self._tags: set[str] = set()
        self._keys: set[str] = set()
        self._calls: list[Call] = []  # in the order they were made

    def hold(
        self, tags: Iterable[str] = (), keys: Iterable[str] = (), calls: Iterable[Call] = ()
    ) -> None:
        """Keep invalidations that failed and try to send them before the write is answered.

        While the breaker is closed (a failure below the threshold, or the probe closed it
        meanwhile) they are sent, retrying until they go through or the breaker opens. When it
        was open already, one try past it (Redis may be back before the probe); when these
        tries opened it, Redis has just failed them. Then this process reads nothing from the
        cache until its probe sends them.
        """
        with self._lock:
            self._tags.update(tags)
            self._keys.update(keys)
            self._calls.extend(calls)
        self._on_hold()
        # Each failure counts towards the threshold, so this ends within threshold tries.
        for attempt in range(self._breaker.threshold + 1):
            if self._breaker.is_open:
                if attempt == 0:
                    self._try_now()
                return
            try:
                self._run(self._send_all)
                return
            except CommandError as exc:  # refused, not unreachable: retrying cannot help
                # This process reads nothing from the cache until they are sent (other
                # processes may: docs/guarantees.md, "What does not hold").
                self._breaker.trip(f"invalidations refused: {exc}")
                return
            except Unavailable:
                continue

    def _try_now(self) -> None:
        """With the breaker open: send everything held back once, past the breaker, before the
        write is answered. Redis may be back already (restarted) while this process's probe
        waits for its cool-down, and other processes that probed first read from it: a write
        answered with its invalidation still held here would let them answer the older value.
        The try waits up to a socket timeout (``REDIS_SOCKET_TIMEOUT``), what such a write
        waits while Redis hangs: a shorter wait would give up on a server that is up but slow
        to answer (busy, or on a loaded host) while other processes read from it."""
        try:
            self.replay()
        except REDIS_ERRORS as exc:
            log.debug("invalidations kept for the probe: Redis still unavailable (%s)", exc)

    def replay(self) -> None:
        """The breaker's probe: Redis answers, everything held back is sent, the breaker closes."""
        self._ping()
        self._send_all(close_when_done=True)

    def _send_all(self, close_when_done: bool = False) -> None:
        while True:
            with self._lock:
                tags, keys, calls = sorted(self._tags), sorted(self._keys), list(self._calls)
                if not tags and not keys and not calls:
                    if close_when_done:
                        self._breaker.close()
                    return
            self._send(tags, keys, calls)
            with self._lock:
                self._tags.difference_update(tags)
                self._keys.difference_update(keys)
                del self._calls[: len(calls)]
            log.warning(
                "replayed %d tag and %d key invalidations and %d other writes held back by the "
                "outage",
                len(tags),
                len(keys),
                len(calls),
            )
