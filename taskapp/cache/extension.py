"""The Flask extension: ``init_app`` and the cache's public API.

The work is done elsewhere, one idea per module: ``state`` (one app's parts in one process),
``store`` (Redis behind the breaker), ``resilience`` (the breaker, held-back invalidations),
``lock`` (the fill lock), ``region`` (get/set/get-or-set, leases, the in-process layer),
``lists`` (capped lists), ``writebehind``, ``counting`` (every event counted once),
``context`` (a request's state), ``response_cache`` (the HTTP response cache) and ``cli`` (the
``cache`` commands).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from flask import Flask, current_app
from flask_caching import Cache as FlaskCache

from taskapp.cache import context, stats
from taskapp.cache.admission import Admission, Answer
from taskapp.cache.cli import command_group
from taskapp.cache.client import REDIS_ERRORS, Unavailable
from taskapp.cache.context import RequestState
from taskapp.cache.derived_keys import Keys
from taskapp.cache.entry import NO_VALUE, Entry
from taskapp.cache.flask_caching import init_flask_caching
from taskapp.cache.l1 import LocalCache
from taskapp.cache.region import Lease, Ttl, refused
from taskapp.cache.settings import CacheSettings
from taskapp.cache.state import EXTENSION_NAME, CacheState, state_of
from taskapp.cache.writebehind import Flusher, WriteBehindQueue

log = logging.getLogger("taskapp.cache")

__all__ = ["EXTENSION_NAME", "Lease", "RedisCache", "Ttl"]


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
        #: The ``flask ... cache`` command group (``cli.py``); an app may add its own commands.
        self.cli = command_group()

    def init_app(self, app: Flask) -> None:
        """Fill in and check the settings (``settings.SETTINGS``), connect, bind Flask-Caching,
        register the ``cache`` commands."""
        app.extensions[EXTENSION_NAME] = CacheState(CacheSettings.from_config(app.config))
        init_flask_caching(app, self._flask_cache)
        app.cli.add_command(self.cli)

    # -- per-app state ------------------------------------------------------------------

    @staticmethod
    def _state() -> CacheState:
        """The cache state of the current app in this process (made anew after a fork)."""
        return state_of(current_app)

    @property
    def client(self) -> Any:
        """The raw redis-py client (for tools; application code uses the methods below)."""
        return self._state().store.client

    @property
    def keys(self) -> Keys:
        """The key builder of the current app."""
        return self._state().keys

    # -- reads --------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The cached value of ``key``, or ``NO_VALUE``."""
        state = self._state()
        entry = state.region.read(state.keys.entry(key), RequestState.current())
        return entry.value if entry is not None and entry.is_fresh() else NO_VALUE

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
        by CACHE_STALE_TTL). A waiter keeps waiting while the holder renews its lock, and gives
        up after CACHE_FILL_TIMEOUT and fetches for itself.
        When Redis is unavailable every caller fetches: correctness over speed.

        With ``refresh_ahead`` a hit may start a background refresh shortly before the entry
        expires (XFetch: the closer the expiry and the slower the fetch, the likelier), and an
        expired entry still at hand is served while it is refreshed in the background, so
        readers of a hot key never wait for the source.
        """
        state = self._state()
        return state.region.get_or_set(
            state.keys.entry(key), fetch, ttl, list(tags), refresh_ahead, RequestState.current()
        )

    def lookup(
        self, key: str, tags: Iterable[str] = (), layer: str | None = None
    ) -> tuple[Entry | None, Lease | None]:
        """The fresh entry of ``key``; on a miss, a lease to produce and store it.

        For callers that produce the value themselves (the HTTP response cache). One caller
        across processes gets a lease holding the fill lock (store with ``store_leased``, or
        ``release`` it); the others wait for that fill and get the entry, as in
        ``get_or_set``, or after CACHE_FILL_TIMEOUT a lease without the lock. (None, None) when
        Redis is unavailable: store nothing. With ``layer`` (``"http"``), the outcome is also
        counted as that layer's hit or miss.
        """
        state = self._state()
        entry, lease = state.region.lookup(
            state.keys.entry(key), list(tags), RequestState.current()
        )
        if layer is not None:
            state.counter.count(stats.outcome(layer, entry is not None), family=layer)
        return entry, lease

    def lookup_after(
        self,
        admission: Admission,
        key: str,
        tags: Iterable[str] = (),
        layer: str | None = None,
        *,
        request: RequestState | None = None,
        app: Flask | None = None,
    ) -> tuple[Answer | None, Entry | None, Lease | None]:
        """Run ``admission``'s checks (on keys in ``key``'s hash slot) and then
        ``lookup(key, tags, layer)``, in one call: (its answer, entry, lease).

        When a check refuses, nothing is looked up, counted or locked. The answer is None when
        Redis is unavailable. A layer in front of Flask's dispatch (no Flask context yet) passes
        its ``request`` state and its ``app``.
        """
        state = state_of(app) if app is not None else self._state()
        if request is None:
            request = RequestState.current()
        answer, entry, lease = state.region.lookup_after(
            admission, state.keys.entry(key), list(tags), request
        )
        if layer is not None and not refused(answer):
            state.counter.count(stats.outcome(layer, entry is not None), family=layer)
        return answer, entry, lease

    def store_leased(
        self, lease: Lease, raw_json: bytes, ttl: Ttl = None, meta: dict[str, Any] | None = None
    ) -> bool:
        """Store already-serialised JSON under a lease; False when an invalidation came first."""
        return self._state().region.store_leased(lease, raw_json, ttl, meta, RequestState.current())

    def release(self, lease: Lease) -> None:
        """Give up a lease's fill lock without storing (the answer was not cacheable)."""
        self._state().region.release(lease)

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
        return state.region.set(
            state.keys.entry(key), value, ttl, list(tags), meta, RequestState.current()
        )

    def delete(self, *keys: str) -> int:
        """Delete entries everywhere (Redis and every process's memory); fills in flight lose."""
        if not keys:
            return 0
        state = self._state()
        return state.region.delete([state.keys.entry(k) for k in keys], RequestState.current())

    def recheck_memory(self) -> None:
        """For the rest of this request, check the in-process layer's entries against Redis
        again before serving them.

        A request learns the versions that check them once (read-your-writes across processes
        at the cost of one round trip), so it does not see what other processes changed after
        it learned them. A read-modify-write that must see such a change (it was refused for
        having read an older state) calls this before it reads again. Outside a request there
        is nothing to forget: every read asks Redis.
        """
        request = RequestState.current()
        if request is not None:
            request.scopes.clear()

    def invalidate_tags(self, *tags: str) -> int:
        """Remove every entry stored with any of ``tags``, including fills already in flight;
        the number of tags Redis took now (0 when held back).

        Each tag's version is bumped: an entry records the versions of its tags and is served
        only while they are current, and a fill that read the source before this call cannot
        store its result after it. The cost does not grow with the entries a tag holds. When
        Redis cannot be reached the tags are kept and replayed before the cache is used again.
        """
        if not tags:
            return 0
        return self._state().region.invalidate_tags(list(tags), RequestState.current())

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

    def write_lease(self, key: str) -> str:
        """Read before a write to the source that ``write_through`` will follow (its lease)."""
        state = self._state()
        return state.region.write_lease(state.keys.entry(key))

    def write_through(
        self,
        key: str,
        value: Any,
        lease: str,
        ttl: Ttl = None,
        tags: Iterable[str] = (),
        invalidate: Iterable[str] = (),
    ) -> bool:
        """After a write to the source: invalidate ``invalidate`` and store ``value``, atomically.

        ``lease`` is what ``write_lease(key)`` returned before the write. The value is stored
        only when no other change of the entry came in between; writers that overlap delete it
        instead (the next reader fills it from the source), so a slow writer never replaces a
        newer value, whatever order the writers reach Redis in. Fills that read the source
        before the write are refused, as after any invalidation.
        """
        state = self._state()
        return state.region.write_through(
            state.keys.entry(key),
            value,
            lease,
            ttl,
            list(tags),
            list(invalidate),
            RequestState.current(),
        )

    # -- write-behind -------------------------------------------------------------------

    def write_behind(self) -> WriteBehindQueue:
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
        state.lists.push(state.keys.entry(key), item, maxlen)

    def list_get(
        self, key: str, limit: int, fetch: Callable[[], list[Any]], maxlen: int, ttl: float
    ) -> list[Any]:
        """The first ``limit`` items of a capped list; rebuilt from ``fetch()`` (newest first) on a miss."""
        state = self._state()
        return state.lists.get(state.keys.entry(key), limit, fetch, maxlen, ttl)

    # -- admissions and the library's other functions -----------------------------------

    def admit(self, admission: Admission, scope_of: str | None = None) -> Answer | None:
        """Run a request's ``admission`` (see ``admission.py``); None when Redis is unavailable.

        With ``scope_of`` (a key), the scope version that checks the in-process layer's entries
        of that key's scope is read in the same call and kept for this request's reads (the
        call a request makes anyway also checks its memory layer).
        """
        state = self._state()
        try:
            if scope_of is not None:
                return state.region.admit(
                    admission, state.keys.entry(scope_of), RequestState.current()
                )
            return state.region.request(admission, "", [], [], op="admission")
        except Unavailable:
            return None

    def call(
        self,
        function: str,
        keys: list[str],
        args: list[Any],
        default: Any = None,
        *,
        must_reach: bool = False,
        with_scope: bool = False,
    ) -> Any:
        """Call a function of the cache's library (``library.lua``: its comment says what each
        takes and answers) on ``keys`` given the cache's prefix; ``default`` when Redis is
        unavailable. Functions that read or change versions take the version arguments first
        (``versioned``).

        With ``must_reach`` (a write other processes must see, such as a revocation), a call
        Redis does not take is held back with the invalidations: this process uses the cache
        again only once it was sent. With ``with_scope``, the keys are followed by the scope
        version of the first (a function that bumps it, such as ``revocation_record``).
        """
        state = self._state()
        prefixed = [state.keys.entry(k) for k in keys]
        if with_scope:
            prefixed.append(state.keys.scope_version(prefixed[0]))
        if must_reach:
            answer = state.store.call_or_hold(function, prefixed, list(args), op="held")
            return default if answer is None else answer
        try:
            return state.store.call(function, prefixed, list(args))
        except Unavailable:
            return default

    def versioned(self, *args: Any) -> list[Any]:
        """The arguments of a library function that reads or changes versions: the version
        arguments (the prefix, the versions' time to live), then ``args``."""
        return self._state().store.versioned(*args)

    # -- request bookkeeping and health -------------------------------------------------

    mark_source_read = staticmethod(context.mark_source_read)
    source_was_read = staticmethod(context.source_was_read)

    def ping(self) -> bool:
        """True when Redis answers now (ignores the breaker; for readiness checks)."""
        try:
            return bool(self._state().store.client.ping())
        except REDIS_ERRORS:
            return False

    @property
    def degraded(self) -> bool:
        """True while the breaker keeps requests away from Redis."""
        return self._state().store.breaker.is_open

    @property
    def local(self) -> LocalCache:
        """The in-process layer of the current app."""
        return self._state().l1

    def close(self) -> None:
        """Stop the listener and close connections of the current app."""
        state: CacheState | None = current_app.extensions.get(EXTENSION_NAME)
        if state is not None and state.pid == os.getpid():
            state.close()
