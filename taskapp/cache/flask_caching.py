"""Flask-Caching on the same Redis: its CACHE_* settings and decorators, JSON instead of pickle.

``RedisCache.cached`` and ``RedisCache.memoize`` are Flask-Caching's own decorators. Their backend
here stores JSON (a value read back from Redis can never run code), shares this extension's
connection and key prefix, and goes through its circuit breaker, so a hung Redis costs a
decorated view nothing but the cache.

Deletes Redis does not take are held back with the extension's own invalidations and replayed
before this process reads the cache again (the breaker stays open until they are sent), so a
delete made during an outage is never forgotten: ``delete``, ``delete_many``, ``unlink``, a
cached view's delete and ``delete_memoized`` (whose reset of a function's version is a
``set_many``, held back as a delete of the version key when Redis does not take it).

Only values that JSON gives back exactly are stored: ``None``, ``bool``, ``int``, finite
``float``, ``str``, and lists and string-keyed dicts of those; and a ``Markup``, which is what
the ``{% cache %}`` template tag stores (an autoescaped fragment), kept as a tagged JSON string
and given back as ``Markup``. Anything else (a tuple such as a view's ``("created", 201)``, bytes,
a ``Response``, an exception) is not cached at all, so it can never be replayed as something
else: the decorated function simply runs every time.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_caching.backends.rediscache import RedisCache as FlaskCachingRedisCache
from markupsafe import Markup

from taskapp.cache.client import CommandError, Unavailable
from taskapp.cache.state import state_of
from taskapp.cache.stats import escape_glob

if TYPE_CHECKING:
    from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

BACKEND = "taskapp.cache.flask_caching.JSONRedisCache"

#: Flask-Caching settings of its own Redis connection: this backend shares the extension's
#: connection (REDIS_URL, REDIS_SOCKET_TIMEOUT), so they cannot apply here.
CONNECTION_SETTINGS = (
    "CACHE_REDIS_URL",
    "CACHE_REDIS_HOST",
    "CACHE_REDIS_PORT",
    "CACHE_REDIS_DB",
    "CACHE_REDIS_PASSWORD",
    "CACHE_REDIS_SENTINELS",
    "CACHE_REDIS_SENTINEL_MASTER",
    "CACHE_REDIS_SENTINEL_PASSWORD",
    "CACHE_REDIS_CLUSTER",
    "CACHE_OPTIONS",
    "CACHE_ARGS",
)


def refused_settings(config: dict[str, Any]) -> None:
    """Refuse the settings this backend cannot honour, wherever they were given (the app's
    config or ``Cache(config=...)``, which Flask-Caching merges before building the backend)."""
    if config.get("CACHE_SERIALIZER") is not None:
        raise RuntimeError(
            "CACHE_SERIALIZER: the taskapp cache's Flask-Caching backend stores JSON only "
            "(a value read back from Redis must never run code); remove the setting, or "
            "choose another CACHE_TYPE"
        )
    given = [name for name in CONNECTION_SETTINGS if config.get(name)]
    if given:
        raise RuntimeError(
            f"{', '.join(given)}: not used by the taskapp cache's Flask-Caching backend, "
            "which shares the cache's Redis connection; set REDIS_URL (and "
            "REDIS_SOCKET_TIMEOUT) instead, or choose another CACHE_TYPE"
        )


def round_trips(value: Any) -> bool:
    """True when ``json.loads(json.dumps(value))`` gives back ``value`` exactly, types included."""
    try:
        return _round_trips(value)
    except RecursionError:
        return False


def _round_trips(value: Any) -> bool:
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_round_trips(item) for item in value)
    if kind is dict:
        return all(type(k) is str and _round_trips(v) for k, v in value.items())
    return False  # tuples, bytes, Responses, exceptions, dict subclasses, ...


def storable(value: Any) -> bool:
    """True when the backend stores ``value``: it round-trips through JSON, or is a ``Markup``
    (a template fragment, given back as ``Markup``)."""
    return type(value) is Markup or round_trips(value)


#: Leads a stored ``Markup``, whose text follows as a JSON string. No JSON text (nor an int's
#: digits) begins with it, so each comes back as the type it was stored as: a ``str`` as text a
#: template escapes, a fragment as markup a template does not escape a second time.
MARKUP_TAG = b"markup:"


class JSONSerializer:
    """JSON for values; plain ASCII for ints, so Redis INCRBY keeps working on counters; a
    ``Markup`` as ``MARKUP_TAG`` and its text as a JSON string.

    It stands in for cachelib's serializer (the same two methods), whose default pickles.
    """

    def dumps(self, value: Any, protocol: int | None = None) -> bytes:
        if type(value) is int:
            return str(value).encode("ascii")
        if type(value) is Markup:
            return MARKUP_TAG + json.dumps(str(value)).encode()
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, value: bytes | None) -> Any:
        if value is None:
            return None
        try:
            if value.startswith(MARKUP_TAG):
                text = json.loads(value[len(MARKUP_TAG) :])
                return Markup(text) if type(text) is str else None
            return json.loads(value)
        except ValueError:
            return None  # not ours (an old pickled entry, say): a miss, never an unpickle


def _key_count(args: tuple[Any, ...]) -> int:
    """How many keys an MGET was given (``mget([k1, k2])`` or ``mget(k1, k2)``)."""
    if args and isinstance(args[0], (list, tuple)):
        return len(args[0]) + len(args) - 1
    return len(args)


class _GuardedClient:
    """The extension's client of one app, every command sent through its breaker.

    Bound to the app when Flask-Caching builds the backend (as Flask-Caching's own backend binds
    its client), so it works outside an app context too. A command that fails answers what a
    miss would: None, or a list of Nones for MGET.
    """

    def __init__(self, app: Flask) -> None:
        self._app = app

    @property
    def store(self) -> Store:
        """The app's Redis store (its client, ``run`` through the breaker, the held-back deletes)."""
        return state_of(self._app).store

    def __getattr__(self, name: str) -> Any:
        state = self.store
        command = getattr(state.client, name)
        if name == "pipeline":
            return lambda *args, **kwargs: _GuardedPipeline(state, command(*args, **kwargs))
        if not callable(command):
            return command

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return state.run(lambda: command(*args, **kwargs), op="flask_caching")
            except Unavailable:
                return [None] * _key_count(args) if name == "mget" else None

        return guarded


