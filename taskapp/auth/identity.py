"""Who a request is: the user of its valid access token (``tokens``) that was not revoked
(``revocation``), and the decorator that requires one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import g, request
from werkzeug.exceptions import Unauthorized

from taskapp.auth import revocation
from taskapp.auth.tokens import current_access
from taskapp.cache import RequestState
from taskapp.errors import TokenRefused
from taskapp.openapi import annotate

_UNSET = object()  # g memo sentinel: None is a valid memoised answer ("no valid token")


def current_user_id() -> str | None:
    """The user id of the request's valid, unrevoked bearer token, else None; memoised per
    request. The revocation check is the answer of the request's admission when it made one."""
    memo = g.get("_taskapp_user_id", _UNSET)
    if memo is _UNSET:
        access = current_access()
        admitted = access is not None and revocation.admitted(
            RequestState.of(request.environ), access
        )
        memo = g._taskapp_user_id = access.user_id if admitted and access else None
    return memo  # type: ignore[return-value]


def bearer_presented() -> bool:
    """True when the request carries a bearer token, valid or not."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless the request carries a valid token; the view finds the id in ``g.user_id``.

    A presented bearer token that is refused (expired, revoked, malformed) is told so
    (``error="invalid_token"``, RFC 6750 section 3); a request without one only learns the scheme.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user_id = current_user_id()
        if user_id is None:
            if bearer_presented():
                raise TokenRefused("the bearer token is expired, revoked or not valid")
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        g.user_id = user_id
        return view(*args, **kwargs)

    annotate(wrapper, auth=True)
    return wrapper
