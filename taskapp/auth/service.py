"""Accounts: registration, credential checks, logins and their tokens, roles. Nothing here is
ever cached."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn

from bson import ObjectId
from flask import Flask, current_app
from mongoengine import NotUniqueError
from werkzeug.exceptions import Conflict, Forbidden, Unauthorized

from taskapp import db
from taskapp.auth import revocation, tokens
from taskapp.auth.tokens import Access
from taskapp.errors import TokenRefused
from taskapp.models import ROLES, Session, User, check_dummy_password, utcnow

log = logging.getLogger(__name__)

#: The most sessions one purge deletes (``purge_sessions``): a bounded cost for its login.
PURGE_BATCH = 100
#: Seconds between two purges of one process while no purge found a full batch: on FerretDB
#: 1.24 (SQLite) the purge's query scans every session, indexed or not.
PURGE_INTERVAL_S = 60.0
PURGE_EXTENSION = "taskapp.session_purge"
#: Where an app keeps what is deleted with an account (``forget_with_account``).
FORGET_EXTENSION = "taskapp.forget_with_account"


class _PurgeDue:
    """When this process (this app) purges sessions next: one login at a time, at most once per
    PURGE_INTERVAL_S unless the last purge left more to delete."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() from which a login purges

    def take(self) -> bool:
        """True for the login that is to purge now (the next one waits PURGE_INTERVAL_S)."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return False
            self._next = now + PURGE_INTERVAL_S
            return True

    def again(self) -> None:
        """A full batch was deleted: more may be left, so the next login purges too."""
        with self._lock:
            self._next = 0.0


def normalise_email(email: str) -> str:
    """The one spelling of an email the app stores and looks up."""
    return email.strip().lower()


def register(email: str, password: str, role: str | None = None) -> User:
    """Create an account; 409 when the email is taken. ADMIN_EMAILS get the admin role."""
    email = normalise_email(email)
    if role is None:
        role = "admin" if email in current_app.config["ADMIN_EMAILS"] else "user"
    user = User(email=email, role=role)
    user.set_password(password)
    try:
        # No existence check first: the unique index decides, so two racing registrations of
        # one email cannot both succeed.
        user.save()
    except NotUniqueError:
        raise Conflict("an account with this email already exists") from None
    return user


def authenticate(email: str, password: str) -> User | None:
    """The user these credentials belong to, else None (as slow for unknown emails as known)."""
    email = normalise_email(email)
    user = db.read(lambda: User.objects(email=email).first())
    if user is None:
        check_dummy_password(password)
        return None
    return user if user.check_password(password) else None


def find_user(user_id: str) -> User | None:
    """The user with this id, read from MongoDB (never cached); None for unknown/malformed ids."""
    if not ObjectId.is_valid(user_id):
        return None
    return db.read(lambda: User.objects(id=ObjectId(user_id)).first())


def find_user_by_email(email: str) -> User | None:
    """The user with this email, read from MongoDB, or None."""
    email = normalise_email(email)
    return db.read(lambda: User.objects(email=email).first())


def list_users(email: str | None, page: int, per_page: int) -> tuple[list[User], int]:
    """One page of the accounts by email (the unique index orders them), and their number.

    With ``email`` only that account, if it exists. Read from MongoDB, never cached.
    """
    query = User.objects(email=normalise_email(email)) if email else User.objects
    page_query = query.order_by("email").skip((page - 1) * per_page).limit(per_page)
    users = db.read(lambda: list(page_query))
    total = db.read(lambda: query.count())
    return users, total


def set_role(user_id: str, role: str) -> User | None:
    """Give a user ``role`` (effective on their next request); None for an unknown user."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not ObjectId.is_valid(user_id):
        return None
    return User.objects(id=ObjectId(user_id)).modify(new=True, set__role=role)


def is_admin(user_id: str) -> bool:
    """True when the user currently has the admin role: read from MongoDB on every call."""
    user = find_user(user_id)
    return user is not None and user.role == "admin"


def start_session(user: User) -> dict[str, Any]:
    """A new login of ``user``: its session in MongoDB and its token pair (the login answer)."""
    purge_sessions()
    refresh_id = secrets.token_urlsafe(16)
    session = Session(
        user=user.id,
        refresh_id=refresh_id,
        generation=user.token_generation,
        expires_at=utcnow() + timedelta(seconds=current_app.config["REFRESH_TOKEN_TTL"]),
    )
    session.save()
    # Read the user again after the session exists: a password change or an account deletion
    # that came between the credential check and the save would otherwise miss this session
    # (it revokes the sessions it finds), and while Redis is down the session alone decides.
    now = db.read(lambda: User.objects(id=user.id).only("token_generation").first())
    if now is None or now.token_generation != user.token_generation:
        revoke_session(str(user.id), str(session.id))
        raise Unauthorized("the account changed while logging in; log in again")
    # The user's revocation hash exists from the first login on, so requests find it built.
    revocation.rebuild(str(user.id))
    return _token_pair(str(user.id), str(session.id), refresh_id, user.token_generation)


