"""Sliding-window rate limits in Redis sorted sets: per user, and per email and address on login."""

from __future__ import annotations

import math
import uuid

from flask import Flask, current_app, request
from werkzeug.exceptions import TooManyRequests

from taskapp import keys
from taskapp.auth.tokens import current_user_id
from taskapp.cache.scripts import SLIDING_WINDOW
from taskapp.extensions import cache

WINDOW_MS = 60_000


class RateLimited(TooManyRequests):
    """A 429 carrying Retry-After and the X-RateLimit-* headers."""

    def __init__(self, limit: int, reset_ms: int) -> None:
        super().__init__("too many requests; retry later")
        self.limit = limit
        self.reset_ms = reset_ms

    def get_headers(self, environ=None, scope=None):
        seconds = str(max(1, math.ceil(self.reset_ms / 1000)))
        return super().get_headers(environ, scope) + [
            ("Retry-After", seconds),
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", seconds),
        ]


def _hit(key: str, limit: int, read_scope: bool = False) -> tuple[bool, int, int]:
    """Count one request in ``key``'s window: (allowed, requests in window, ms to reset).

    When Redis is unavailable the request is allowed: a limit is a protection, not a reason to
    refuse service during an outage. ``read_scope`` also reads the version of the key's scope
    (the user's), so the request's in-process cache reads need no round trip of their own.
    """
    result = cache.run_script(
        SLIDING_WINDOW, [key], [WINDOW_MS, limit, uuid.uuid4().hex], None, read_scope=read_scope
    )
    if result is None:
        return True, 0, WINDOW_MS
    allowed, count, reset = (int(x) for x in result)
    return bool(allowed), count, reset


def limit_login(email: str) -> None:
    """Refuse a login attempt over the limit for its email or its client address (429)."""
    limit = current_app.config["LOGIN_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0:
        return
    for kind, value in (("email", email or ""), ("addr", request.remote_addr or "")):
        allowed, _, reset = _hit(keys.login_limit(kind, value), limit)
        if not allowed:
            raise RateLimited(limit, reset)


def init_app(app: Flask) -> None:
    """Limit each authenticated user's requests; add the X-RateLimit-* headers to answers."""

    @app.before_request
    def limit_user() -> None:
        limit = app.config["RATE_LIMIT_PER_MINUTE"]
        if request.method == "OPTIONS":
            return  # a CORS preflight: never limited, it runs no view and reads nothing
        user_id = current_user_id() if limit > 0 else None
        if user_id is None:
            return
        allowed, count, reset = _hit(keys.rate_limit(user_id), limit, read_scope=True)
        if not allowed:
            raise RateLimited(limit, reset)
        request.environ["taskapp.ratelimit"] = (limit, max(0, limit - count), reset)

    @app.after_request
    def headers(response):
        state = request.environ.get("taskapp.ratelimit")
        if state is not None:
            limit, remaining, reset = state
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(remaining)
            response.headers["X-RateLimit-Reset"] = str(max(1, math.ceil(reset / 1000)))
        return response
