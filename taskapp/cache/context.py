"""What the cache remembers for the length of one request.

The scope versions a request learned live in its WSGI environ, so a request that a WSGI layer in
front of Flask began (see ``bind``) and then handed to Flask keeps what that layer learned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from flask import Flask, g, has_app_context, has_request_context, request

#: The environ key of the scope versions this request learned (scope key -> version).
SCOPES = "taskapp.cache.scopes"

#: The environ and the app of a request answered before Flask's dispatch (no Flask context yet).
_bound: ContextVar[tuple[dict[str, Any], Flask] | None] = ContextVar(
    "taskapp_cache_request", default=None
)


@contextmanager
def bind(environ: dict[str, Any], app: Flask) -> Iterator[None]:
    """Keep this request's cache state in ``environ``, and use ``app``'s cache, while no Flask
    context exists (a WSGI layer in front of Flask's dispatch pushes none)."""
    token = _bound.set((environ, app))
    try:
        yield
    finally:
        _bound.reset(token)


def bound_app() -> Flask | None:
    """The app of a request bound by ``bind``, else None (then ``current_app`` is the app)."""
    bound = _bound.get()
    return bound[1] if bound is not None else None


def _environ() -> dict[str, Any] | None:
    if has_request_context():
        return request.environ
    bound = _bound.get()
    return bound[0] if bound is not None else None


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


def note_scope(scope_key: str, version: bytes) -> bytes:
    """Remember a scope version Redis returned, for the rest of this request; the version."""
    environ = _environ()
    if environ is not None:
        known = environ.get(SCOPES)
        if known is None:
            known = environ[SCOPES] = {}
        known[scope_key] = version
    return version


def forget_scopes() -> None:
    """Forget the scope versions this request learned (it changed something: the next memory
    read asks Redis again)."""
    environ = _environ()
    if environ is not None:
        environ.pop(SCOPES, None)