class _GuardedPipeline:
    """A pipeline whose ``execute`` goes through the breaker; a failure answers one None per
    queued command (what Flask-Caching's ``set_many`` reads as nothing stored)."""

    def __init__(self, state: Any, pipeline: Any) -> None:
        self._state = state
        self._pipeline = pipeline

    def __len__(self) -> int:
        return len(self._pipeline)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._pipeline, name)
        if not callable(attribute):
            return attribute

        def queued(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            return self if result is self._pipeline else result  # chained calls stay guarded

        return queued

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queued = len(self._pipeline)
        try:
            return self._state.run(
                lambda: self._pipeline.execute(raise_on_error), op="flask_caching"
            )
        except Unavailable:
            self._pipeline.reset()
            return [None] * queued


class JSONRedisCache(FlaskCachingRedisCache):
    """Flask-Caching's Redis backend with JSON serialisation and the extension's connection.

    ``set``, ``add`` and ``set_many`` store only values that JSON gives back exactly (see
    ``round_trips``) and ``Markup`` (template fragments); another value is not stored (False),
    so it is never replayed altered.
    Deletes that Redis does not take are held back (see the module's docstring).
    """

    serializer = JSONSerializer()  # type: ignore[assignment]
    _write_client: _GuardedClient

    @classmethod
    def factory(cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]):
        refused_settings(config)
        kwargs.update(
            host=_GuardedClient(app),
            key_prefix=config["CACHE_KEY_PREFIX"] + "fc:",
            default_timeout=config.get("CACHE_DEFAULT_TIMEOUT", 300),
        )
        return cls(*args, **kwargs)

    def set(self, key: str, value: Any, timeout: Any = None) -> Any:
        if not storable(value):
            log.debug("not cached: %s does not round-trip through JSON", type(value).__name__)
            return False
        return super().set(key, value, timeout)

    def add(self, key: str, value: Any, timeout: Any = None) -> Any:
        if not storable(value):
            log.debug("not cached: %s does not round-trip through JSON", type(value).__name__)
            return False
        return super().add(key, value, timeout)

    def set_many(self, mapping: dict[str, Any], timeout: Any = None) -> list[Any]:
        """Store what JSON gives back exactly; what Redis did not take is held back as deletes.

        Flask-Caching's ``delete_memoized(f)`` is a ``set_many`` of ``f``'s new version and
        ignores its result: left as it is, the old version (and every value memoized under it)
        would be answered again once Redis returns. So a key Redis did not take is deleted before
        the cache is read again; a version made while Redis was away is then made anew.
        """
        kept = {k: v for k, v in mapping.items() if storable(v)}
        if not kept:
            return []
        stored = super().set_many(kept, timeout)
        missed = [k for k in kept if k not in stored]
        if missed:
            self._write_client.store.held_back.hold(keys=self._full_keys(missed))
        return stored

    # -- deletes: sent, or held back and replayed before the cache is read again ------------

    def delete(self, key: str) -> bool:
        """True when ``key`` existed, or when its delete is held back (it will not be read)."""
        existed = self._delete(self._full_keys([key]))
        return existed is None or existed > 0

    def delete_many(self, *keys: str) -> list[Any]:
        """All of ``keys``: deleted, or their delete held back (no later read finds them)."""
        if keys:
            self._delete(self._full_keys(keys))
        return list(keys)

    def unlink(self, *keys: str) -> Any:
        """``delete_many`` for Flask-Caching's ``unlink`` (a DEL: the values are small)."""
        return self.delete_many(*keys) if keys else None

    def clear(self) -> bool:
        """Delete every key of this backend; raises when Redis cannot list them (nothing to hold).

        Listed with SCAN, never KEYS (which blocks the server, and which a least-privilege user
        may not run)."""
        store = self._write_client.store
        pattern = escape_glob(self._get_prefix()) + "*"
        try:
            found = store.run(
                lambda: list(store.client.scan_iter(match=pattern, count=1000)), op="flask_caching"
            )
        except Unavailable as exc:
            raise RuntimeError(
                f"Flask-Caching clear: Redis unavailable ({exc}); nothing cleared"
            ) from exc
        if found:
            self._delete([k.decode() if isinstance(k, bytes) else k for k in found])
        return True

    def _full_keys(self, keys: Any) -> list[str]:
        """The Redis keys of Flask-Caching's ``keys`` (under this backend's prefix)."""
        prefix = self._get_prefix()
        return [prefix + key for key in keys]

    def _delete(self, full_keys: list[str]) -> int | None:
        """DEL through the breaker: how many existed, or None when held back.

        Held back like the extension's own deletes (``Store.delete``): while the breaker is open
        every read and write of this process is refused (a miss, nothing stored), and its probe
        sends the deletes before closing it, so no read answers a deleted value and no write
        made after the replay is deleted by it. A delete the server refuses (an ACL without DEL)
        raises: the replay would be refused too, and the breaker stays closed meanwhile.
        """
        store = self._write_client.store
        try:
            return int(store.run(lambda: store.client.delete(*full_keys), op="flask_caching"))
        except CommandError as exc:
            raise RuntimeError(f"Flask-Caching delete refused by Redis ({exc})") from exc
        except Unavailable:
            store.held_back.hold(keys=full_keys)
            return None


def init_flask_caching(app: Flask, flask_cache: Any) -> None:
    """Bind Flask-Caching to the app with this backend unless the app chose another one.

    Settings of Flask-Caching's own Redis connection are refused rather than silently ignored:
    this backend uses the extension's connection.
    """
    app.config.setdefault("CACHE_TYPE", BACKEND)
    flask_cache.init_app(app)  # the backend's factory refuses settings it cannot honour
