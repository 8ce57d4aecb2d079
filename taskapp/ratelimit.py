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
from taskapp.auth.identity import current_user_id
from taskapp.auth.tokens import Access, current_access
from taskapp.cache import scripts
from taskapp.cache.context import NOT_ASKED, RequestState
from taskapp.cache.scripts import Call
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


def _hit(key: str, limit: int) -> tuple[bool, int, int]:
    """Count one request in ``key``'s window: (allowed, requests in window, ms to reset).

    When Redis is unavailable the request is allowed: a limit is a protection, not a reason to
    refuse service during an outage.
    """
    return _outcome(cache.run_script(*window(key, limit), None))


def window(key: str, limit: int) -> Call:
    """The script, keys and arguments that count one request in ``key``'s window."""
    return SLIDING_WINDOW, [key], [WINDOW_MS, limit, os.urandom(8).hex()]


def _outcome(answer: list[Any] | None) -> tuple[bool, int, int]:
    """SLIDING_WINDOW's answer as (allowed, requests in window, ms to reset); allowed when Redis
    was unavailable (None)."""
    if answer is None:
        return True, 0, WINDOW_MS
    allowed, count, reset = (int(x) for x in answer[:3])
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


def admission(access: Access, limit: int) -> Call:
    """What a request of ``access`` runs in Redis before anything else: the revocation check,
    then (when ``limit`` is above 0) the user's rate limit, in one call that stops at the first
    refusal (``scripts.chain``); its answer is read by ``revocation.verdict_of`` and
    ``counted``."""
    checked = revocation.check(access)
    if limit <= 0:
        return scripts.chain(checked)
    return scripts.chain(checked, window(keys.rate_limit(access.user_id), limit))


def counted(request: RequestState) -> tuple[bool, int, int] | None:
    """The user's request as its admission counted it: (allowed,
    requests in window, ms to reset); None when it was not counted (no admission yet, a refused
    token, or an admission without the rate limit). Allowed when Redis was unavailable."""
    answer = request.admission
    if answer is NOT_ASKED:
        return None
    if answer is None:
        return _outcome(None)
    return _outcome(answer[2]) if len(answer) > 2 else None


def count_user_request(
    request: RequestState, access: Access, limit: int
) -> tuple[bool, int, int] | None:
    """Count a request of ``access``'s user once, in its admission (the revocation check and the
    rate limit in one call, which also reads the user's scope version for the in-process layer):
    (allowed, requests in window, ms to reset); None, not counted, when the token was refused."""
    if request.admission is NOT_ASKED:
        request.admission = cache.run_script(*admission(access, limit), None, read_scope=True)
    return counted(request)


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
        outcome = count_user_request(RequestState.of(request.environ), access, limit)
        if outcome is not None and not outcome[0]:
            raise RateLimited(limit, outcome[2])

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
        outcome = counted(RequestState.of(request.environ))
        if outcome is not None and outcome[0]:  # a refused request's 429 carries its own
            _, count, reset = outcome
            for name, value in header_items(app.config["RATE_LIMIT_PER_MINUTE"], count, reset):
                response.headers[name] = value
        return response
