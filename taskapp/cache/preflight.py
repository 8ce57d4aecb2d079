"""The start-up check of the cache's Redis: refuse a misconfigured one, start without a missing one.

A Redis that refuses the app (a wrong password, a user without a command the cache runs, a
server that would lose what write-behind queues) stops start-up with one line saying why: serving
past it in silence would mean serving every request from the source, or with less safety than
the operator was told. A Redis that is merely down (refused connections, a timeout) lets the app
start: it serves from the source until Redis answers, as during any outage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from taskapp.cache import functions, scope_state
from taskapp.cache.client import EVICTS_ANY_KEY, connect, redacted
from taskapp.cache.settings import CacheSettings

log = logging.getLogger("taskapp.cache")

#: What a Redis that cannot be reached raises (not a refusal: the app starts without it).
_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisRefused(RuntimeError):
    """The Redis of REDIS_URL refuses what the cache needs; the message is one line."""


def check_server(settings: CacheSettings, *, durable: bool = False) -> None:
    """Check the Redis of ``settings`` once, before serving: its password, the commands the
    cache runs (its functions are loaded if missing), and with ``durable`` (write-behind) that
    it keeps what it acknowledged. Raises ``RedisRefused``; logs a warning when Redis is down."""
    if settings.redis_url.startswith("memory://"):
        if durable:
            raise RedisRefused(_volatile(f"REDIS_URL={settings.redis_url!r} keeps nothing"))
        return
    url = redacted(settings.redis_url)
    client = connect(
        settings.redis_url, cluster=settings.cluster, timeout=max(settings.socket_timeout, 2.0)
    )
    try:
        _run_functions(client, settings)
        if durable:
            _check_durable(client, url)
    except redis.exceptions.AuthenticationError as exc:  # a ConnectionError: before _DOWN
        raise RedisRefused(_refused_login(url, str(exc))) from None
    except _DOWN as exc:
        log.warning(
            "Redis at %s unavailable at start-up (%s); serving from the source until it answers",
            url,
            exc,
        )
    except redis.exceptions.NoPermissionError as exc:
        raise RedisRefused(
            f"the Redis user of REDIS_URL lacks a permission the cache needs (NOPERM: {exc})"
        ) from None
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "HELLO must be called")) or "authenticat" in str(exc):
            raise RedisRefused(
                f"the Redis at {url} needs a password that REDIS_URL does not give (NOAUTH: {exc})"
            ) from None
        raise RedisRefused(
            f"the Redis at {url} refused the cache's start-up check: {exc}"
        ) from None
    finally:
        client.close()


def _refused_login(url: str, reply: str) -> str:
    """One line for a Redis that refused to log the app in: no password given, or a wrong one."""
    if "must be called with the client already authenticated" in reply or "NOAUTH" in reply:
        return f"the Redis at {url} needs a password and REDIS_URL gives none (NOAUTH: {reply})"
    return f"the Redis at {url} refused the user or password of REDIS_URL (WRONGPASS: {reply})"


def _run_functions(client: Any, settings: CacheSettings) -> None:
    """Load the cache's functions where missing, and run the one every request runs, on probe
    keys of the app's prefix: a user that may not run a command the cache needs fails here."""
    client.ping()
    prefix = settings.prefix
    probe = f"{prefix}{{preflight}}"
    scope = f"{prefix}sv:{{preflight}}"
    keys = [f"{probe}:revoked", scope, scope]
    call = ("FCALL", functions.LIBRARY.function("request"), len(keys), *keys)
    args = ("RLS", prefix, 1000, "s:preflight", 0, 1, "")
    try:
        try:
            client.execute_command(*call, *args)
        except redis.exceptions.ResponseError as exc:
            if not functions.missing(exc):
                raise
            functions.LIBRARY.load(client)  # a new server, or a new version of the app
            client.execute_command(*call, *args)
        client.execute_command("FCALL", functions.LIBRARY.function("mark"), 0)
        client.execute_command(*scope_state.hit_command(scope, int(time.time())))  # a hit's
    finally:
        client.delete(keys[0], scope)


def _check_durable(client: Any, url: str) -> None:
    """Refuse a Redis without appendonly (write-behind would lose answered changes in a crash)
    or with a ``maxmemory-policy`` of ``allkeys-*`` (it may evict the queue, which has no
    expiry); warn when appendfsync is not ``always`` (a crash may lose the last second or two)."""
    try:
        aof = int(client.info("persistence").get("aof_enabled", 0))
        policy = str(client.info("memory").get("maxmemory_policy", ""))
    except redis.exceptions.NoPermissionError as exc:
        raise RedisRefused(
            "setting TASK_WRITE_STRATEGY=write-behind needs to know whether Redis keeps what it "
            f"acknowledged (INFO persistence, NOPERM: {exc}): grant the Redis user +info, or set "
            "WRITE_BEHIND_ALLOW_VOLATILE=1"
        ) from None
    if not aof:
        raise RedisRefused(_volatile(f"the Redis at {url} runs with appendonly no"))
    if policy.startswith(EVICTS_ANY_KEY):
        raise RedisRefused(
            "setting TASK_WRITE_STRATEGY=write-behind needs a Redis that never evicts its "
            f"queue: the Redis at {url} runs with maxmemory-policy {policy}, which may evict "
            "answered changes before they reach MongoDB; use noeviction or a volatile-* "
            "policy, or set WRITE_BEHIND_ALLOW_VOLATILE=1"
        )
    try:
        fsync = client.config_get("appendfsync").get("appendfsync")
    except redis.exceptions.ResponseError:
        fsync = None  # CONFIG is refused on managed services and to least-privilege users
    if fsync != "always":
        log.warning(
            "write-behind: the Redis at %s runs with appendfsync %s: a crash of Redis can lose "
            "the changes it acknowledged in its last second or two (with everysec Redis "
            "answers before it writes while an fsync is slow); appendfsync always makes every "
            "answered change reach MongoDB",
            url,
            fsync or "unknown (CONFIG GET refused)",
        )


def _volatile(what: str) -> str:
    return (
        f"setting TASK_WRITE_STRATEGY=write-behind needs a Redis with appendonly yes: {what}, "
        "so a crash would lose answered changes; turn appendonly on or set "
        "WRITE_BEHIND_ALLOW_VOLATILE=1"
    )
