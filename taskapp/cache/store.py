"""The Redis store: the client, its scripts, slot routing, and the breaker every call crosses."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from hiredis import pack_command
from redis.crc import key_slot

from taskapp.cache import metrics, scripts, stats, tracing
from taskapp.cache.client import Unavailable, connect, redacted
from taskapp.cache.counting import Counter
from taskapp.cache.derived_keys import Keys
from taskapp.cache.resilience import Breaker, HeldBack
from taskapp.cache.settings import CacheSettings

log = logging.getLogger("taskapp.cache")


class Store:
    """One app's Redis in one process, behind a circuit breaker.

    Every call goes through ``run`` (the breaker: a failure is counted and raised as
    ``Unavailable``; nothing else of the cache sees a redis-py error). Scripts are registered once
    by name. On Redis Cluster, multi-key calls are grouped by hash slot. Invalidations that Redis
    did not take are held back and replayed before the cache is used again.
    """

    SCRIPTS = ("FILL", "LOOKUP", "SCOPE_READ", "RELEASE", "INVALIDATE", "DELETE", "WRITE_THROUGH")

    def __init__(
        self,
        settings: CacheSettings,
        keys: Keys,
        counter: Counter,
        on_outage: Callable[[], None],
    ) -> None:
        """``on_outage`` runs when the breaker opens and when an invalidation is held back."""
        self.keys = keys
        self.cluster = settings.cluster
        self.socket_timeout = settings.socket_timeout
        self.version_ttl_ms = settings.version_ttl_ms
        self.client = connect(
            settings.redis_url, cluster=settings.cluster, timeout=settings.socket_timeout
        )
        self.breaker = Breaker(
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            on_recover=lambda: self.held_back.replay(),
            on_open=on_outage,
            on_error=lambda: counter.count(stats.ERROR),
        )
        self.held_back = HeldBack(
            self.breaker,
            send=self._send_invalidations,
            ping=self.client.ping,
            run=lambda fn: self.run(fn, op="replay"),
            on_hold=on_outage,
        )
        self._scripts: dict[str, Any] = {}
        # Scripts run on each thread's own connection, off Cluster and the embedded server.
        self.direct = (
            None
            if settings.cluster or settings.redis_url.startswith("memory://")
            else Direct(self.client)
        )
        self._timers: dict[str, Any] = {}
        for name in self.SCRIPTS:
            self.script(getattr(scripts, name))
        log.info("cache on %s (prefix %r)", redacted(settings.redis_url), keys.prefix)

    def run(self, fn: Callable[[], Any], op: str = "other") -> Any:
        """Run ``fn`` through the breaker, timed as cache operation ``op`` (and traced as a span
        of its own when tracing is on); raises Unavailable."""
        started = time.perf_counter()
        span = tracing.redis_span(op, self.breaker.is_open) if tracing.tracer is not None else None
        try:
            return self.breaker.call(fn)
        finally:
            if span is not None:
                tracing.end(span)
            timer = self._timers.get(op)
            if timer is None:
                timer = self._timers[op] = metrics.CACHE_OP_SECONDS.labels(op)
            timer.observe(time.perf_counter() - started)

    def script(self, source: str) -> Any:
        """The registered script of this Lua source (registered on first use)."""
        registered = self._scripts.get(source)
        if registered is None:
            registered = self._scripts[source] = self.client.register_script(source)
        return registered

    def call(self, source: str, keys: list[str], args: list[Any], op: str = "script") -> Any:
        """Run a script through the breaker; raises Unavailable."""
        script = self.script(source)
        if self.direct is not None:
            return self.run(partial(self.direct.evalsha, script, keys, args), op=op)
        return self.run(lambda: script(keys=keys, args=args), op=op)

    def versioned(self, *args: Any) -> list[Any]:
        """The arguments of a script that reads or changes versions (see scripts.VERSIONS): the
        prefix, a nonce unique to this call and the versions' time to live, then ``args``."""
        return [self.keys.prefix, os.urandom(8).hex(), self.version_ttl_ms, *args]

    def read_version(self, key: str, op: str = "version") -> bytes:
        """The current value of a version key (made anew when missing); raises Unavailable."""
        return self.call(scripts.SCOPE_READ, [key], self.versioned(), op=op)  # type: ignore[no-any-return]

    def get(self, key: str, op: str = "get") -> Any:
        """GET ``key`` through the breaker; raises Unavailable."""
        return self.run(partial(self.command, "GET", key), op=op)

    def command(self, *args: Any) -> Any:
        """One command on the request path's connections, its reply as Redis sent it (no
        breaker: for callers inside ``run``)."""
        if self.direct is not None:
            return self.direct.execute(*args)
        return self.client.execute_command(*args)

    # -- invalidation ---------------------------------------------------------------------

    def invalidate(self, tags: list[str]) -> bool:
        """Run INVALIDATE for ``tags``; False when held back (sent before the cache is used
        again)."""
        try:
            self.run(lambda: self.send_invalidate(tags), op="invalidate")
            return True
        except Unavailable:
            self.held_back.hold(tags=tags)
            return False

    def delete(self, full_keys: list[str]) -> int:
        """Run DELETE for ``full_keys``; how many existed (0 when held back)."""
        try:
            return self.run(lambda: self.send_delete(full_keys), op="delete")
        except Unavailable:
            self.held_back.hold(keys=full_keys)
            return 0

    def send_invalidate(self, tags: list[str]) -> None:
        """INVALIDATE ``tags`` (one call per hash slot)."""
        keys = self.keys
        for group in self.by_slot(tags, keys.tag_version):
            versions = [keys.tag_version(t) for t in group]
            self.script(scripts.INVALIDATE)(
                keys=versions + [keys.scope_version(v) for v in versions], args=self.versioned()
            )

    def send_delete(self, full_keys: list[str]) -> int:
        """DELETE ``full_keys`` (one call per hash slot); how many existed."""
        existed = 0
        keys = self.keys
        for group in self.by_slot(full_keys, lambda k: k):
            existed += self.script(scripts.DELETE)(
                keys=group
                + [keys.version(k) for k in group]
                + [keys.scope_version(k) for k in group],
                args=self.versioned(),
            )
        return existed

    def _send_invalidations(self, tags: list[str], full_keys: list[str]) -> None:
        self.send_invalidate(tags)
        self.send_delete(full_keys)

    # -- Redis Cluster ----------------------------------------------------------------------

    def by_slot(self, items: list[str], redis_key: Callable[[str], str]) -> list[list[str]]:
        """``items`` grouped so each group's Redis keys share a hash slot (one group off Cluster)."""
        if not self.cluster:
            return [items] if items else []
        groups: dict[int, list[str]] = {}
        for item in items:
            groups.setdefault(key_slot(redis_key(item).encode()), []).append(item)
        return list(groups.values())

    def check_slots(self, full_key: str, tags: list[str]) -> None:
        """On Cluster, refuse tags whose keys would not share the entry's hash slot."""
        if not self.cluster:
            return
        slot = key_slot(full_key.encode())
        for tag in tags:
            if key_slot(self.keys.tag_version(tag).encode()) != slot:
                raise ValueError(
                    f"tag {tag!r} is not in the hash slot of key {self.keys.strip(full_key)!r}: "
                    "on Redis Cluster give a key and its tags the same hash tag, like {u:42}"
                )

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.client.close()


