"""A Redis cache extension for Flask: JSON values, fill locks, tags, an in-process layer.

Nothing in this package knows about tasks; it can be lifted into any Flask app, which uses it
through the names below only (``from taskapp.cache import X``), never a module of it. Names are
imported on first use, so ``taskapp.cache.SETTINGS`` can be read (by a gunicorn master, say)
without loading Flask-Caching, redis-py or prometheus-client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    # The extension.
    "RedisCache": "taskapp.cache.extension",  # the extension object: init_app and the cache's API
    "NO_VALUE": "taskapp.cache.entry",  # what a read answers on a miss (a cached None is a hit)
    "Entry": "taskapp.cache.entry",  # a cached value with its expiry, tags and meta
    "Lease": "taskapp.cache.region",  # what a lookup's miss gives to store its value under
    "Ttl": "taskapp.cache.region",  # seconds, or a function of the value giving them, or None
    "Unavailable": "taskapp.cache.client",  # Redis cannot be used now: answer from the source
    # Settings and the start-up check.
    "SETTINGS": "taskapp.cache.settings",  # the table of the cache's settings and defaults
    "CacheSettings": "taskapp.cache.settings",  # the checked settings of one app's cache
    "boolean": "taskapp.cache.settings",  # a setting's conversion: 1/0, true/false, yes/no, on/off
    "choice": "taskapp.cache.settings",  # a setting's conversion: one of given words
    "int_at_least": "taskapp.cache.settings",  # a setting's conversion: a whole number >= n
    "seconds": "taskapp.cache.settings",  # a setting's conversion: a positive number of seconds
    "check_server": "taskapp.cache.preflight",  # check the configured Redis before serving
    "RedisRefused": "taskapp.cache.preflight",  # that Redis refuses what the cache needs
    # A request's state and its admission (the checks it passes before it reads).
    "RequestState": "taskapp.cache.context",  # what one request learned on its way, in its environ
    "NOT_ASKED": "taskapp.cache.context",  # RequestState.admission before the admission call
    "Admission": "taskapp.cache.admission",  # the checks a request passes before it reads
    "Answer": "taskapp.cache.admission",  # an admission's decoded answer
    "Limited": "taskapp.cache.admission",  # a sliding-window limit's count of one request
    "Verdict": "taskapp.cache.admission",  # a revocation check's verdict: OK, REVOKED, UNKNOWN
    # The HTTP response cache.
    "ResponseCache": "taskapp.cache.response_cache",  # per-user JSON answers of marked views
    "Readers": "taskapp.cache.response_cache",  # who may read a view's cached answers
    "etag": "taskapp.cache.response_cache",  # the ETag of a body for one user
    # Write-behind.
    "WriteBehindQueue": "taskapp.cache.writebehind",  # changes answered now, applied by flushers
    "Flusher": "taskapp.cache.writebehind",  # a thread applying the queue's changes
    "ObjectDeleted": "taskapp.cache.writebehind",  # a change of a deleted object is refused
    "SourceUnavailable": "taskapp.cache.writebehind",  # an apply's source is down: hold everything
    # Tools: traces, commands and messages.
    "enable_tracing": "taskapp.cache.tracing",  # trace the cache's Redis calls and decisions
    "disable_tracing": "taskapp.cache.tracing",  # stop tracing the cache
    "redis_command": "taskapp.cache.cli",  # a CLI command whose Redis failure is one line
    "shared_redis": "taskapp.cache.cli",  # a CLI command refused on the embedded memory:// Redis
    "redacted": "taskapp.cache.client",  # a connection URL without its user and password
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'taskapp.cache' has no attribute {name!r}") from None
    return getattr(import_module(module), name)
