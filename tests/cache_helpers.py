"""Helpers for the cache tests: a bare Flask app with the extension (nothing task-specific)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from flask import Flask

from taskapp.cache import RedisCache


def bare_app(redis_url: str, prefix: str, **config) -> tuple[Flask, RedisCache]:
    """A plain Flask app with only the cache extension: proof that it lifts out of taskapp."""
    app = Flask("cache-test")
    app.config.update(REDIS_URL=redis_url, CACHE_KEY_PREFIX=prefix, **config)
    ext = RedisCache()
    ext.init_app(app)
    return app, ext


@contextmanager
def running(app: Flask, ext: RedisCache):
    """An app context whose connections and listener are closed on exit."""
    with app.app_context():
        try:
            yield ext
        finally:
            ext.close()


def wait_until(predicate, timeout: float = 3.0, interval: float = 0.002) -> float:
    """Seconds until ``predicate()`` is true; raises AssertionError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
