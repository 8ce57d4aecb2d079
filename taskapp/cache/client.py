"""The Redis connection: redis-py with short timeouts, and the errors the breaker catches."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: What a failing Redis raises through redis-py (OSError covers a socket closed under it).
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


#: Refusals that mean the server cannot serve now (a failover, a busy script), so they count
#: towards an outage like a timeout does. A full Redis (OOM, under noeviction) is not one: it
#: still serves reads and the cache's small writes (its functions flagged allow-oom), and only
#: refuses to store values, which is a miss like any refused command.
_OUTAGE_REPLIES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
)
_OUTAGE_PREFIXES = ("BUSY", "MASTERDOWN", "LOADING", "NOREPLICAS", "CLUSTERDOWN")


#: The prefix of the ``maxmemory-policy`` values under which Redis may evict any key, those
#: without an expiry included (the others evict nothing, or only keys with an expiry).
EVICTS_ANY_KEY = "allkeys-"


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


def redacted(url: str) -> str:
    """``url`` without its user and password (for logs and error messages)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"