class Direct:
    """Connections to the client's Redis for the commands of the request path.

    A call takes an idle connection (or makes one), writes once, reads once and puts it back: no
    pool lock, no poll of the socket before each use, no command wrappers. Taking and putting
    back are single list operations, atomic between threads, so the process holds as many of
    these as calls ever ran at once, besides the client's own pool. The connections have the
    client's settings (timeouts, health checks, TLS, name), and a call fails as a client call
    does (redis-py's errors, the connection dropped), so the breaker in front of it sees no
    difference. A connection dropped under a call is replaced and the call sent once more, as
    the client's retry does.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._make = partial(pool.connection_class, **pool.connection_kwargs)
        self._idle: list[Any] = []
        self._made: list[Any] = []

    def execute(self, *args: Any) -> Any:
        """One command's reply (no response callbacks: bytes, integers and lists as sent)."""
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._make()
            self._made.append(connection)
        try:
            packed = [pack_command(args)]  # hiredis: no per-argument checks (ours are plain)
            try:
                connection.send_packed_command(packed)
                return connection.read_response()
            except redis.exceptions.ConnectionError:  # dropped (and disconnected): once more
                connection.send_packed_command(packed)
                return connection.read_response()
        finally:
            self._idle.append(connection)

    def evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """A registered script's reply; loaded first when the server does not know it."""
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.execute("SCRIPT", "LOAD", script.script)
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        for connection in self._made:
            connection.disconnect()
