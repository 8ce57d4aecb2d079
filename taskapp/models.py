"""MongoDB documents: users, their tasks, and the activity feed (MongoDB is its source of truth)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from mongoengine import (
    BooleanField,
    DateTimeField,
    Document,
    IntField,
    ObjectIdField,
    StringField,
)

ROLES = ("user", "admin")
PRIORITIES = ("low", "medium", "high")
#: A priority's place in the order low < medium < high: what the priority sorts sort on.
PRIORITY_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}
ACTIONS = ("created", "updated", "deleted")

_hasher = PasswordHasher()
DB_EXTENSION = "taskapp.db"


class AppDocument(Document):
    """A document stored in the database of the current Flask app, not a process-wide one.

    mongoengine keeps one connection per alias for the whole process and caches each model's
    collection on its class, so a second ``create_app`` would repoint the first app's models.
    Here every query asks ``current_app`` for its collection (``taskapp.db.Database``).
    """

    meta: dict[str, Any] = {"abstract": True}

    @classmethod
    def _get_db(cls):  # type: ignore[no-untyped-def]
        return current_app.extensions[DB_EXTENSION].database

    @classmethod
    def _get_collection(cls):  # type: ignore[no-untyped-def]
        return current_app.extensions[DB_EXTENSION].collection(cls)


def utcnow() -> datetime:
    """Now in UTC, naive, truncated to milliseconds as BSON stores it.

    Truncating up front makes a freshly written document serialise exactly as it will after a
    round trip through MongoDB, so a cached copy and a fetched copy never differ.
    """
    return to_bson_datetime(datetime.now(UTC))


def to_bson_datetime(value: datetime) -> datetime:
    """An aware or naive (taken as UTC) datetime as naive UTC with millisecond precision."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, e.g. ``2025-01-31T12:00:00.000Z``."""
    if value is None:
        return None
    return to_bson_datetime(value).isoformat(timespec="milliseconds") + "Z"


class User(AppDocument):
    """An account; the email is stored lowercased and unique."""

    email = StringField(required=True, unique=True, max_length=254)
    password_hash = StringField(required=True)
    role = StringField(required=True, choices=ROLES, default="user")
    created_at = DateTimeField(required=True, default=utcnow)
    # Tokens carry the generation they were issued under; a password change raises it, so every
    # token issued before is refused (taskapp.auth.revocation).
    token_generation = IntField(required=True, default=0)

    meta = {"collection": "users"}

    def clean(self) -> None:
        """Normalise the email so lookups and the unique index ignore case."""
        self.email = self.email.strip().lower()

    def set_password(self, password: str) -> None:
        """Store an argon2id hash of ``password``."""
        self.password_hash = _hasher.hash(password)

    def check_password(self, password: str) -> bool:
        """True when ``password`` matches the stored hash."""
        return _verify(self.password_hash, password)

    def to_dict(self) -> dict[str, Any]:
        """The public view of a user (never the password hash)."""
        return {"id": str(self.id), "email": self.email, "role": self.role}


def check_dummy_password(password: str) -> None:
    """Spend the time of a real password check, so unknown emails answer as slowly as known ones."""
    _verify(_dummy_hash(), password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("not the password of any account")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class Task(AppDocument):
    """A task, owned by one user."""

    owner = ObjectIdField(required=True)  # a User id; never dereferenced, so never an extra read
    title = StringField(required=True, min_length=1, max_length=200)
    description = StringField(default="", max_length=5000)
    completed = BooleanField(required=True, default=False)
    priority = StringField(required=True, choices=PRIORITIES, default="medium")
    # Derived from priority on every write (PRIORITY_RANK): the strings do not sort by meaning.
    priority_rank = IntField(required=True, default=PRIORITY_RANK["medium"])
    due_date = DateTimeField(null=True)
    created_at = DateTimeField(required=True, default=utcnow)
    updated_at = DateTimeField(required=True, default=utcnow)
    # Grows by one with each write: write-through and write-behind keep a slower writer from
    # replacing a newer value, in the cache and in MongoDB.
    version = IntField(required=True, default=1)

    # One index per shape of list query (each also serves its reverse order): the plain list,
    # completed, priority, due-date ranges and orders, priority orders. Pages break ties by _id.
    meta = {
        "collection": "tasks",
        "indexes": [
            {"fields": ["owner", "-created_at"]},
            {"fields": ["owner", "completed", "-created_at"]},
            {"fields": ["owner", "priority", "-created_at"]},
            {"fields": ["owner", "due_date", "id"]},
            {"fields": ["owner", "priority_rank", "id"]},
        ],
    }

    def clean(self) -> None:
        """Keep the rank in step with the priority."""
        self.priority_rank = PRIORITY_RANK.get(self.priority, PRIORITY_RANK["medium"])

    @classmethod
    def backfill_priority_rank(cls) -> None:
        """Rank the tasks stored before ``priority_rank`` existed (finds nothing once done)."""
        for priority, rank in PRIORITY_RANK.items():
            cls.objects(priority=priority, priority_rank__exists=False).update(
                set__priority_rank=rank
            )

    def to_dict(self) -> dict[str, Any]:
        """The task as the API returns it."""
        return {
            "id": str(self.id),
            "title": self.title,
            "description": self.description,
            "completed": self.completed,
            "priority": self.priority,
            "due_date": isoformat(self.due_date),
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


class Activity(AppDocument):
    """One action of a user on a task, newest read first."""

    user = ObjectIdField(required=True)
    action = StringField(required=True, choices=ACTIONS)
    task_id = ObjectIdField(required=True)
    title = StringField(required=True)
    at = DateTimeField(required=True, default=utcnow)

    meta = {"collection": "activity", "indexes": [{"fields": ["user", "-at"]}]}

    def to_dict(self) -> dict[str, Any]:
        """The feed item as the API returns it."""
        return {
            "id": str(self.id),
            "action": self.action,
            "task_id": str(self.task_id),
            "title": self.title,
            "at": isoformat(self.at),
        }


class Session(AppDocument):
    """One login: the id of its current refresh token, its expiry, and whether it was revoked.

    Both tokens of a login carry the session's id (``sid``); refreshing replaces ``refresh_id``
    with a conditional update, so a refresh token works once. ``expires_at`` is when its refresh
    token stops working: REFRESH_TOKEN_TTL after the last refresh (or the login), or the moment
    of its revocation. Logins delete the sessions no token can use any more
    (``taskapp.auth.service.purge_sessions``).
    """

    user = ObjectIdField(required=True)
    refresh_id = StringField(required=True)
    generation = IntField(required=True, default=0)
    revoked = BooleanField(required=True, default=False)
    revoked_at = DateTimeField(null=True)
    created_at = DateTimeField(required=True, default=utcnow)
    expires_at = DateTimeField(required=True)

    meta = {
        "collection": "sessions",
        "indexes": [{"fields": ["user", "revoked_at"]}, {"fields": ["expires_at"]}],
    }


MODELS: tuple[type[AppDocument], ...] = (User, Task, Activity, Session)
