"""Auth routes: registration, logins and their tokens, the caller's account. Responses here are
never cached."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g
from werkzeug.exceptions import Unauthorized

from taskapp.auth import service
from taskapp.auth.identity import login_required
from taskapp.auth.schemas import (
    AccountOut,
    Credentials,
    PasswordChange,
    RefreshIn,
    Registration,
    TokenOut,
    UserOut,
)
from taskapp.auth.tokens import current_access
from taskapp.errors import TokenRefused
from taskapp.openapi import response
from taskapp.ratelimit import limit_login, limit_register
from taskapp.responses import no_content
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
    """Exchange email and password for an access token and a refresh token."""
    limit_login(service.normalise_email(body.email))
    user = service.authenticate(body.email, body.password)
    if user is None:
        raise Unauthorized("wrong email or password")
    return service.start_session(user)


@bp.post("/refresh")
@response(TokenOut, errors=(401, 429))
@body(RefreshIn)
def refresh(body: RefreshIn) -> dict[str, Any]:
    """Exchange a refresh token for a new token pair.

    A refresh token is single use: presenting one that was already used revokes every token of
    its login (401).
    """
    return service.refresh(body.refresh_token)


@bp.post("/logout")
@response(None, status=204)
@login_required
def logout() -> Response:
    """End this login.

    Its access and refresh tokens are refused from now on.
    """
    access = current_access()
    assert access is not None  # login_required admitted it
    service.revoke_session(access.user_id, access.session_id)
    return no_content()


@bp.post("/password")
@response(None, status=204, errors=(403, 409, 429))
@login_required
@body(PasswordChange)
def change_password(body: PasswordChange) -> Response:
    """Change your password.

    Every token issued before, this one included, is refused from now on.
    """
    access = current_access()
    assert access is not None  # login_required admitted it
    user = service.find_user(access.user_id)
    limit_login(user.email if user is not None else "")  # guessing the current one is a login
    service.change_password(access, body.current_password, body.new_password)
    return no_content()


@bp.get("/me")
@response(AccountOut)
@login_required
def me() -> dict[str, Any]:
    """Your account: id, email and current role.

    Read from MongoDB on every request, never cached.
    """
    user = service.find_user(g.user_id)
    if user is None:  # a valid token of an account that no longer exists
        raise TokenRefused("the account of this token no longer exists")
    return user.to_dict()


@bp.delete("/me")
@response(None, status=204)
@login_required
def delete_me() -> Response:
    """Delete your account, its tasks and its activity.

    Its tokens are refused from now on, and its email can register again.
    """
    service.delete_account(g.user_id)
    return no_content()
