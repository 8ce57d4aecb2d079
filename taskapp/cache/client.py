"""The Redis connection and the circuit breaker: the one boundary where Redis errors are caught."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskapp.cache import metrics

log = logging.getLogger("taskapp.cache")
T = TypeVar("T")

#: What a failing Redis raises through redis-py (OSError covers a socket closed under it).
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


#: Refusals that mean the server cannot serve now (a failover, a busy script, a full memory),
#: so they count towards an outage like a timeout does.
_OUTAGE_REPLIES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
)
_OUTAGE_PREFIXES = ("BUSY", "MASTERDOWN", "LOADING", "NOREPLICAS", "CLUSTERDOWN")


class Unavailable(Exception):
    """Redis cannot be used right now (it failed, or the breaker is open); treat as a miss."""


class CommandError(Unavailable):
    """Redis refused one command (a wrong type, a value that is not an integer): the server is
    up, so this is no outage and never opens the breaker; still a miss for the caller."""


def is_command_error(exc: BaseException) -> bool:
    """True for an error reply to one command, as opposed to Redis being unreachable or unable
    to serve (timeouts, refused connections, failovers, busy scripts)."""
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    if isinstance(exc, _OUTAGE_REPLIES):
        return False
    return not str(exc).startswith(_OUTAGE_PREFIXES)


def connect(url: str, *, cluster: bool, timeout: float) -> Any:
    """A redis-py client for ``url``: short timeouts, one retry with backoff, health checks.

    ``memory://`` gives an embedded fakeredis server, private to this process (for demos and
    unit tests). A timeout of a quarter second keeps a hung server from holding requests: the
    breaker then stops sending to it.
    """
    if url.startswith("memory://"):
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=False)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # One quick retry for a dropped connection; never for a timeout (a hung server would
        # double every wait before the breaker opens).
        "retry": Retry(
            ExponentialBackoff(cap=0.05, base=0.005),
            1,
            supported_errors=(redis.exceptions.ConnectionError,),
        ),
        "health_check_interval": 10,
        "client_name": "taskapp",
    }
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


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
        metrics.CACHE_ERRORS.inc()
        if self.on_error is not None:
            self.on_error()
        refusal = f"{type(exc).__name__}: {exc}"
        if refusal != self._last_refusal:
            self._last_refusal = refusal
            log.warning("Redis refused a command (%s)", refusal)
        else:
            log.debug("Redis refused a command again (%s)", refusal)

    def _failed(self, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.inc()
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
