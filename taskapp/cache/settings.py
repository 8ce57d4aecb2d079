"""The cache's settings: one table of names, defaults and conversions.

``RedisCache.init_app`` fills in the defaults of the settings an app did not set and checks them;
taskapp's own configuration (``taskapp/config.py``) reads the same table from the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def boolean(raw: Any) -> bool:
    """``1/0``, ``true/false``, ``yes/no`` or ``on/off`` (a bool passes as it is)."""
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def int_at_least(minimum: int) -> Callable[[Any], int]:
    """A whole number of at least ``minimum``."""

    def convert(raw: Any) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return convert


def choice(*choices: str) -> Callable[[Any], str]:
    """One of ``choices`` (case-insensitive)."""

    def convert(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return convert


def seconds(raw: Any) -> float:
    """A positive number of seconds."""
    value = float(raw)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


# name -> (default, conversion of a string from the environment or a value from the app's config)
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "REDIS_URL": ("memory://", str),
    "REDIS_CLUSTER": (False, boolean),
    "CACHE_KEY_PREFIX": ("cache:", str),
    "CACHE_DEFAULT_TIMEOUT": (300, seconds),
    "CACHE_STALE_TTL": (10, seconds),
    "CACHE_LOCK_TTL": (5, seconds),
    "CACHE_LOCK_WAIT": (5, seconds),
    "CACHE_FILL_TIMEOUT": (10, seconds),
    # Unset: 2 x the longest of CACHE_FILL_TIMEOUT and CACHE_LOCK_TTL (see from_config).
    "CACHE_VERSION_TTL": (None, seconds),
    "CACHE_BREAKER_THRESHOLD": (3, int_at_least(1)),
    "CACHE_BREAKER_COOLDOWN": (1.0, seconds),
    "REDIS_SOCKET_TIMEOUT": (0.25, seconds),
    "L1_CACHE_MAX_ITEMS": (10000, int_at_least(0)),
    "L1_CACHE_TTL": (5, seconds),
    "WRITE_BEHIND_FLUSH_MS": (1000, int_at_least(10)),
    "WRITE_BEHIND_CLAIM_IDLE_MS": (5000, int_at_least(100)),
    # How long a flusher holds an object it applies: longer than any apply takes.
    "WRITE_BEHIND_APPLY_LEASE_MS": (10_000, int_at_least(100)),
}


@dataclass(frozen=True)
class CacheSettings:
    """The checked settings of one app's cache."""

    redis_url: str
    cluster: bool
    prefix: str
    default_ttl: float
    stale_ttl: float
    lock_ttl: float
    lock_wait: float
    fill_timeout: float
    version_ttl_ms: int
    breaker_threshold: int
    breaker_cooldown: float
    socket_timeout: float
    l1_max_items: int
    l1_ttl: float
    flush_ms: int
    claim_idle_ms: int
    apply_lease_ms: int

    @classmethod
    def from_config(cls, config: Any) -> CacheSettings:
        """Fill in the defaults the app did not set, check every value, and read them.

        A bad value raises ``RuntimeError`` naming the setting and what it must be.
        """
        values: dict[str, Any] = {}
        for name, (default, convert) in SETTINGS.items():
            raw = config.setdefault(name, default)
            try:
                values[name] = None if raw is None else convert(raw)
            except (TypeError, ValueError) as exc:
                raise RuntimeError(f"setting {name}={raw!r} is invalid: {exc}") from None
        if values["CACHE_VERSION_TTL"] is None:
            # A version key needs to outlive what was stored under it (a fill keeps it as long
            # as the entry) and a fill's lease (read before the fetch, checked at the store);
            # one that expires is made anew, so what was stored under it only misses.
            wait = max(values["CACHE_FILL_TIMEOUT"], values["CACHE_LOCK_TTL"])
            values["CACHE_VERSION_TTL"] = 2 * wait
        return cls(
            redis_url=values["REDIS_URL"],
            cluster=values["REDIS_CLUSTER"],
            prefix=values["CACHE_KEY_PREFIX"],
            default_ttl=values["CACHE_DEFAULT_TIMEOUT"],
            stale_ttl=values["CACHE_STALE_TTL"],
            lock_ttl=values["CACHE_LOCK_TTL"],
            lock_wait=values["CACHE_LOCK_WAIT"],
            fill_timeout=values["CACHE_FILL_TIMEOUT"],
            version_ttl_ms=int(values["CACHE_VERSION_TTL"] * 1000),
            breaker_threshold=values["CACHE_BREAKER_THRESHOLD"],
            breaker_cooldown=values["CACHE_BREAKER_COOLDOWN"],
            socket_timeout=values["REDIS_SOCKET_TIMEOUT"],
            l1_max_items=values["L1_CACHE_MAX_ITEMS"],
            l1_ttl=values["L1_CACHE_TTL"],
            flush_ms=values["WRITE_BEHIND_FLUSH_MS"],
            claim_idle_ms=values["WRITE_BEHIND_CLAIM_IDLE_MS"],
            apply_lease_ms=values["WRITE_BEHIND_APPLY_LEASE_MS"],
        )
