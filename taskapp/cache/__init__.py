"""A Redis cache extension for Flask: JSON values, fill locks, tags, an in-process layer.

Nothing in this package knows about tasks; it can be lifted into any Flask app. Names are
imported on first use, so ``taskapp.cache.settings`` can be read (by a gunicorn master, say)
without loading Flask-Caching, redis-py or prometheus-client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NO_VALUE": "taskapp.cache.entry",
    "Entry": "taskapp.cache.entry",
    "RedisCache": "taskapp.cache.extension",
    "Unavailable": "taskapp.cache.client",
    "CacheSettings": "taskapp.cache.settings",
    "RedisRefused": "taskapp.cache.preflight",
    "check_server": "taskapp.cache.preflight",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'taskapp.cache' has no attribute {name!r}") from None
    return getattr(import_module(module), name)
