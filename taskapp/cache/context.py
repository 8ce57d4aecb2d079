"""What the cache remembers for the length of one request (Flask's ``g``)."""

from __future__ import annotations

from flask import g, has_app_context, has_request_context


def mark_source_read() -> None:
    """Note that this request read the source of truth (its response is an ``X-Cache: MISS``)."""
    if has_app_context():
        g._cache_source_read = True


def source_was_read() -> bool:
    """True when this request read the source of truth."""
    return bool(g.get("_cache_source_read"))


def known_scope(scope_key: str) -> bytes | None:
    """The version of a scope this request already learned from Redis, or None."""
    if not has_request_context():
        return None  # outside a request every read asks Redis: nothing bounds how long it runs
    known = g.get("_cache_scopes")
    return known.get(scope_key) if known is not None else None


def note_scope(scope_key: str, raw: bytes | None) -> bytes:
    """Remember a scope version Redis returned, for the rest of this request; the version."""
    version = raw if raw is not None else b"0"
    if has_request_context():
        known = g.get("_cache_scopes")
        if known is None:
            known = g._cache_scopes = {}
        known[scope_key] = version
    return version
