"""Access and refresh tokens: HS256 JWTs verified by signature and expiry without a database read
(whether one was revoked is ``taskapp.auth.revocation``'s, who a request is ``identity``'s)."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import jwt
from bson import ObjectId
from bson.errors import InvalidId
from cachetools import LRUCache
from flask import current_app, g, request

ALGORITHM = "HS256"
#: Seconds that what guards a token outlives the token's ``exp`` by this host's clock (a refresh
#: claim, a session in MongoDB): another host whose clock runs behind still accepts the token
#: until its own clock reaches ``exp``.
CLOCK_MARGIN_S = 60
_UNSET = object()  # g memo sentinel: None is a valid memoised answer ("no valid token")


class Access(NamedTuple):
    """What a valid access token says: whose it is, its login (session) and token generation."""

    user_id: str
    session_id: str
    generation: int
    expires_at: int


class Refresh(NamedTuple):
    """What a validly signed, unexpired refresh token says."""

    user_id: str
    session_id: str
    refresh_id: str
    generation: int
    expires_at: int


def issue(user_id: str, session_id: str, generation: int) -> tuple[str, int]:
    """A signed access token of one login (session) and its lifetime in seconds."""
    ttl: int = current_app.config["ACCESS_TOKEN_TTL"]
    now = int(time.time())
    claims = {
        "sub": user_id,
        "sid": session_id,
        "gen": generation,
        "typ": "access",
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, current_app.config["SECRET_KEY"], algorithm=ALGORITHM), ttl


def issue_refresh(user_id: str, session_id: str, refresh_id: str, generation: int) -> str:
    """A signed refresh token of one login; ``refresh_id`` (its ``jti``) makes it single use."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "sid": session_id,
        "jti": refresh_id,
        "gen": generation,
        "typ": "refresh",
        "iat": now,
        "exp": now + current_app.config["REFRESH_TOKEN_TTL"],
    }
    return jwt.encode(claims, current_app.config["SECRET_KEY"], algorithm=ALGORITHM)


def refresh_of(token: str) -> Refresh | None:
    """The claims of a refresh token signed by this app and not expired, else None."""
    try:
        claims = jwt.decode(
            token,
            current_app.config["SECRET_KEY"],
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "sid", "jti", "gen", "typ"]},
        )
        if claims["typ"] != "refresh":  # an access token is no refresh token
            return None
        return Refresh(
            str(ObjectId(claims["sub"])),
            str(ObjectId(claims["sid"])),
            str(claims["jti"]),
            int(claims["gen"]),
            int(claims["exp"]),
        )
    except (jwt.InvalidTokenError, InvalidId, TypeError, ValueError):
        return None


def current_access() -> Access | None:
    """The request's validly signed, unexpired access token (not yet checked for revocation)."""
    memo = g.get("_taskapp_access", _UNSET)
    if memo is _UNSET:
        memo = g._taskapp_access = access_of(
            request.headers.get("Authorization", ""), current_app.config["SECRET_KEY"]
        )
    return memo  # type: ignore[return-value]


def access_of(authorization: str, secret: str) -> Access | None:
    """The claims of a valid bearer token in an ``Authorization`` header value, else None.

    Signature and expiry only. Shared by the Flask path and the response cache's WSGI fast
    path, which has no request context: both see the same header and the same key, so both
    decide alike; both then check revocation in the Redis call they make anyway.
    """
    return _verify(_bearer_token(authorization), secret)


def _bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _verify(token: str | None, secret: str) -> Access | None:
    """The claims of a valid token, else None: signature once per token, ``exp`` every time."""
    if token is None:
        return None
    verified = _signed_claims(token, secret)
    if verified is None:
        return None
    return verified if time.time() < verified.expires_at else None  # PyJWT's rule: expired at exp


#: Tokens whose signature and claims checked out, by (secret, exact token): the check is a pure
#: function of the two, so it runs once per token; roles are never part of it (read per request),
#: nor revocation (checked per request).
_VERIFIED: LRUCache[tuple[str, str], Access] = LRUCache(maxsize=10_000)
_VERIFIED_LOCK = threading.Lock()


def _signed_claims(token: str, secret: str) -> Access | None:
    """The claims of an access token signed with ``secret``, else None (not memoised: a token
    refused now, say one issued a moment in the future, may pass later)."""
    try:
        with _VERIFIED_LOCK:
            return _VERIFIED[secret, token]  # one lookup: ``get`` asks ``in`` first
    except KeyError:
        pass
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: "none" and algorithm-confusion tokens fail here
            options={"require": ["exp", "iat", "sub", "sid", "gen", "typ"]},
        )
        if claims["typ"] != "access":  # a refresh token is no access token
            return None
        # Canonical form: the id becomes part of cache keys, so one user has one spelling.
        verified = Access(
            str(ObjectId(claims["sub"])),
            str(ObjectId(claims["sid"])),
            int(claims["gen"]),
            int(claims["exp"]),
        )
    except (jwt.InvalidTokenError, InvalidId, TypeError, ValueError):
        return None
    with _VERIFIED_LOCK:
        _VERIFIED[(secret, token)] = verified
    return verified
