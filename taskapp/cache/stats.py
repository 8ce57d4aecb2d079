"""Cache statistics shared by every process: counted in memory, summed in one Redis hash.

Prometheus counters live per process (and per gunicorn worker); the CLI needs the same numbers
from outside, broken down by key family. Each process keeps its counts in a ``StatsRecorder``
(a dict increment under a lock, cheap enough for every lookup) and now and then ``flush``es them
into a Redis hash with HINCRBY, so the hash holds the sum over every process that ever flushed.

Hash fields: ``c|<event>|<family>`` for counts (family empty when the event has none), and
``g|<name>|<host>:<pid>`` for gauges such as the in-process layer's size, stored as
``<value> <epoch seconds>`` so readers can skip the gauges of processes that are gone.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

from taskapp.cache.derived_keys import HASH_TAG

#: The events the cache records (``record`` accepts any name; these are the ones the CLI shows).
L1_HIT, L1_MISS = "l1.hit", "l1.miss"
REDIS_HIT, REDIS_MISS = "redis.hit", "redis.miss"
HTTP_HIT, HTTP_MISS = "http.hit", "http.miss"


def outcome(layer: str, hit: bool) -> str:
    """The hit or miss event of a layer (``outcome("http", True)`` is HTTP_HIT)."""
    return f"{layer}.hit" if hit else f"{layer}.miss"


LOCK_WAIT = "lock_wait"
ERROR = "error"
STALE_SERVED = "stale_served"
LAYERS = ("l1", "redis", "http")

L1_SIZE = "l1.size"  # gauge: entries in a process's in-process layer
GAUGE_MAX_AGE = 120.0  # seconds after which a process's gauge is taken to be from a dead process

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

Counts = dict[str, dict[str, int]]  # event -> family ('' when none) -> count


@functools.lru_cache(maxsize=4096)  # on every lookup; hot keys repeat
def family(key: str) -> str:
    """The family of a cache key (without prefix): its first segment outside a ``{hash tag}``.

    ``{u:abc}:task:123`` -> ``task``, ``{u:abc}:http:ff`` -> ``http``, ``lock:{u:1}:task:2`` ->
    ``lock``. A key made only of hash tags is its own family ``other``.
    """
    for segment in HASH_TAG.sub("", key).split(":"):
        if segment and not segment.startswith("{"):
            return segment
    return "other"


def escape_glob(text: str) -> str:
    """``text`` with SCAN/KEYS glob characters escaped, to match it literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


