"""Accounts: registration, credential checks and roles. Nothing here is ever cached."""

from __future__ import annotations

from bson import ObjectId
from flask import current_app
from mongoengine import NotUniqueError
from werkzeug.exceptions import Conflict

from taskapp import db
from taskapp.models import ROLES, User, check_dummy_password


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
