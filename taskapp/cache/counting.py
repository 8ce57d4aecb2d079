"""One place where cache events are counted: Prometheus and the shared statistics at once.

Prometheus counters are per process (``/metrics`` sums the gunicorn workers); the stats hash in
Redis holds the same events by key family, for ``flask cache stats``. Every caller counts an
event once, here.
"""

from __future__ import annotations

from typing import Any

from taskapp.cache import metrics, stats, tracing
from taskapp.cache.derived_keys import Keys

_PROMETHEUS: dict[str, Any] = {
    stats.L1_HIT: metrics.L1_HIT,
    stats.L1_MISS: metrics.L1_MISS,
    stats.REDIS_HIT: metrics.REDIS_HIT,
    stats.REDIS_MISS: metrics.REDIS_MISS,
    stats.HTTP_HIT: metrics.HTTP_HIT,
    stats.HTTP_MISS: metrics.HTTP_MISS,
    stats.LOCK_WAIT: metrics.CACHE_LOCK_WAITS,
    stats.STALE_SERVED: metrics.CACHE_STALE_SERVED,
    stats.ERROR: metrics.CACHE_ERRORS,
}


class EventCounter:
    """Counts the events of one app's cache in this process."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.recorder = stats.StatsRecorder()

    def count(self, event: str, full_key: str | None = None, family: str | None = None) -> None:
        """Count ``event`` in Prometheus and in the shared stats, by the key's family (and note
        it on the request's span when tracing is on)."""
        if tracing.tracer is not None:
            tracing.note(event)
        child = _PROMETHEUS.get(event)
        if child is not None:
            child.inc()
        if full_key is not None:
            family = stats.family(self.keys.strip(full_key))
        self.recorder.record(event, family)
