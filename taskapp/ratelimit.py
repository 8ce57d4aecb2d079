"""Sliding-window rate limits in Redis sorted sets: per user, per email and address on login,
per address on registration, per address for requests without a valid token."""

from __future__ import annotations

import math
import os
from typing import Any

from flask import Flask, current_app, request
from werkzeug.exceptions import TooManyRequests

from taskapp import keys
from taskapp.auth import revocation
from taskapp.auth.tokens import Access, current_access, current_user_id
from taskapp.extensions import cache

WINDOW_MS = 60_000

# SLIDING_WINDOW: count a request in a sliding window (a sorted set scored by time) and say
# whether it is allowed. Members are unique (time plus a caller-made nonce), so two requests in
# the same millisecond both count.
# KEYS[1] window
# ARGV[1] window length in ms, ARGV[2] limit, ARGV[3] nonce
# returns {allowed (1/0), requests in the window, ms until the oldest request leaves the window}
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if #oldest == 2 then reset = tonumber(oldest[2]) + window - now end
return {allowed, count, reset}
"""


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
    refuse service during an outage. ``read_scope`` has the cache read the version of the key's
    scope (the user's) in the same round trip, so the request's in-process cache reads need no
    round trip of their own.
    """
    result = cache.run_script(*window_script(key, limit), None, read_scope=read_scope)
    return window_outcome(result)


def window_script(key: str, limit: int) -> tuple[str, list[str], list[Any]]:
    """The script, keys and arguments that count one request in ``key``'s window."""
    return SLIDING_WINDOW, [key], [WINDOW_MS, limit, os.urandom(8).hex()]


def window_outcome(result: list[Any] | None) -> tuple[bool, int, int]:
    """SLIDING_WINDOW's result as (allowed, requests in window, ms to reset); allowed when Redis
    was unavailable (None)."""
    if result is None:
        return True, 0, WINDOW_MS
    allowed, count, reset = (int(x) for x in result[:3])
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


def limit_register() -> None:
    """Refuse a registration over the limit for its client address (429)."""
    limit = current_app.config["REGISTER_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0:
        return
    allowed, _, reset = _hit(keys.register_limit(request.remote_addr or ""), limit)
    if not allowed:
        raise RateLimited(limit, reset)


#: The environ key of a request's counted user request: (allowed, requests in window, ms to
#: reset). Set by whichever path counted it first (the response cache's WSGI fast path or
#: ``limit_user``), so a request handed from one to the other is counted once.
COUNTED = "taskapp.ratelimit.counted"


def count_user_request(
    environ: dict[str, Any], access: Access, limit: int
) -> tuple[bool, int, int] | None:
    """Count a request of ``access``'s user once (checking the token's revocation and reading
    the user's scope version in the same round trip): (allowed, requests in window, ms to
    reset), remembered in ``environ``; None, not counted, when the token was revoked."""
    counted = environ.get(COUNTED)
    if counted is None:
        if environ.get(revocation.VERDICT) in (revocation.REVOKED, revocation.UNKNOWN):
            return None  # the fast path's call refused the token: nothing was counted
        script = revocation.guard(access, window_script(keys.rate_limit(access.user_id), limit))
        result = cache.run_script(*script, None, read_scope=True)
        if revocation.note(environ, result) not in (revocation.OK, None):
            return None  # the token's own check decides (login_required answers 401)
        counted = environ[COUNTED] = window_outcome(result)
    return counted  # type: ignore[no-any-return]


def count_with(environ: dict[str, Any], result: list[Any] | None) -> tuple[bool, int, int]:
    """Remember a user's request counted by ``window_script(keys.rate_limit(user), limit)`` run
    in another call (with a cache lookup, say): (allowed, requests in window, ms to reset)."""
    counted = environ[COUNTED] = window_outcome(result)
    return counted


def header_items(limit: int, count: int, reset_ms: int) -> list[tuple[str, str]]:
    """The X-RateLimit-* headers of an allowed request (both paths add exactly these)."""
    return [
        ("X-RateLimit-Limit", str(limit)),
        ("X-RateLimit-Remaining", str(max(0, limit - count))),
        ("X-RateLimit-Reset", str(max(1, math.ceil(reset_ms / 1000)))),
    ]


#: Endpoints never limited: probes and scrapes of the operators' own tools.
UNLIMITED = frozenset({"service.healthz", "service.readyz", "service.metrics"})


def init_app(app: Flask) -> None:
    """Limit each authenticated user's requests and, per client address, requests without a
    valid token; add the X-RateLimit-* headers to answers."""

    @app.before_request
    def limit_user() -> None:
        limit = app.config["RATE_LIMIT_PER_MINUTE"]
        if request.method == "OPTIONS":
            return  # a CORS preflight: never limited, it runs no view and reads nothing
        access = current_access() if limit > 0 else None
        if access is None:
            return
        counted = count_user_request(request.environ, access, limit)
        if counted is not None and not counted[0]:
            raise RateLimited(limit, counted[2])

    @app.before_request
    def limit_anonymous() -> None:
        limit = app.config["ANON_RATE_LIMIT_PER_MINUTE"]
        if limit <= 0 or request.method == "OPTIONS" or request.endpoint in UNLIMITED:
            return
        if current_user_id() is not None:
            return
        allowed, _, reset = _hit(keys.anon_limit(request.remote_addr or ""), limit)
        if not allowed:
            raise RateLimited(limit, reset)

    @app.after_request
    def headers(response):
        counted = request.environ.get(COUNTED)
        if counted is not None and counted[0]:  # a refused request's 429 carries its own
            _, count, reset = counted
            for name, value in header_items(app.config["RATE_LIMIT_PER_MINUTE"], count, reset):
                response.headers[name] = value
        return response
