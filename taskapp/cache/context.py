"""What the cache remembers for the length of one request.

The scope versions a request learned live in its WSGI environ, so a request that a WSGI layer in
front of Flask began (see ``bind``) and then handed to Flask keeps what that layer learned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from flask import g, has_app_context, has_request_context, request

#: The environ key of the scope versions this request learned (scope key -> version).
SCOPES = "taskapp.cache.scopes"

#: The environ of a request being answered before Flask's dispatch (no request context yet).
_bound: ContextVar[dict[str, Any] | None] = ContextVar("taskapp_cache_environ", default=None)


@contextmanager
def bind(environ: dict[str, Any]) -> Iterator[None]:
    """Keep this request's cache state in ``environ`` while no Flask request context exists."""
    token = _bound.set(environ)
    try:
        yield
    finally:
        _bound.reset(token)


def _environ() -> dict[str, Any] | None:
    if has_request_context():
        return request.environ
    return _bound.get()


def mark_source_read() -> None:
    """Note that this request read the source of truth (its response is an ``X-Cache: MISS``)."""
    if has_app_context():
        g._cache_source_read = True


def source_was_read() -> bool:
    """True when this request read the source of truth."""
    return bool(g.get("_cache_source_read"))


def known_scope(scope_key: str) -> bytes | None:
    """The version of a scope this request already learned from Redis, or None."""
    environ = _environ()
    if environ is None:
        return None  # outside a request every read asks Redis: nothing bounds how long it runs
    known = environ.get(SCOPES)
    return known.get(scope_key) if known is not None else None


def note_scope(scope_key: str, raw: bytes | None) -> bytes:
    """Remember a scope version Redis returned, for the rest of this request; the version."""
    version = raw if raw is not None else b"0"
    environ = _environ()
    if environ is not None:
        known = environ.get(SCOPES)
        if known is None:
            known = environ[SCOPES] = {}
        known[scope_key] = version
    return version