def purge_sessions() -> None:
    """Delete up to PURGE_BATCH sessions, of any user, that no token can use any more.

    A TTL index would do this on MongoDB, but FerretDB 1.x has none (its issue 2415), so logins
    do it: they are what creates sessions. One login per process and PURGE_INTERVAL_S purges,
    and every login while the last purge found a full batch, so dead sessions cannot pile up.
    A session's refresh token is of no use after ``expires_at`` (a revocation sets it to its own
    time); its access tokens were all issued before that, so they expire within
    ACCESS_TOKEN_TTL of it, the window in which a revocation rebuild reads revoked sessions
    (``revocation.rebuild``). The session is kept that long, plus CLOCK_MARGIN_S.
    """
    due: _PurgeDue = current_app.extensions.setdefault(PURGE_EXTENSION, _PurgeDue())
    if not due.take():
        return
    grace = current_app.config["ACCESS_TOKEN_TTL"] + tokens.CLOCK_MARGIN_S
    cutoff = utcnow() - timedelta(seconds=grace)
    dead = db.read(
        lambda: [s.id for s in Session.objects(expires_at__lt=cutoff).only("id").limit(PURGE_BATCH)]
    )
    if dead:
        # Filtered again: a revocation meanwhile (of an expired session) set expires_at to now.
        Session.objects(id__in=dead, expires_at__lt=cutoff).delete()
    if len(dead) == PURGE_BATCH:
        due.again()


def refresh(token: str) -> dict[str, Any]:
    """A new token pair for a refresh token, which is used up (401 for any refused token).

    A refresh token's first presentation is marked in Redis (SET NX), and the session's refresh
    id is replaced with a conditional update (filter on the presented one): of two refreshes of
    one token one wins, by either. A validly signed token presented before, or whose id is no
    longer the session's, was used: as OAuth 2.0's security BCP asks, the whole login is revoked.
    """
    claims = tokens.refresh_of(token)
    if claims is None:
        raise _unauthorized("the refresh token is not valid")
    user = find_user(claims.user_id)
    if user is None or claims.generation < user.token_generation:
        raise _unauthorized("the refresh token was revoked")
    if revocation.claim_refresh(claims.user_id, claims.refresh_id, claims.expires_at) is False:
        _reused(claims)  # presented before (Redis says so at once, even for concurrent ones)
    sid, uid = ObjectId(claims.session_id), ObjectId(claims.user_id)
    new_id = secrets.token_urlsafe(16)
    ttl = timedelta(seconds=current_app.config["REFRESH_TOKEN_TTL"])
    rotated = Session.objects(
        id=sid, user=uid, refresh_id=claims.refresh_id, revoked=False, expires_at__gt=utcnow()
    ).modify(new=True, set__refresh_id=new_id, set__expires_at=utcnow() + ttl)
    if rotated is None:
        session = db.read(lambda: Session.objects(id=sid, user=uid).first())
        if session is not None and not session.revoked and session.refresh_id != claims.refresh_id:
            _reused(claims)
        raise _unauthorized("the refresh token was revoked or has expired")
    return _token_pair(claims.user_id, claims.session_id, new_id, claims.generation)


def _reused(claims: tokens.Refresh) -> NoReturn:
    """A refresh token presented twice: two parties hold it, so its login ends for both (401)."""
    log.warning("refresh token reused for session %s; revoking the login", claims.session_id)
    revoke_session(claims.user_id, claims.session_id)
    raise _unauthorized("the refresh token was already used; this login is revoked")


def revoke_session(user_id: str, session_id: str) -> None:
    """Revoke one login (logout, a reused refresh token): MongoDB, then Redis."""
    now = utcnow()
    # Its refresh token stops working now: expires_at says so, for purge_sessions.
    Session.objects(id=ObjectId(session_id), user=ObjectId(user_id)).update(
        set__revoked=True, set__revoked_at=now, set__expires_at=now
    )
    revocation.revoke_session(user_id, session_id)


def change_password(access: Access, current: str, new: str) -> None:
    """Set a new password and refuse every token issued before (403 on a wrong current one)."""
    user = find_user(access.user_id)
    if user is None:
        raise _unauthorized("the account of this token no longer exists")
    if not user.check_password(current):
        raise Forbidden("the current password is wrong")
    old_hash = user.password_hash
    user.set_password(new)
    # Conditional on the hash just checked: of two concurrent changes, one wins.
    changed = User.objects(id=user.id, password_hash=old_hash).modify(
        new=True, set__password_hash=user.password_hash, inc__token_generation=1
    )
    if changed is None:
        raise Conflict("the password was changed meanwhile")
    now = utcnow()
    Session.objects(user=user.id, revoked=False).update(
        set__revoked=True, set__revoked_at=now, set__expires_at=now
    )
    revocation.revoke_generation(access.user_id, changed.token_generation)


def forget_with_account(app: Flask, forget: Callable[[str], None]) -> None:
    """Have ``forget(user_id)`` delete what another part of ``app`` keeps of a user (the tasks,
    their activity and cache entries) when the user's account is deleted."""
    app.extensions.setdefault(FORGET_EXTENSION, []).append(forget)


def delete_account(user_id: str) -> None:
    """Delete the account (its email may register again), refuse its tokens, then delete its
    logins and what the app's other parts keep of it (``forget_with_account``: its tasks,
    activity and cache entries). The user goes first: a login racing this one then finds no
    user when it reads it again (``start_session``)."""
    oid = ObjectId(user_id)
    User.objects(id=oid).delete()
    revocation.revoke_user(user_id)
    Session.objects(user=oid).delete()
    for forget in current_app.extensions.get(FORGET_EXTENSION, ()):
        forget(user_id)


def _token_pair(user_id: str, session_id: str, refresh_id: str, generation: int) -> dict[str, Any]:
    access, expires_in = tokens.issue(user_id, session_id, generation)
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "refresh_token": tokens.issue_refresh(user_id, session_id, refresh_id, generation),
    }


def _unauthorized(message: str) -> Unauthorized:
    """401 for a presented token (a refresh token, an access token) that is refused."""
    return TokenRefused(message)
