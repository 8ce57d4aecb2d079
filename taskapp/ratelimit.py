"""Rate limits per user, per email and address on login, per address on registration, per
address for requests without a valid token: windows of the last 61 whole seconds in Redis (the
cache's ``Admission.limit``: one small hash per window, however many requests it counts). Every
response a limit counted carries the IETF RateLimit and RateLimit-Policy fields of each limit."""

from __future__ import annotations

import math

from flask import Response, current_app, g, request
from werkzeug.exceptions import TooManyRequests

from taskapp import keys
from taskapp.auth import revocation
from taskapp.auth.identity import current_user_id
from taskapp.auth.tokens import Access, current_access
from taskapp.cache import NOT_ASKED, Admission, Answer, Limited, RequestState
from taskapp.extensions import cache

WINDOW_MS = 61_000

#: A count while Redis is unavailable: allowed (a limit is a protection, not a reason to refuse
#: service during an outage).
UNCOUNTED = Limited(True, 0, WINDOW_MS)


class RateLimited(TooManyRequests):
    """A 429 carrying Retry-After: the seconds until a request is allowed again (the RateLimit
    fields of every policy that counted the request are added in ``after_request``)."""

    def __init__(self, limit: int, reset_ms: int) -> None:
        super().__init__("too many requests; retry after the seconds in Retry-After")
        self.limit = limit
        self.reset_ms = reset_ms

    def get_headers(self, environ=None, scope=None):
        return super().get_headers(environ, scope) + [("Retry-After", str(seconds(self.reset_ms)))]


def _hit(key: str, limit: int, policy: str) -> Limited:
    """Count one request in ``key``'s window (allowed when Redis is unavailable); the count goes
    into the response's RateLimit fields as ``policy``."""
    window = _outcome(cache.admit(Admission().limit(key, limit)))
    g.setdefault("_rate_limits", []).append((policy, limit, window.requests, window.reset_ms))
    return window


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
        window = _hit(keys.login_limit(kind, value), limit, LOGIN_POLICIES[kind])
        if not window.allowed:
            raise RateLimited(limit, window.reset_ms)


def limit_register() -> None:
    """Refuse a registration over the limit for its client address (429)."""
    limit = current_app.config["REGISTER_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0:
        return
    window = _hit(keys.register_limit(request.remote_addr or ""), limit, "register")
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
    return checked.scope_limit(limit)  # kept with the user's scope version: a hit reads both


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


#: The window of every limit's policy, as the settings state it ("per minute"): counted over the
#: last 61 whole seconds (WINDOW_MS), a request may be held back up to a second longer.
POLICY_WINDOW_S = 60
#: The RateLimit fields' names of the limits (the quota policies a response reports).
USER_POLICY = "user"
ANONYMOUS_POLICY = "anonymous"
LOGIN_POLICIES = {"email": "login-email", "addr": "login-address"}


def seconds(reset_ms: int) -> int:
    """Whole seconds until a request is allowed again (at least 1)."""
    return max(1, math.ceil(reset_ms / 1000))


def header_items(
    limit: int, count: int, reset_ms: int, policy: str = USER_POLICY
) -> list[tuple[str, str]]:
    """The IETF RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers) of
    one count: the quota in the window, and what is left of it and the seconds until more is
    made available. Both paths add exactly these."""
    return [
        ("RateLimit-Policy", f'"{policy}";q={limit};w={POLICY_WINDOW_S}'),
        ("RateLimit", f'"{policy}";r={max(0, limit - count)};t={seconds(reset_ms)}'),
    ]


def fields(counts: list[tuple[str, int, int, int]]) -> list[tuple[str, str]]:
    """The RateLimit fields of every (policy, limit, count, reset_ms) that counted a request,
    each field one list (a login is counted per address, per email and as anonymous)."""
    joined: dict[str, list[str]] = {}
    for policy, limit, count, reset_ms in counts:
        for name, value in header_items(limit, count, reset_ms, policy):
            joined.setdefault(name, []).append(value)
    return [(name, ", ".join(values)) for name, values in joined.items()]


#: Endpoints never limited: probes and scrapes of the operators' own tools, and the API's
#: documentation (one page view of /docs is several requests: the page, its assets, the document).
UNLIMITED = frozenset(
    {
        "service.healthz",
        "service.readyz",
        "service.metrics",
        "service.openapi_document",
        "docs.docs",
        "docs.static",
    }
)


def limit_user() -> None:
    """``before_request``: count an authenticated user's request in its admission (the token's
    revocation check, then the user's limit, in one Redis call); 429 past the limit."""
    limit = current_app.config["RATE_LIMIT_PER_MINUTE"]
    if request.method == "OPTIONS" or request.endpoint in UNLIMITED:
        return  # a CORS preflight: never limited, it runs no view and reads nothing
    access = current_access() if limit > 0 else None
    if access is None:
        return
    outcome = count_user_request(RequestState.of(request.environ), access, limit)
    if outcome is not None and not outcome[0]:
        raise RateLimited(limit, outcome[2])


def limit_anonymous() -> None:
    """``before_request``: count a request without a valid token per client address; 429 past
    ANON_RATE_LIMIT_PER_MINUTE."""
    limit = current_app.config["ANON_RATE_LIMIT_PER_MINUTE"]
    if limit <= 0 or request.method == "OPTIONS" or request.endpoint in UNLIMITED:
        return
    if current_user_id() is not None:
        return
    window = _hit(keys.anon_limit(request.remote_addr or ""), limit, ANONYMOUS_POLICY)
    if not window.allowed:
        raise RateLimited(limit, window.reset_ms)


def add_fields(response: Response) -> Response:
    """``after_request``: the RateLimit fields of every limit that counted the request."""
    counts = list(g.get("_rate_limits", ()))
    outcome = counted(RequestState.of(request.environ))
    if outcome is not None:  # the user's count, allowed or refused (then 0 remain)
        counts.insert(0, (USER_POLICY, current_app.config["RATE_LIMIT_PER_MINUTE"], *outcome[1:]))
    for name, value in fields(counts):
        response.headers[name] = value
    return response
