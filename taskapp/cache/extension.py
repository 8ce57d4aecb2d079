"""The cache extension: Redis behind a circuit breaker, an in-process layer, fill locks and tags."""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple

from flask import Flask, current_app, g, has_app_context, has_request_context
from flask_caching import Cache as FlaskCache
from redis.crc import key_slot

from taskapp.cache import metrics, scripts, stats
from taskapp.cache.client import REDIS_ERRORS, Breaker, CommandError, Unavailable, connect
from taskapp.cache.entry import NO_VALUE, Entry, dumps
from taskapp.cache.flask_caching import init_flask_caching
from taskapp.cache.keys import Keys
from taskapp.cache.l1 import LocalCache
from taskapp.cache.notifier import Notifier
from taskapp.cache.writebehind import Flusher, WriteBehind

log = logging.getLogger("taskapp.cache")

EXTENSION_NAME = "taskapp.cache"
Ttl = int | float | Callable[[Any], float] | None


class _State:
    """Everything the cache holds for one app in one process (rebuilt after a fork)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.pid = os.getpid()
        self.config = config
        self.keys = Keys(config["CACHE_KEY_PREFIX"])
        self.cluster = bool(config.get("REDIS_CLUSTER"))
        self.default_ttl = float(config["CACHE_DEFAULT_TIMEOUT"])
        self.stale_ttl = float(config["CACHE_STALE_TTL"])
        self.lock_ttl = float(config["CACHE_LOCK_TTL"])
        self.lock_wait = float(config["CACHE_LOCK_WAIT"])
        self.version_ttl_ms = int(config["CACHE_VERSION_TTL"] * 1000)
        self.client = connect(
            config["REDIS_URL"],
            cluster=self.cluster,
            timeout=float(config["REDIS_SOCKET_TIMEOUT"]),
        )
        self.l1 = LocalCache(int(config["L1_CACHE_MAX_ITEMS"]), float(config["L1_CACHE_TTL"]))
        self.stats = stats.StatsRecorder()
        self.pending_lock = threading.Lock()
        self.pending_tags: set[str] = set()
        self.pending_keys: set[str] = set()
        self.breaker = Breaker(
            threshold=int(config["CACHE_BREAKER_THRESHOLD"]),
            cooldown=float(config["CACHE_BREAKER_COOLDOWN"]),
            on_recover=self.replay_invalidations,
            on_open=self.l1.clear,
            on_error=lambda: self.stats.record(stats.ERROR),
        )
        self.scripts = {
            name: self.client.register_script(getattr(scripts, name))
            for name in (
                "FILL",
                "LOOKUP",
                "RELEASE",
                "INVALIDATE",
                "DELETE",
                "LIST_PUSH",
                "LIST_FILL",
                "WRITE_THROUGH",
            )
        }
        self.notifier = Notifier(self.client, self.keys, self.l1, on_tick=self.flush_stats)
        # Refresh-ahead work: a small bounded pool, shut down with the cache (never a thread per key).
        self.refresher = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="taskapp-cache-refresh"
        )
        self.refreshing: set[str] = set()
        self.flushers: list[Flusher] = []
        self._write_behind: WriteBehind | None = None
        log.info("cache on %s (prefix %r)", _redacted(config["REDIS_URL"]), self.keys.prefix)

    def write_behind(self) -> WriteBehind:
        """The write-behind queue: requests use the cache's client through the breaker; the
        flushers a connection of their own (they block on the stream longer than the cache's
        short socket timeout allows)."""
        if self._write_behind is None:
            config = self.config
            flusher_client = (
                self.client
                if config["REDIS_URL"].startswith("memory://")
                else connect(config["REDIS_URL"], cluster=self.cluster, timeout=5.0)
            )
            self._write_behind = WriteBehind(
                self.client,
                self.keys.prefix,
                flush_ms=int(config["WRITE_BEHIND_FLUSH_MS"]),
                claim_idle_ms=int(config["WRITE_BEHIND_CLAIM_IDLE_MS"]),
                guard=partial(self.run, op="write_behind"),
                flusher_client=flusher_client,
            )
        return self._write_behind

    def run(self, fn: Callable[[], Any], op: str = "other") -> Any:
        """Run ``fn`` through the breaker, timed as cache operation ``op``; raises Unavailable."""
        started = time.perf_counter()
        try:
            return self.breaker.call(fn)
        finally:
            metrics.CACHE_OP_SECONDS.labels(op).observe(time.perf_counter() - started)

    def replay_invalidations(self) -> None:
        """The breaker's probe: send what the outage held back, then close the breaker.

        The breaker closes under the lock that guards the held-back invalidations, once none is
        left: a writer whose invalidation failed either adds it before that (and this loop sends
        it) or finds the breaker closed and sends it itself (``hold_back``). So the cache is never
        used again while a write answered during the outage is still unsent.
        """
        self.client.ping()
        self.send_pending(close_when_done=True)

    def send_pending(self, close_when_done: bool = False) -> None:
        """Send held-back invalidations until none is left (raises a Redis error on failure)."""
        while not self.replay_pending(close_when_done):
            pass

    def replay_pending(self, close_when_done: bool = False) -> bool:
        """Send the held-back invalidations; True when none was left to send."""
        with self.pending_lock:
            tags, keys = sorted(self.pending_tags), sorted(self.pending_keys)
            if not tags and not keys:
                if close_when_done:
                    self.breaker.close()
                return True
        self.send_invalidate(tags)
        self.send_delete(keys)
        with self.pending_lock:
            self.pending_tags.difference_update(tags)
            self.pending_keys.difference_update(keys)
        log.warning(
            "replayed %d tag and %d key invalidations held back by the outage", len(tags), len(keys)
        )
        return False

    def hold_back(self, tags: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        """Keep invalidations Redis did not take, and send them before the cache is used again.

        While the breaker is open nothing reads the cache and its probe sends them. While it is
        closed (a failure below the threshold, or the probe closed it meanwhile) they are sent
        now, before the write is answered, retrying until they go through or the breaker opens.
        """
        with self.pending_lock:
            self.pending_tags.update(tags)
            self.pending_keys.update(keys)
        self.l1.clear()
        while not self.breaker.is_open:
            try:
                self.run(self.send_pending, op="replay")
                return
            except CommandError as exc:  # refused, not unreachable: retrying cannot help
                log.error("Redis refused held-back invalidations (%s); kept for the replay", exc)
                return
            except Unavailable:
                continue

    def record(self, event: str, full_key: str) -> None:
        """Count a cache event for ``cache stats``, by the key's family."""
        self.stats.record(event, stats.family(self.keys.strip(full_key)))

    def flush_stats(self) -> None:
        """Add this process's counts to the shared stats hash (from the listener thread)."""
        if self.stats.flush_due(1.0):
            try:
                self.run(
                    lambda: self.stats.flush(
                        self.client, self.keys.stats, {stats.L1_SIZE: len(self.l1)}
                    )
                )
            except Unavailable:
                log.debug("stats kept in memory: Redis unavailable")

    def send_invalidate(self, tags: list[str]) -> list[str]:
        """Run INVALIDATE for ``tags`` (one call per hash slot); the keys of deleted entries."""
        deleted: list[bytes] = []
        for group in self.by_slot(tags, self.keys.tag_set):
            deleted += self.scripts["INVALIDATE"](
                keys=[self.keys.tag_set(t) for t in group]
                + [self.keys.tag_version(t) for t in group],
                args=[self.version_ttl_ms, self.keys.invalidation_channel, self.keys.prefix],
            )
        return [k.decode() for k in deleted]

    def send_delete(self, full_keys: list[str]) -> int:
        """Run DELETE for ``full_keys`` (one call per hash slot); how many existed."""
        existed = 0
        for group in self.by_slot(full_keys, lambda k: k):
            existed += self.scripts["DELETE"](
                keys=group + [self.keys.version(k) for k in group],
                args=[self.version_ttl_ms, self.keys.invalidation_channel, self.keys.prefix],
            )
        return existed

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
            if key_slot(self.keys.tag_set(tag).encode()) != slot:
                raise ValueError(
                    f"tag {tag!r} is not in the hash slot of key {self.keys.strip(full_key)!r}: "
                    "on Redis Cluster give a key and its tags the same hash tag, like {u:42}"
                )

    def close(self) -> None:
        for flusher in self.flushers:
            flusher.stop()
        self.refresher.shutdown(wait=True, cancel_futures=True)
        self.notifier.stop()
        self.client.close()


