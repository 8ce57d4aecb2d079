"""Flask-Caching on the same Redis: its CACHE_* settings and decorators, JSON instead of pickle.

``RedisCache.cached`` and ``RedisCache.memoize`` are Flask-Caching's own decorators. Their backend
here stores JSON (a value read back from Redis can never run code), shares this extension's
connection and key prefix, and goes through its circuit breaker, so a hung Redis costs a
decorated view nothing but the cache.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from flask_caching.backends.rediscache import RedisCache as FlaskCachingRedisCache

from taskapp.cache.client import Unavailable

BACKEND = "taskapp.cache.flask_caching.JSONRedisCache"


class JSONSerializer:
    """JSON for values; plain ASCII for ints, so Redis INCRBY keeps working on counters.

    It stands in for cachelib's serializer (the same two methods), whose default pickles.
    """

    def dumps(self, value: Any, protocol: int | None = None) -> bytes:
        if type(value) is int:
            return str(value).encode("ascii")
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, value: bytes | None) -> Any:
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None  # not ours (an old pickled entry, say): a miss, never an unpickle


class _GuardedClient:
    """The extension's client with every command sent through its breaker (failures: None)."""

    def __getattr__(self, name: str) -> Any:
        from taskapp.cache.extension import RedisCache

        store = RedisCache._state().store
        command = getattr(store.client, name)
        if name == "pipeline" or not callable(command):
            return command

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return store.run(lambda: command(*args, **kwargs))
            except Unavailable:
                return None

        return guarded


class JSONRedisCache(FlaskCachingRedisCache):
    """Flask-Caching's Redis backend with JSON serialisation and the extension's connection."""

    serializer = JSONSerializer()  # type: ignore[assignment]

    @classmethod
    def factory(cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]):
        kwargs.update(
            host=_GuardedClient(),
            key_prefix=config["CACHE_KEY_PREFIX"] + "fc:",
            default_timeout=config.get("CACHE_DEFAULT_TIMEOUT", 300),
        )
        return cls(*args, **kwargs)


def init_flask_caching(app: Flask, flask_cache: Any) -> None:
    """Bind Flask-Caching to the app with this backend unless the app chose another one."""
    app.config.setdefault("CACHE_TYPE", BACKEND)
    flask_cache.init_app(app)