class StatsRecorder:
    """Thread-safe in-process counts of cache events, flushed into a Redis hash.

    ``record`` is a dict increment under a lock. ``flush`` moves the pending counts to Redis in
    one pipeline; if Redis fails they are put back, so an outage delays counts but loses none.
    A forked child starts with no pending counts (its parent's are the parent's to flush).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Counter[tuple[str, str]] = Counter()
        self._last_flush = time.monotonic()
        self._proc = f"{socket.gethostname()}:{os.getpid()}"
        if hasattr(os, "register_at_fork"):
            # Fork hooks are never unregistered: a weak reference does not keep us alive.
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._pending = Counter()
        self._last_flush = time.monotonic()
        self._proc = f"{socket.gethostname()}:{os.getpid()}"

    def record(self, event: str, family: str | None = None) -> None:
        """Count one ``event`` (e.g. ``redis.hit``), attributed to a key ``family`` if given."""
        with self._lock:
            self._pending[(event, family or "")] += 1

    def pending(self) -> dict[tuple[str, str], int]:
        """The counts not flushed yet (a copy)."""
        with self._lock:
            return dict(self._pending)

    def flush(self, client: Any, hash_key: str, gauges: dict[str, float] | None = None) -> int:
        """HINCRBY the pending counts into ``hash_key`` in one pipeline and reset them.

        ``gauges`` (e.g. ``{L1_SIZE: 42}``) are stored as this process's current values.
        Returns the number of counters written. Raises what redis-py raises, after putting the
        counts back.
        """
        with self._lock:
            taken, self._pending = self._pending, Counter()
            self._last_flush = time.monotonic()
        if not taken and not gauges:
            return 0
        pipe = client.pipeline(transaction=False)
        for (event, fam), count in taken.items():
            pipe.hincrby(hash_key, f"c|{event}|{fam}", count)
        now = time.time()
        for name, value in (gauges or {}).items():
            pipe.hset(hash_key, f"g|{name}|{self._proc}", f"{value} {now:.0f}")
        try:
            pipe.execute()
        except BaseException:
            with self._lock:
                self._pending.update(taken)
            raise
        return len(taken)

    def flush_due(self, interval: float) -> bool:
        """True when ``interval`` seconds have passed since the last flush (cheap; no lock)."""
        return time.monotonic() - self._last_flush >= interval


def _reset_in_child(ref: weakref.ref[StatsRecorder]) -> None:
    recorder = ref()
    if recorder is not None:
        recorder._reset()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: Any, hash_key: str) -> Counts:
    """The counts summed over every process: ``{event: {family: count}}`` (family '' for none)."""
    counts: Counts = {}
    for field, value in client.hgetall(hash_key).items():
        kind, _, rest = _text(field).partition("|")
        if kind != "c":
            continue
        event, _, fam = rest.partition("|")
        counts.setdefault(event, {})[fam] = int(value)
    return counts


def _reported_at(value: Any) -> float:
    at = _text(value).partition(" ")[2]
    return float(at) if at else 0.0


def read_gauges(
    client: Any, hash_key: str, max_age: float = GAUGE_MAX_AGE
) -> dict[str, dict[str, float]]:
    """Gauges of live processes: ``{name: {"host:pid": value}}``, none older than ``max_age``."""
    gauges: dict[str, dict[str, float]] = {}
    now = time.time()
    for field, value in client.hgetall(hash_key).items():
        kind, _, rest = _text(field).partition("|")
        if kind != "g":
            continue
        name, _, proc = rest.partition("|")
        if now - _reported_at(value) <= max_age:
            number = _text(value).partition(" ")[0]
            gauges.setdefault(name, {})[proc] = float(number)
    return gauges


def prune_gauges(client: Any, hash_key: str, max_age: float = GAUGE_MAX_AGE) -> int:
    """Delete the gauges of processes silent for ``max_age`` seconds; how many were deleted."""
    now = time.time()
    stale = [
        field
        for field, value in client.hgetall(hash_key).items()
        if _text(field).startswith("g|") and now - _reported_at(value) > max_age
    ]
    return int(client.hdel(hash_key, *stale)) if stale else 0


def total(counts: Counts, event: str) -> int:
    """The count of ``event`` over every family."""
    return sum(counts.get(event, {}).values())


def families(counts: Counts) -> list[str]:
    """The families that have any count, sorted ('' excluded)."""
    return sorted({fam for per_family in counts.values() for fam in per_family if fam})


def hit_ratio(hits: int, misses: int) -> float | None:
    """hits / (hits + misses), None when there were no lookups."""
    lookups = hits + misses
    return hits / lookups if lookups else None


def scan_prefix(client: Any, prefix: str, pattern: str = "*", count: int = 1000) -> Iterator[bytes]:
    """Keys of ``prefix`` matching ``pattern``: SCAN, never KEYS (all primaries of a cluster)."""
    yield from client.scan_iter(match=escape_glob(prefix) + pattern, count=count)


class KeysByFamily:
    """Counts the keys of one prefix by family with SCAN (the whole keyspace, in batches)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def count(self, count: int = 1000) -> Counter[str]:
        """``{family: number of keys}`` for every key of the prefix."""
        result: Counter[str] = Counter()
        for key in scan_prefix(self.client, self.prefix, count=count):
            result[family(_text(key)[len(self.prefix) :])] += 1
        return result
