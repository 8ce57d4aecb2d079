"""Access tokens: HS256 JWTs verified by signature and expiry alone, without a database read."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
from bson import ObjectId
from bson.errors import InvalidId
from cachetools import LRUCache
from flask import current_app, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from taskapp.models import User
from taskapp.openapi import annotate

ALGORITHM = "HS256"
_UNSET = object()  # g memo sentinel: None is a valid memoised answer ("no valid token")


def issue(user: User) -> tuple[str, int]:
    """A signed access token for ``user`` and its lifetime in seconds."""
    ttl: int = current_app.config["ACCESS_TOKEN_TTL"]
    now = int(time.time())
    claims = {"sub": str(user.id), "iat": now, "exp": now + ttl}
    return jwt.encode(claims, current_app.config["SECRET_KEY"], algorithm=ALGORITHM), ttl


def current_user_id() -> str | None:
    """The user id of the request's valid bearer token, else None; memoised per request."""
    memo = g.get("_taskapp_user_id", _UNSET)
    if memo is _UNSET:
        memo = g._taskapp_user_id = user_id_of(
            request.headers.get("Authorization", ""), current_app.config["SECRET_KEY"]
        )
    return memo  # type: ignore[return-value]


def user_id_of(authorization: str, secret: str) -> str | None:
    """The user id of a valid bearer token in an ``Authorization`` header value, else None.

    Shared by the Flask path and the response cache's WSGI fast path, which has no request
    context: both see the same header and the same key, so both decide alike.
    """
    return _verify(_bearer_token(authorization), secret)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless the request carries a valid token; the view finds the id in ``g.user_id``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user_id = current_user_id()
        if user_id is None:
            raise Unauthorized(
                "a valid bearer token is required", www_authenticate=WWWAuthenticate("bearer")
            )
        g.user_id = user_id
        return view(*args, **kwargs)

    annotate(wrapper, auth=True)
    return wrapper


def _bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _verify(token: str | None, secret: str) -> str | None:
    """The user id of a valid token, else None: signature once per token, ``exp`` every time."""
    if token is None:
        return None
    verified = _signed_claims(token, secret)
    if verified is None:
        return None
    user_id, expires_at = verified
    return user_id if time.time() < expires_at else None  # PyJWT's rule: expired at exp


#: Tokens whose signature and claims checked out, by (secret, exact token): the check is a pure
#: function of the two, so it runs once per token; roles are never part of it (read per request).
_VERIFIED: LRUCache[tuple[str, str], tuple[str, int]] = LRUCache(maxsize=10_000)
_VERIFIED_LOCK = threading.Lock()


def _signed_claims(token: str, secret: str) -> tuple[str, int] | None:
    """(canonical user id, exp) of a token signed with ``secret``, else None (not memoised:
    a token refused now, say one issued a moment in the future, may pass later)."""
    with _VERIFIED_LOCK:
        found = _VERIFIED.get((secret, token))
    if found is not None:
        return found
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: "none" and algorithm-confusion tokens fail here
            options={"require": ["exp", "iat", "sub"]},
        )
        # Canonical form: the id becomes part of cache keys, so one user has one spelling.
        verified = (str(ObjectId(claims["sub"])), int(claims["exp"]))
    except (jwt.InvalidTokenError, InvalidId, TypeError, ValueError):
        return None
    with _VERIFIED_LOCK:
        _VERIFIED[(secret, token)] = verified
    return verified
