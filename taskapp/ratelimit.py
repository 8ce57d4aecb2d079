"""Rate limits per user, per email and address on login, per address on registration, per
address for requests without a valid token: windows of the last 61 whole seconds in Redis (the
cache's ``Admission.limit``: one small hash per window, however many requests it counts)."""

from __future__ import annotations

import math

from flask import Flask, current_app, request
from werkzeug.exceptions import TooManyRequests

from taskapp import keys
from taskapp.auth import revocation
from taskapp.auth.identity import current_user_id
from taskapp.auth.tokens import Access, current_access
from taskapp.cache.admission import Admission, Answer, Limited
from taskapp.cache.context import NOT_ASKED, RequestState
from taskapp.extensions import cache

WINDOW_MS = 61_000

#: A count while Redis is unavailable: allowed (a limit is a protection, not a reason to refuse
#: service during an outage).
UNCOUNTED = Limited(True, 0, WINDOW_MS)


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


def _hit(key: str, limit: int) -> Limited:
    """Count one request in ``key``'s window (allowed when Redis is unavailable)."""
    return _outcome(cache.admit(Admission().limit(key, limit)))


def _outcome(answer: Answer | None) -> Limited:
    """A limit's count in an admission's answer; allowed when Redis was unavailable (None)."""
    if answer is None or answer.limited is None:
        return UNCOUNTED
    return answer.limited


def limit_login(email: str) -> None:
    """Refuse a login attempt over the limit for its email or its client address (429)."""
    limit = current_app.config["LOGIN_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0:
        return
    for kind, value in (("email", email or ""), ("addr", request.remote_addr or "")):
        window = _hit(keys.login_limit(kind, value), limit)
        if not window.allowed:
            raise RateLimited(limit, window.reset_ms)


def limit_register() -> None:
    """Refuse a registration over the limit for its client address (429)."""
    limit = current_app.config["REGISTER_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0:
        return
    window = _hit(keys.register_limit(request.remote_addr or ""), limit)
    if not window.allowed:
        raise RateLimited(limit, window.reset_ms)


def admission(access: Access, limit: int) -> Admission:
    """What a request of ``access`` checks in Redis before anything else: the revocation check,
    then (when ``limit`` is above 0) the user's rate limit, in the one call the request makes,
    which stops at the first refusal; its answer is read by ``revocation.verdict_of`` and
    ``counted``."""
    checked = revocation.check(access)
    if limit <= 0:
        return checked
    return checked.limit(keys.rate_limit(access.user_id), limit)


def counted(request: RequestState) -> Limited | None:
    """The user's request as its admission counted it; None when it was not counted (no
    admission yet, a refused token, or an admission without the rate limit). Allowed when Redis
    was unavailable."""
    answer = request.admission
    if answer is NOT_ASKED:
        return None
    if answer is None:
        return UNCOUNTED
    return answer.limited


def count_user_request(request: RequestState, access: Access, limit: int) -> Limited | None:
    """Count a request of ``access``'s user once, in its admission (the revocation check and the
    rate limit in one call, which also reads the user's scope version for the in-process layer);
    None, not counted, when the token was refused."""
    if request.admission is NOT_ASKED:
        request.admission = cache.admit(
            admission(access, limit), scope_of=keys.revocation(access.user_id)
        )
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
        window = _hit(keys.anon_limit(request.remote_addr or ""), limit)
        if not window.allowed:
            raise RateLimited(limit, window.reset_ms)

    @app.after_request
    def headers(response):
        outcome = counted(RequestState.of(request.environ))
        if outcome is not None and outcome[0]:  # a refused request's 429 carries its own
            _, count, reset = outcome
            for name, value in header_items(app.config["RATE_LIMIT_PER_MINUTE"], count, reset):
                response.headers[name] = value
        return response
