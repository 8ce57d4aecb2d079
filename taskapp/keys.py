"""Every cache key and tag of the app, made here (the cache extension adds CACHE_KEY_PREFIX).

A user's keys and tags all carry the hash tag ``{u:<user_id>}``, so on Redis Cluster they share
one hash slot and every multi-key atomic operation of the cache stays in that slot. User ids and
task ids reach this module only after validation as ObjectIds; anything else a client sends
(emails, addresses, query strings) is hashed first, so no raw input becomes part of a key.
"""

from __future__ import annotations

import hashlib


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def _ns(user_id: str) -> str:
    return f"{{u:{user_id}}}"


def task(user_id: str, task_id: str) -> str:
    """One task as its owner sees it."""
    return f"{_ns(user_id)}:task:{task_id}"


def task_list(
    user_id: str,
    page: int,
    per_page: int,
    completed: bool | None,
    *,
    priority: str | None = None,
    due_after: str | None = None,
    due_before: str | None = None,
    sort: str = "-created_at",
) -> str:
    """One page of a user's task list under one filter and order.

    Every parameter of the page is in its key; the ones left at their defaults add nothing, so
    ``{u:<id>}:tasks:1:10:any`` is the first page of the plain list. ``priority`` and ``sort`` are
    validated choices and the dates canonical UTC ISO 8601 (the service's, never the client's).
    """
    flag = "any" if completed is None else str(completed).lower()
    options = {
        "priority": priority,
        "due_after": due_after,
        "due_before": due_before,
        "sort": None if sort == "-created_at" else sort,
    }
    extra = "".join(f":{name}={value}" for name, value in options.items() if value is not None)
    return f"{_ns(user_id)}:tasks:{page}:{per_page}:{flag}{extra}"


def stats(user_id: str) -> str:
    """A user's computed task statistics."""
    return f"{_ns(user_id)}:stats"


def activity(user_id: str) -> str:
    """A user's activity feed (a Redis list, newest first)."""
    return f"{_ns(user_id)}:activity"


def response(user_id: str, method: str, path: str, query: str) -> str:
    """A cached HTTP response: method, path and canonical query hashed, never raw."""
    return f"{_ns(user_id)}:http:{_digest(method, path, query)}"


def revocation(user_id: str) -> str:
    """A user's revoked tokens (a hash: token generation, revoked sessions; taskapp.auth.revocation)."""
    return f"{_ns(user_id)}:revoked"


def refresh_claim(user_id: str, refresh_id: str) -> str:
    """The mark that a refresh token (by its id, hashed) was presented once."""
    return f"{_ns(user_id)}:refreshed:{_digest(refresh_id)}"


def anon_limit(address: str) -> str:
    """The sliding window of requests without a valid token from one client address (hashed)."""
    return f"anon:addr:{_digest(address)}"


def login_limit(kind: str, value: str) -> str:
    """The sliding window of login attempts for an email or a client address (hashed)."""
    return f"login:{kind}:{_digest(value.lower())}"


def register_limit(address: str) -> str:
    """The sliding window of registrations from one client address (hashed)."""
    return f"register:addr:{_digest(address)}"


def task_tag(user_id: str, task_id: str) -> str:
    """Everything that holds one task."""
    return f"{_ns(user_id)}:task:{task_id}"


def collection_tag(user_id: str) -> str:
    """Everything computed from a user's whole collection: list pages and stats."""
    return f"{_ns(user_id)}:collection"


def responses_tag(user_id: str) -> str:
    """Every cached HTTP response of a user."""
    return f"{_ns(user_id)}:responses"