def current_state() -> _State:
    """The cache state of the current app in this process (made anew after a fork)."""
    return state_of(current_app)


def state_of(app: Flask) -> _State:
    """The cache state of ``app`` in this process, without needing an app context."""
    state: _State = app.extensions[EXTENSION_NAME]
    if state.pid != os.getpid():  # forked: connections and threads are not ours
        state = app.extensions[EXTENSION_NAME] = _State(state.config)
    if not state.notifier.running:
        state.notifier.start()
    return state


def _xfetch_due(entry: Entry, beta: float = 1.0) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early with a probability that grows as the
    expiry nears, scaled by how long the fetch took (a floor of 1 ms for very fast fetches)."""
    delta = max(entry.fetch_seconds, 0.001)
    return time.time() - delta * beta * math.log(1.0 - random.random()) >= entry.expires_at


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


class Lease(NamedTuple):
    """The versions an entry's key and tags had before its source was read, and the fill
    lock's token when this caller holds it."""

    full_key: str
    tags: list[str]
    versions: list[bytes]
    token: str = ""


class RedisCache:
    """A Flask extension: a Redis cache that stays correct under concurrency and outages.

    Made at module level without an app and bound by ``init_app``; per-app state lives in
    ``app.extensions`` and is found through ``current_app``. Values are JSON. A miss is
    ``NO_VALUE``; a cached ``None`` is a hit. Redis errors never escape: they are counted, logged
    once per outage and answered as misses, so callers fall back to their source.
    """

    def __init__(self) -> None:
        self._flask_cache = FlaskCache()
        # Flask-Caching's decorators, on the same Redis (JSON, behind the same breaker).
        self.cached = self._flask_cache.cached
        self.memoize = self._flask_cache.memoize
        self.delete_memoized = self._flask_cache.delete_memoized
        self._loaders: dict[str, Callable[..., Any]] = {}

    def init_app(self, app: Flask) -> None:
        """Read and validate the settings, connect, and register teardown."""
        config = app.config
        config.setdefault("REDIS_URL", "memory://")
        config.setdefault("REDIS_CLUSTER", False)
        config.setdefault("CACHE_KEY_PREFIX", "cache:")
        config.setdefault("CACHE_DEFAULT_TIMEOUT", 300)
        config.setdefault("CACHE_STALE_TTL", 10)
        config.setdefault("CACHE_LOCK_TTL", 5)
        config.setdefault("CACHE_LOCK_WAIT", 5)
        config.setdefault("CACHE_VERSION_TTL", 3600)
        config.setdefault("CACHE_BREAKER_THRESHOLD", 3)
        config.setdefault("CACHE_BREAKER_COOLDOWN", 1.0)
        config.setdefault("REDIS_SOCKET_TIMEOUT", 0.25)
        config.setdefault("L1_CACHE_MAX_ITEMS", 10000)
        config.setdefault("L1_CACHE_TTL", 5)
        config.setdefault("WRITE_BEHIND_FLUSH_MS", 1000)
        config.setdefault("WRITE_BEHIND_CLAIM_IDLE_MS", 5000)
        for name in ("CACHE_LOCK_TTL", "CACHE_LOCK_WAIT", "REDIS_SOCKET_TIMEOUT", "L1_CACHE_TTL"):
            if float(config[name]) <= 0:
                raise RuntimeError(f"{name} must be a positive number of seconds")
        app.extensions[EXTENSION_NAME] = _State(config)
        init_flask_caching(app, self._flask_cache)

    # -- per-app state ------------------------------------------------------------------

    @staticmethod
    def _state() -> _State:
        return current_state()

    @property
    def client(self) -> Any:
        """The raw redis-py client (for tools; application code uses the methods below)."""
        return self._state().client

    @property
    def keys(self) -> Keys:
        """The key builder of the current app."""
        return self._state().keys

    # -- reads --------------------------------------------------------------------------

    def _read(self, state: _State, full_key: str) -> Entry | None:
        """The entry under ``full_key`` from memory, else Redis; None on a miss or an outage."""
        entry = self._from_memory(state, full_key)
        if entry is not None:
            return entry
        generation = state.l1.generation
        scope_key = state.keys.scope_version(full_key)
        try:
            raw, scope = state.run(lambda: state.client.mget([full_key, scope_key]), op="get")
        except Unavailable:
            return None
        scope = self._note_scope(scope_key, scope)
        return self._from_redis(state, full_key, raw, generation, scope)

    def _from_memory(self, state: _State, full_key: str) -> Entry | None:
        """The fresh entry in the in-process layer, counted as an l1 hit or miss.

        An entry counts only while its scope version is still Redis's: learned once per request
        (from the first Redis call that returns it, such as the rate limit's, or one GET), so a
        write answered by any process is never followed by this memory's older answer.
        """
        l1 = state.l1
        if not l1.active or state.breaker.is_open:
            return None
        found = l1.get(full_key)
        if found is not None:
            entry, scope = found
            if entry.is_fresh() and scope == self._scope_version(state, full_key):
                metrics.L1_HIT.inc()
                state.record(stats.L1_HIT, full_key)
                return entry
        metrics.L1_MISS.inc()
        state.record(stats.L1_MISS, full_key)
        return None

    def _scope_version(self, state: _State, full_key: str) -> bytes | None:
        """The current version of ``full_key``'s scope: this request's, else read from Redis."""
        scope_key = state.keys.scope_version(full_key)
        if has_request_context():
            known = g.get("_cache_scopes")
            if known is not None and scope_key in known:
                return known[scope_key]
        try:
            raw = state.run(lambda: state.client.get(scope_key), op="scope")
        except Unavailable:
            return None
        return self._note_scope(scope_key, raw)

    @staticmethod
    def _note_scope(scope_key: str, raw: bytes | None) -> bytes:
        """Remember a scope version Redis returned, for the rest of this request."""
        version = raw if raw is not None else b"0"
        if has_request_context():
            known = g.get("_cache_scopes")
            if known is None:
                known = g._cache_scopes = {}
            known[scope_key] = version
        return version

    def _from_redis(
        self, state: _State, full_key: str, raw: bytes | None, generation: int, scope: bytes
    ) -> Entry | None:
        """Decode what Redis returned, count it, and keep a fresh entry in memory."""
        if raw is None:
            metrics.REDIS_MISS.inc()
            state.record(stats.REDIS_MISS, full_key)
            return None
        try:
            entry = Entry.decode(raw)
        except ValueError:
            log.warning("ignoring an undecodable cache entry %r", full_key)
            metrics.REDIS_MISS.inc()
            state.record(stats.REDIS_MISS, full_key)
            return None
        metrics.REDIS_HIT.inc()
        state.record(stats.REDIS_HIT, full_key)
        if entry.is_fresh():
            state.l1.put(full_key, entry, generation, scope)
        return entry

    def lookup(self, key: str, tags: Iterable[str] = ()) -> tuple[Entry | None, Lease | None]:
        """The fresh entry of ``key``; on a miss, a lease to produce and store it.

        For callers that produce the value themselves (the HTTP response cache). One caller
        across processes gets a lease holding the fill lock (store with ``store_leased``, or
        ``release`` it); the others wait for that fill and get the entry, as in
        ``get_or_set``, or after CACHE_LOCK_WAIT a lease without the lock. Read, lease and
        lock take one round trip. (None, None) when Redis is unavailable: store nothing.
        """
        state = self._state()
        full_key = state.keys.entry(key)
        tags = list(tags)
        state.check_slots(full_key, tags)
        entry = self._from_memory(state, full_key)
        if entry is not None:
            return entry, None
        scope_key = state.keys.scope_version(full_key)
        keys = [
            full_key,
            state.keys.lock(full_key),
            scope_key,
            *self._version_keys(state, full_key, tags),
        ]
        deadline = time.monotonic() + state.lock_wait
        waited = False
        while True:
            token, generation = uuid.uuid4().hex, state.l1.generation
            try:
                raw, took, scope, *versions = state.run(
                    partial(
                        state.scripts["LOOKUP"], keys=keys, args=[token, int(state.lock_ttl * 1000)]
                    ),
                    op="get",
                )
            except Unavailable:
                return None, None
            scope = self._note_scope(scope_key, scope)
            if raw is not None or not waited:
                entry = self._from_redis(state, full_key, raw, generation, scope)
                if entry is not None and entry.is_fresh():
                    return entry, None
            if took:
                return None, Lease(full_key, tags, versions, token)
            if not waited:
                metrics.CACHE_LOCK_WAITS.inc()
                state.record(stats.LOCK_WAIT, full_key)
                waited = True
            entry = self._wait_for_fill(state, full_key, deadline)
            if entry is not None:
                return entry, None
            if time.monotonic() >= deadline:
                return None, Lease(full_key, tags, versions)

    def release(self, lease: Lease) -> None:
        """Give up a lease's fill lock without storing (the answer was not cacheable)."""
        if lease.token:
            state = self._state()
            self._release(state, lease.full_key, lease.token)

    def get(self, key: str) -> Any:
        """The cached value of ``key``, or ``NO_VALUE``."""
        state = self._state()
        entry = self._read(state, state.keys.entry(key))
        return entry.value if entry is not None and entry.is_fresh() else NO_VALUE

    # -- writes -------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: Any,
        ttl: Ttl = None,
        tags: Iterable[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds, a member of ``tags``, atomically."""
        state = self._state()
        tags = list(tags)
        seconds = self._ttl(state, ttl, value)
        entry = Entry(dumps(value), time.time() + seconds, tags, meta=meta)
        full_key = state.keys.entry(key)
        state.l1.discard([full_key])  # other processes drop it when the announcement arrives
        return self._store(
            state, full_key, entry, seconds, None, announce=state.keys.invalidation_channel
        )

    def _store(
        self,
        state: _State,
        full_key: str,
        entry: Entry,
        seconds: float,
        versions: list[bytes] | None,
        token: str = "",
        stale_ttl: float = 0.0,
        announce: str = "",
    ) -> bool:
        """Run FILL: store unless a version read before the fetch has changed since.

        ``announce`` is the channel to publish the key on: the fill channel when callers may
        wait for it, the invalidation channel when an existing value is overwritten.
        """
        keys = state.keys
        state.check_slots(full_key, entry.tags)
        version_keys = (
            self._version_keys(state, full_key, entry.tags) if versions is not None else []
        )
        generation = state.l1.generation
        try:
            stored, scope = state.run(
                lambda: state.scripts["FILL"](
                    keys=[full_key, keys.lock(full_key), *version_keys]
                    + [keys.tag_set(t) for t in entry.tags],
                    args=[
                        entry.encode(),
                        max(1, int((seconds + stale_ttl) * 1000)),
                        token,
                        announce,
                        len(version_keys),
                        len(entry.tags),
                        keys.prefix,
                        state.version_ttl_ms,
                        *(versions or []),
                    ],
                ),
                op="fill",
            )
        except Unavailable:
            return False
        if stored:
            scope = self._note_scope(keys.scope_version(full_key), scope)
            state.l1.put(full_key, entry, generation, scope)
        return bool(stored)

    def store_leased(
        self,
        lease: Lease,
        raw_json: bytes,
        ttl: Ttl = None,
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """Store already-serialised JSON under a lease; False when an invalidation came first.

        A lease holding the fill lock releases it and wakes the callers waiting for the fill.
        """
        state = self._state()
        seconds = self._ttl(state, ttl, None)
        entry = Entry(raw_json, time.time() + seconds, lease.tags, meta=meta)
        announce = state.keys.fill_channel if lease.token else ""
        return self._store(
            state, lease.full_key, entry, seconds, lease.versions, lease.token, announce=announce
        )

    def delete(self, *keys: str) -> int:
        """Delete entries everywhere (Redis and every process's memory); fills in flight lose."""
        if not keys:
            return 0
        state = self._state()
        full_keys = [state.keys.entry(k) for k in keys]
        state.l1.discard(full_keys)
        try:
            return state.run(lambda: state.send_delete(full_keys), op="delete")
        except Unavailable:
            state.hold_back(keys=full_keys)
            return 0

    def invalidate_tags(self, *tags: str) -> int:
        """Remove every entry stored with any of ``tags``, including fills already in flight.

        Each tag's version is bumped in the same script that deletes its entries, so a fill that
        read the source before this call cannot store its result after it. When Redis cannot be
        reached the tags are kept and replayed before the cache is used again.
        """
        if not tags:
            return 0
        state = self._state()
        try:
            deleted = state.run(lambda: state.send_invalidate(list(tags)), op="invalidate")
        except Unavailable:
            state.hold_back(tags=tags)
            return 0
        # Our own memory layer is cleared now, not when our own message comes back.
        state.l1.discard(deleted)
        return len(deleted)

    # -- get or set ---------------------------------------------------------------------

    def get_or_set(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: Ttl = None,
        tags: Iterable[str] = (),
        refresh_ahead: bool = False,
    ) -> Any:
        """The cached value of ``key``, or ``fetch()``'s, stored; one fetch per key at a time.

        On a miss one caller (across threads, processes and hosts) takes the fill lock and
        fetches; the others wait for the fill message and read the stored value, or, when an
        expired entry is still at hand, are served it at once (stale-while-revalidate, bounded
        by CACHE_STALE_TTL). A waiter gives up after CACHE_LOCK_WAIT and fetches for itself.
        When Redis is unavailable every caller fetches: correctness over speed.

        With ``refresh_ahead`` a hit may start a background refresh shortly before the entry
        expires (XFetch: the closer the expiry and the slower the fetch, the likelier), and an
        expired entry still at hand is served while it is refreshed in the background, so
        readers of a hot key never wait for the source.
        """
        state = self._state()
        full_key = state.keys.entry(key)
        tags = list(tags)
        state.check_slots(full_key, tags)
        entry = self._read(state, full_key)
        if entry is not None and entry.is_fresh():
            if refresh_ahead and _xfetch_due(entry):
                self._refresh_in_background(state, full_key, fetch, ttl, tags)
            return entry.value
        if entry is not None and refresh_ahead:
            metrics.CACHE_STALE_SERVED.inc()
            state.record(stats.STALE_SERVED, full_key)
            self._refresh_in_background(state, full_key, fetch, ttl, tags)
            return entry.value
        return self._fill(state, full_key, fetch, ttl, tags, stale=entry)

    def _refresh_in_background(
        self, state: _State, full_key: str, fetch: Callable[[], Any], ttl: Ttl, tags: list[str]
    ) -> None:
        """Refresh an entry in the refresher pool; one refresher per key across all processes."""
        with state.pending_lock:
            if full_key in state.refreshing:
                return
            state.refreshing.add(full_key)
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def refresh() -> None:
            try:
                with app.app_context():
                    token = uuid.uuid4().hex
                    lock = state.keys.lock(full_key)
                    px = int(state.lock_ttl * 1000)
                    if state.run(lambda: state.client.set(lock, token, nx=True, px=px), op="lock"):
                        log.debug("refreshing %s ahead of its expiry", full_key)
                        self._fill_locked(state, full_key, fetch, ttl, tags, token, force=True)
            except Unavailable:
                log.debug("refresh of %s skipped: Redis unavailable", full_key)
            except Exception:  # a failed refresh must not kill the pool; readers still hit
                log.exception("background refresh of %s failed", full_key)
            finally:
                with state.pending_lock:
                    state.refreshing.discard(full_key)

        try:
            state.refresher.submit(refresh)
        except RuntimeError:  # the pool is shut down: the worker is stopping
            with state.pending_lock:
                state.refreshing.discard(full_key)

    def _fill(
        self,
        state: _State,
        full_key: str,
        fetch: Callable[[], Any],
        ttl: Ttl,
        tags: list[str],
        stale: Entry | None,
    ) -> Any:
        deadline = time.monotonic() + state.lock_wait
        waited = False
        while True:
            token = uuid.uuid4().hex
            try:
                acquired = state.run(
                    partial(
                        state.client.set,
                        state.keys.lock(full_key),
                        token,
                        nx=True,
                        px=int(state.lock_ttl * 1000),
                    ),
                    op="lock",
                )
            except Unavailable:
                log.debug("no lock for %s: Redis unavailable, fetching without the cache", full_key)
                return self._fetch(fetch)[0]
            if acquired:
                log.debug("fill lock for %s taken", full_key)
                return self._fill_locked(state, full_key, fetch, ttl, tags, token)
            if stale is not None:
                log.debug("serving stale %s while another caller refreshes it", full_key)
                metrics.CACHE_STALE_SERVED.inc()
                state.record(stats.STALE_SERVED, full_key)
                return stale.value
            if not waited:
                metrics.CACHE_LOCK_WAITS.inc()
                state.record(stats.LOCK_WAIT, full_key)
                waited = True
            entry = self._wait_for_fill(state, full_key, deadline)
            if entry is not None:
                return entry.value
            if time.monotonic() >= deadline:
                log.debug(
                    "waited %.1fs for %s; fetching without the lock", state.lock_wait, full_key
                )
                return self._fetch(fetch)[0]

    def _wait_for_fill(self, state: _State, full_key: str, deadline: float) -> Entry | None:
        """Wait for a fill message (or poll without a channel); the fresh entry, or None."""
        subscribed = state.notifier.subscribed.is_set()
        event = state.notifier.waiter(full_key) if subscribed else None
        entry = self._read(state, full_key)  # after registering: a fill now cannot be missed
        if entry is not None and entry.is_fresh():
            return entry
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if event is not None:
            # Woken by the fill, or after a slice to retry the lock of a holder that died.
            if event.wait(min(remaining, max(state.lock_ttl / 5, 0.05))):
                entry = self._read(state, full_key)  # the fill landed: read it at once
                if entry is not None and entry.is_fresh():
                    return entry
        else:
            time.sleep(min(remaining, 0.005))
        return None

    def _fill_locked(
        self,
        state: _State,
        full_key: str,
        fetch: Callable[[], Any],
        ttl: Ttl,
        tags: list[str],
        token: str,
        force: bool = False,
    ) -> Any:
        """Holder of the fill lock: read versions, fetch, store if nothing was invalidated."""
        version_keys = self._version_keys(state, full_key, tags)
        try:
            current, *versions = state.run(
                lambda: state.client.mget([full_key, *version_keys]), op="lease"
            )
        except Unavailable:
            self._release(state, full_key, token)
            return self._fetch(fetch)[0]
        if current is not None and not force:  # filled between our read and our lock
            entry = Entry.decode(current)
            if entry.is_fresh():
                self._release(state, full_key, token)
                return entry.value
        versions = [v if v is not None else b"0" for v in versions]
        try:
            value, seconds = self._fetch(fetch)
        except BaseException:
            self._release(state, full_key, token)
            raise
        ttl_seconds = self._ttl(state, ttl, value)
        entry = Entry(dumps(value), time.time() + ttl_seconds, tags, fetch_seconds=seconds)
        stored = self._store(
            state,
            full_key,
            entry,
            ttl_seconds,
            versions,
            token=token,
            stale_ttl=state.stale_ttl,
            announce=state.keys.fill_channel,
        )
        metrics.CACHE_FILLS.labels("stored" if stored else "refused").inc()
        if not stored:
            log.debug("fill of %s not stored: invalidated during the fetch", full_key)
        return value

    def _release(self, state: _State, full_key: str, token: str) -> None:
        try:
            state.run(
                lambda: state.scripts["RELEASE"](
                    keys=[state.keys.lock(full_key)],
                    args=[token, state.keys.fill_channel, full_key],
                )
            )
        except Unavailable:
            log.debug("lock of %s left to expire: Redis unavailable", full_key)

    def _fetch(self, fetch: Callable[[], Any]) -> tuple[Any, float]:
        self.mark_source_read()
        started = time.monotonic()
        value = fetch()
        return value, time.monotonic() - started

    @staticmethod
    def _version_keys(state: _State, full_key: str, tags: list[str]) -> list[str]:
        return [state.keys.version(full_key)] + [state.keys.tag_version(t) for t in tags]

    @staticmethod
    def _ttl(state: _State, ttl: Ttl, value: Any) -> float:
        if callable(ttl):
            ttl = ttl(value)
        seconds = state.default_ttl if ttl is None else float(ttl)
        if seconds <= 0:
            raise ValueError("ttl must be positive")
        return seconds

    # -- read-through and write-through -------------------------------------------------

    def register_loader(self, family: str, loader: Callable[..., Any]) -> None:
        """Make the cache responsible for loading a family of keys (read-through)."""
        self._loaders[family] = loader

    def load(
        self,
        family: str,
        key: str,
        *args: Any,
        ttl: Ttl = None,
        tags: Iterable[str] = (),
        refresh_ahead: bool = False,
    ) -> Any:
        """Read-through: the cached value of ``key``, loaded by the family's loader on a miss.

        The loader runs under the same fill lock and version checks as ``get_or_set``.
        """
        try:
            loader = self._loaders[family]
        except KeyError:
            raise LookupError(f"no loader registered for the key family {family!r}") from None
        return self.get_or_set(key, partial(loader, *args), ttl, tags, refresh_ahead)

    def write_through(
        self,
        key: str,
        value: Any,
        version: int,
        ttl: Ttl = None,
        tags: Iterable[str] = (),
        invalidate: Iterable[str] = (),
    ) -> bool:
        """After a write to the source: invalidate ``invalidate`` and store ``value``, atomically.

        ``version`` grows with each write of the entry (a counter kept by the source), so a slow
        writer never replaces a newer value stored by a faster one. Fills that read the source
        before the write are refused, as after any invalidation.
        """
        state = self._state()
        keys = state.keys
        full_key = keys.entry(key)
        tags, dropped = list(tags), list(invalidate)
        state.check_slots(full_key, tags + dropped)
        seconds = self._ttl(state, ttl, value)
        entry = Entry(dumps(value), time.time() + seconds, tags)
        try:
            stored, *deleted = state.run(
                lambda: state.scripts["WRITE_THROUGH"](
                    keys=[full_key, keys.version(full_key), keys.write_version(full_key)]
                    + [keys.tag_set(t) for t in tags]
                    + [keys.tag_set(t) for t in dropped]
                    + [keys.tag_version(t) for t in dropped],
                    args=[
                        entry.encode(),
                        int(seconds * 1000),
                        version,
                        state.version_ttl_ms,
                        keys.invalidation_channel,
                        len(tags),
                        len(dropped),
                        keys.prefix,
                    ],
                ),
                op="write_through",
            )
        except Unavailable:
            state.hold_back(tags=dropped, keys=[full_key])
            return False
        state.l1.discard([k.decode() for k in deleted])
        return bool(stored)

    def write_behind(self) -> WriteBehind:
        """The write-behind queue of the current app (changes answered from Redis at once)."""
        return self._state().write_behind()

    def flusher(self, apply: Callable[[str, dict[str, Any]], None]) -> Flusher:
        """A flusher thread for this process applying queued changes with ``apply``; stopped
        when the cache closes."""
        state = self._state()
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        flusher = Flusher(app, state.write_behind(), apply)
        state.flushers.append(flusher)
        return flusher

    # -- capped lists (feeds) -----------------------------------------------------------

    def list_push(self, key: str, item: Any, maxlen: int) -> None:
        """Prepend ``item`` to a cached capped list; a list not cached is left to its next reader."""
        state = self._state()
        full_key = state.keys.entry(key)
        try:
            state.run(
                lambda: state.scripts["LIST_PUSH"](
                    keys=[full_key, state.keys.version(full_key)],
                    args=[dumps(item), maxlen, state.version_ttl_ms],
                )
            )
        except Unavailable:
            state.hold_back(keys=[full_key])

    def list_get(
        self, key: str, limit: int, fetch: Callable[[], list[Any]], maxlen: int, ttl: float
    ) -> list[Any]:
        """The first ``limit`` items of a capped list; rebuilt from ``fetch()`` (newest first) on a miss."""
        state = self._state()
        full_key = state.keys.entry(key)
        version_key = state.keys.version(full_key)
        try:
            items, version = state.run(
                lambda: (
                    state.client.pipeline(transaction=False)
                    .lrange(full_key, 0, limit - 1)
                    .get(version_key)
                    .execute()
                ),
                op="list",
            )
        except Unavailable:
            return self._fetch(fetch)[0][:limit]
        if items:
            metrics.REDIS_HIT.inc()
            state.record(stats.REDIS_HIT, full_key)
            return [Entry(raw, 0, []).value for raw in items]
        metrics.REDIS_MISS.inc()
        state.record(stats.REDIS_MISS, full_key)
        fetched = self._fetch(fetch)[0][:maxlen]
        try:
            state.run(
                lambda: state.scripts["LIST_FILL"](
                    keys=[full_key, version_key],
                    args=[int(ttl * 1000), version or b"0", *(dumps(i) for i in reversed(fetched))],
                )
            )
        except Unavailable:
            log.debug("list %s not stored: Redis unavailable", full_key)
        return fetched[:limit]

    # -- scripts for other modules (rate limits) --------------------------------------

    def run_script(
        self,
        script: str,
        keys: list[str],
        args: list[Any],
        default: Any,
        read_scope: bool = False,
    ) -> Any:
        """Run a Lua script on prefixed ``keys`` through the breaker; ``default`` on failure.

        With ``read_scope`` the scope version of ``keys[0]`` is passed as one more key; the script
        returns its value last, and it is kept for this request's in-process reads (the round
        trip a request makes anyway also validates its memory layer).
        """
        state = self._state()
        registered = state.scripts.get(script)
        if registered is None:
            registered = state.scripts[script] = state.client.register_script(script)
        full_keys = [state.keys.entry(k) for k in keys]
        if read_scope:
            full_keys.append(state.keys.scope_version(full_keys[0]))
        try:
            result = state.run(lambda: registered(keys=full_keys, args=args), op="script")
        except Unavailable:
            return default
        if read_scope:
            self._note_scope(full_keys[-1], result.pop())
        return result

    # -- request bookkeeping and health -------------------------------------------------

    def record(self, event: str, family: str) -> None:
        """Count a cache event of another layer (the HTTP cache) for ``cache stats``."""
        self._state().stats.record(event, family)

    @staticmethod
    def mark_source_read() -> None:
        """Note that this request read the source of truth (its response is an ``X-Cache: MISS``)."""
        if has_app_context():
            g._cache_source_read = True

    @staticmethod
    def source_was_read() -> bool:
        """True when this request read the source of truth."""
        return bool(g.get("_cache_source_read"))

    def ping(self) -> bool:
        """True when Redis answers now (ignores the breaker; for readiness checks)."""
        state = self._state()
        try:
            return bool(state.client.ping())
        except REDIS_ERRORS:
            return False

    @property
    def degraded(self) -> bool:
        """True while the breaker keeps requests away from Redis."""
        return self._state().breaker.is_open

    @property
    def local(self) -> LocalCache:
        """The in-process layer of the current app."""
        return self._state().l1

    def close(self) -> None:
        """Stop the listener and close connections of the current app."""
        state: _State | None = current_app.extensions.get(EXTENSION_NAME)
        if state is not None and state.pid == os.getpid():
            state.close()
