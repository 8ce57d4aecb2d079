"""How tasks are read: the read strategies, and the reads the routes make (a task, a page, the
stats, the activity feed), each over the changes the write strategy has not put in MongoDB yet."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import current_app

from taskapp import keys
from taskapp.cache import Ttl
from taskapp.extensions import cache
from taskapp.models import isoformat
from taskapp.tasks.queries import ACTIVITY_MAXLEN, FETCHERS, canonical_id, fetch_activity
from taskapp.tasks.schemas import ListQuery, TaskOut
from taskapp.tasks.strategies import ReadStrategy, chosen

ACTIVITY_TTL = 3600

#: The fields of a task as the API shows it, in the order Task.to_dict gives them.
PUBLIC_FIELDS = tuple(TaskOut.model_fields)


def get_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    """One of the user's tasks, or None when unknown, foreign or malformed (cached briefly)."""
    tid = canonical_id(task_id)
    if tid is None:
        return None  # before any cache or database use
    task = current_task(user_id, tid)
    return public(task) if task is not None else None


def current_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    """The task with its version: pending write-behind state first, else the cache, else MongoDB."""
    key = keys.task(user_id, task_id)
    pending = chosen().writes.pending(key)
    if pending is not None:
        return pending
    config = current_app.config
    return read(
        "task",
        key,
        (user_id, task_id),
        ttl=lambda task: (
            config["TASK_CACHE_TTL"] if task is not None else config["NEGATIVE_CACHE_TTL"]
        ),
        tags=[keys.task_tag(user_id, task_id)],
    )


def list_tasks(user_id: str, query: ListQuery) -> dict[str, Any]:
    """One page of the user's tasks, filtered and ordered as ``query`` says (newest first).

    Every page, whatever its filters and order, carries the collection tag: any write to the
    user's tasks drops them all.
    """
    result = read(
        "task_list",
        keys.task_list(
            user_id,
            query.page,
            query.per_page,
            query.completed,
            priority=query.priority,
            due_after=isoformat(query.due_after),
            due_before=isoformat(query.due_before),
            sort=query.sort,
        ),
        (user_id, query),
        ttl=current_app.config["TASK_LIST_CACHE_TTL"],
        tags=[keys.collection_tag(user_id)],
    )
    items = chosen().writes.overlay(user_id, result["items"])
    return {**result, "items": [public(item) for item in items]}


def stats(user_id: str) -> dict[str, int]:
    """Counts over the user's tasks: total, completed, open and overdue."""
    return read(
        "stats",
        keys.stats(user_id),
        (user_id,),
        ttl=current_app.config["TASK_LIST_CACHE_TTL"],
        tags=[keys.collection_tag(user_id)],
    )


def activity(user_id: str, limit: int) -> dict[str, Any]:
    """The user's most recent actions, newest first."""
    items = cache.list_get(
        keys.activity(user_id),
        limit,
        fetch=lambda: fetch_activity(user_id),
        maxlen=ACTIVITY_MAXLEN,
        ttl=ACTIVITY_TTL,
    )
    return {"items": items}


def read(family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
    """Read ``key`` by the read strategy; every strategy has the same lock and version checks."""
    return chosen().reads.read(family, key, args, ttl, tags)


def public(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the API shows it (without the bookkeeping fields), its fields always in one
    order: the same task is the same bytes, hence the same ETag, whether it was read from
    MongoDB or from a write-behind state (whose JSON comes back from Lua in another order)."""
    return {k: task[k] for k in PUBLIC_FIELDS if k in task}


class CacheAsideReads(ReadStrategy):
    """cache-aside: the service fetches from MongoDB on a miss and stores the result."""

    refresh_ahead = False

    def read(self, family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
        fetch = partial(FETCHERS[family], *args)
        return cache.get_or_set(key, fetch, ttl=ttl, tags=tags, refresh_ahead=self.refresh_ahead)


class RefreshAheadReads(CacheAsideReads):
    """refresh-ahead: cache-aside, and hot entries are refreshed in the background before they
    expire, so their readers never wait for MongoDB."""

    refresh_ahead = True


class ReadThroughReads(ReadStrategy):
    """read-through: the cache calls the loader registered for the key's family."""

    def read(self, family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
        return cache.load(family, key, *args, ttl=ttl, tags=tags)
