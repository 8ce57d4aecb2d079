"""Auth routes: registration, login and the caller's account. Responses here are never cached."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from taskapp.auth import service, tokens
from taskapp.auth.schemas import AccountOut, Credentials, Registration, TokenOut, UserOut
from taskapp.auth.tokens import login_required
from taskapp.openapi import response
from taskapp.ratelimit import limit_login, limit_register
from taskapp.validation import body

bp = Blueprint("auth", __name__)


@bp.after_request
def _no_store(resp: Response) -> Response:
    # Tokens and account data must not be kept by browsers or proxies (RFC 6749 section 5.1).
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/register")
@response(UserOut, status=201, errors=(409, 429), descriptions={409: "The email is taken"})
@body(Registration)
def register(body: Registration) -> tuple[dict[str, Any], int]:
    """Create an account."""
    limit_register()
    user = service.register(body.email, body.password)
    return {"id": str(user.id), "email": user.email}, 201


@bp.post("/login")
@response(TokenOut, errors=(401, 429), descriptions={401: "Wrong email or password"})
@body(Credentials)
def login(body: Credentials) -> dict[str, Any]:
    """Exchange email and password for an access token."""
    limit_login(service.normalise_email(body.email))
    user = service.authenticate(body.email, body.password)
    if user is None:
        raise Unauthorized("wrong email or password")
    token, expires_in = tokens.issue(user)
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


@bp.get("/me")
@response(AccountOut)
@login_required
def me() -> dict[str, Any]:
    """Your account: id, email and current role (read from MongoDB, never cached)."""
    user = service.find_user(g.user_id)
    if user is None:  # a valid token of an account that no longer exists
        raise Unauthorized(
            "the account of this token no longer exists",
            www_authenticate=WWWAuthenticate("bearer"),
        )
    return user.to_dict()
