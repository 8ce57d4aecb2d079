"""The task service: every MongoDB access and every caching decision for tasks.

Views never touch the cache. TASK_READ_STRATEGY and TASK_WRITE_STRATEGY pick a strategy object
each, once, in ``init_app``: every read goes through the read strategy (cache-aside, read-through
or refresh-ahead) and every change through the write strategy (invalidate, write-through or
write-behind, whose changes reach MongoDB through ``apply_pending``, run by the flushers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

from bson import ObjectId
from flask import Flask, current_app
from werkzeug.exceptions import ServiceUnavailable

from taskapp import db, keys
from taskapp.cache import Unavailable
from taskapp.extensions import cache
from taskapp.models import PRIORITY_RANK, Activity, Task, isoformat, to_bson_datetime, utcnow
from taskapp.tasks.schemas import ListQuery, TaskCreate, TaskUpdate

ACTIVITY_MAXLEN = 100  # feed items kept in Redis and read back from MongoDB on a miss
ACTIVITY_TTL = 3600
STAGE_ATTEMPTS = 5
TASK_FIELDS = ("title", "description", "completed", "priority", "due_date", "updated_at")
# The sort parameter as MongoDB orders; _id breaks ties (tasks created in the same millisecond,
# equal due dates or priorities), so pages never overlap, and each "-" order is the exact reverse.
ORDERS: dict[str, tuple[str, str]] = {
    "-created_at": ("-created_at", "-id"),
    "created_at": ("created_at", "id"),
    "due_date": ("due_date", "id"),
    "-due_date": ("-due_date", "-id"),
    "priority": ("priority_rank", "id"),
    "-priority": ("-priority_rank", "-id"),
}
log = logging.getLogger("taskapp.tasks")


def canonical_id(raw: str) -> str | None:
    """The canonical (lowercase hex) form of an ObjectId string, None when malformed.

    Ids become part of cache keys and tags; one spelling per id means an invalidation always
    reaches every cached copy.
    """
    return str(ObjectId(raw)) if isinstance(raw, str) and ObjectId.is_valid(raw) else None


# Reads


def get_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    """One of the user's tasks, or None when unknown, foreign or malformed (cached briefly)."""
    tid = canonical_id(task_id)
    if tid is None:
        return None  # before any cache or database use
    task = _current_task(user_id, tid)
    return _public(task) if task is not None else None


def _current_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    """The task with its version: pending write-behind state first, else the cache, else MongoDB."""
    key = keys.task(user_id, task_id)
    pending = _writes().pending(key)
    if pending is not None:
        return pending
    config = current_app.config
    return _read(
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
    result = _read(
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
    items = _writes().overlay(user_id, result["items"])
    return {**result, "items": [_public(item) for item in items]}


def stats(user_id: str) -> dict[str, int]:
    """Counts over the user's tasks: total, completed, open and overdue."""
    return _read(
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
        fetch=lambda: _fetch_activity(user_id),
        maxlen=ACTIVITY_MAXLEN,
        ttl=ACTIVITY_TTL,
    )
    return {"items": items}


Ttl = int | Callable[[Any], int]


def _read(family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
    """Read ``key`` by the read strategy; every strategy has the same lock and version checks."""
    return current_app.extensions[EXTENSION].reads.read(family, key, args, ttl, tags)


class CacheAside:
    """cache-aside: the service fetches from MongoDB on a miss and stores the result."""

    refresh_ahead = False

    def read(self, family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
        fetch = partial(FETCHERS[family], *args)
        return cache.get_or_set(key, fetch, ttl=ttl, tags=tags, refresh_ahead=self.refresh_ahead)


class RefreshAhead(CacheAside):
    """refresh-ahead: cache-aside, and hot entries are refreshed in the background before they
    expire, so their readers never wait for MongoDB."""

    refresh_ahead = True


class ReadThrough:
    """read-through: the cache calls the loader registered for the key's family."""

    def read(self, family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
        return cache.load(family, key, *args, ttl=ttl, tags=tags)


def _with_pending(user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """List items with their write-behind changes not yet in MongoDB (one round trip).

    A change flushed to MongoDB after the page was read leaves no pending state, but the
    version staged for it is still known: such an item is read again (pending state first, then
    the cache, then MongoDB), so a page never shows a task older than an answered PATCH.
    """
    task_keys = [keys.task(user_id, item["id"]) for item in items]
    found = cache.write_behind().pending_many(task_keys)
    result = []
    for item, (pending, staged) in zip(items, found, strict=True):
        if pending is not None:
            result.append(pending)
        elif staged > item["version"]:  # flushed and settled since the page was read
            fresh = _current_task(user_id, item["id"])
            if fresh is not None:  # else deleted since: gone from the page
                result.append(fresh)
        else:
            result.append(item)
    return result


def _public(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the API shows it (without the bookkeeping fields)."""
    return {k: v for k, v in task.items() if k not in ("version", "owner")}


# Writes


def create_task(user_id: str, data: TaskCreate) -> dict[str, Any]:
    """Store a new task for the user and return it."""
    now = utcnow()
    fields = data.model_dump()
    fields["due_date"] = _stored_date(fields["due_date"])
    task = Task(owner=ObjectId(user_id), created_at=now, updated_at=now, **fields)
    task.save()
    _changed(user_id, "created", _versioned(task))
    return task.to_dict()


def update_task(user_id: str, task_id: str, data: TaskUpdate) -> dict[str, Any] | None:
    """Apply the sent fields to one of the user's tasks; None when unknown or foreign."""
    tid = canonical_id(task_id)
    if tid is None:
        return None
    return _writes().update(user_id, tid, data)


def _update_in_mongodb(user_id: str, tid: str, data: TaskUpdate) -> dict[str, Any] | None:
    """PATCH straight to MongoDB (invalidate and write-through)."""
    update: dict[str, Any] = {"set__updated_at": utcnow(), "inc__version": 1}
    for name, value in data.changes().items():
        if name == "due_date" and value is None:
            update["unset__due_date"] = True  # a cleared date is absent, as in a new task
        else:
            update[f"set__{name}"] = _stored_date(value) if name == "due_date" else value
        if name == "priority":
            update["set__priority_rank"] = PRIORITY_RANK[value]
    # find-and-modify filtered by owner: a foreign id matches nothing, in one atomic step.
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id)).modify(new=True, **update)
    if task is None:
        return None
    _changed(user_id, "updated", _versioned(task))
    return task.to_dict()


def delete_task(user_id: str, task_id: str) -> bool:
    """Delete one of the user's tasks; False when unknown or foreign."""
    tid = canonical_id(task_id)
    if tid is None:
        return False
    _writes().before_delete(user_id, tid)
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id)).modify(remove=True)
    if task is None:
        return False
    _changed(user_id, "deleted", _versioned(task))
    return True


def _changed(user_id: str, action: str, task: dict[str, Any]) -> None:
    """Record the action, bring the cache up to date by TASK_WRITE_STRATEGY, extend the feed.

    Runs after the MongoDB write succeeded, so a reader that refills the cache sees the change.
    ``task`` is the task as written with its version (as it was, for a deletion). invalidate:
    drop every entry the change affects. write-through: the same, and store the task as written
    in the same atomic step, so the next read of it is a hit.
    """
    task_id = task["id"]
    entry = Activity(
        user=ObjectId(user_id), action=action, task_id=ObjectId(task_id), title=task["title"]
    )
    entry.save()
    _writes().changed(user_id, action, task)
    cache.list_push(keys.activity(user_id), entry.to_dict(), maxlen=ACTIVITY_MAXLEN)


def _affected_tags(user_id: str, task_id: str) -> list[str]:
    """Everything a change of one task can make wrong: the task, the lists and stats, responses."""
    return [
        keys.task_tag(user_id, task_id),
        keys.collection_tag(user_id),
        keys.responses_tag(user_id),
    ]


def _writes() -> Invalidate:
    return current_app.extensions[EXTENSION].writes


class Invalidate:
    """invalidate: a change drops every entry it affects, through tags; the next read refills."""

    def pending(self, key: str) -> dict[str, Any] | None:
        """A change of the task not in MongoDB yet (write-behind only)."""
        return None

    def overlay(self, user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """List items with changes not in MongoDB yet (write-behind only)."""
        return items

    def update(self, user_id: str, task_id: str, data: TaskUpdate) -> dict[str, Any] | None:
        return _update_in_mongodb(user_id, task_id, data)

    def before_delete(self, user_id: str, task_id: str) -> None:
        """Run before a task is deleted from MongoDB."""

    def changed(self, user_id: str, action: str, task: dict[str, Any]) -> None:
        """Bring the cache up to date after MongoDB has the change."""
        cache.invalidate_tags(*_affected_tags(user_id, task["id"]))

    def start(self, app: Flask) -> None:
        """Start what this strategy runs in each serving process."""


class WriteThrough(Invalidate):
    """write-through: the same drops, and the task as written is stored in the same atomic step,
    so the next read of it is a hit."""

    def changed(self, user_id: str, action: str, task: dict[str, Any]) -> None:
        if action == "deleted":
            return super().changed(user_id, action, task)
        task_id = task["id"]
        cache.write_through(
            keys.task(user_id, task_id),
            task,
            version=task["version"],
            ttl=current_app.config["TASK_CACHE_TTL"],
            tags=[keys.task_tag(user_id, task_id)],
            invalidate=_affected_tags(user_id, task_id),
        )


class WriteBehind(Invalidate):
    """write-behind: a PATCH is answered from Redis at once and applied to MongoDB by flushers;
    reads see the pending change first."""

    def pending(self, key: str) -> dict[str, Any] | None:
        return cache.write_behind().pending(key)

    def overlay(self, user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _with_pending(user_id, items)

    def update(self, user_id: str, task_id: str, data: TaskUpdate) -> dict[str, Any] | None:
        return _stage(user_id, task_id, data)

    def before_delete(self, user_id: str, task_id: str) -> None:
        try:  # before the delete: a pending state left behind would bring the task back
            cache.write_behind().discard(keys.task(user_id, task_id))
        except Unavailable:
            raise _queue_unavailable() from None

    def start(self, app: Flask) -> None:
        """A flusher in each serving process, started by its first request (after gunicorn's
        fork), not by CLI runs."""
        started = threading.Lock()
        flusher: list[Any] = []

        @app.before_request
        def start_flusher() -> None:
            if not flusher:
                with started:
                    if not flusher:
                        flusher.append(cache.flusher(apply_pending))
                        flusher[0].start()


EXTENSION = "taskapp.tasks"


class Strategies(NamedTuple):
    """The app's read and write strategies, chosen once in ``init_app``."""

    reads: CacheAside | ReadThrough
    writes: Invalidate


READ_STRATEGIES: dict[str, type[CacheAside] | type[ReadThrough]] = {
    "cache-aside": CacheAside,
    "read-through": ReadThrough,
    "refresh-ahead": RefreshAhead,
}
WRITE_STRATEGIES: dict[str, type[Invalidate]] = {
    "invalidate": Invalidate,
    "write-through": WriteThrough,
    "write-behind": WriteBehind,
}


# Write-behind


def _stage(user_id: str, task_id: str, data: TaskUpdate) -> dict[str, Any] | None:
    """Write-behind PATCH: queue the change in Redis and answer with the task as changed.

    MongoDB receives it within WRITE_BEHIND_FLUSH_MS from a flusher. Reads of the task see it at
    once (its pending state comes first); list pages show it over their MongoDB items.
    """
    change = {
        name: isoformat(_stored_date(value)) if name == "due_date" else value
        for name, value in data.changes().items()
    }
    change["updated_at"] = isoformat(utcnow())
    state = None
    for _ in range(STAGE_ATTEMPTS):  # a flush between our read and our stage: read again
        current = _current_task(user_id, task_id)
        if current is None:
            return None
        try:
            state = cache.write_behind().stage(
                keys.task(user_id, task_id), task_id, {**current, "owner": user_id}, change
            )
        except Unavailable:
            raise _queue_unavailable() from None
        if state is not None:
            break
    if state is None:
        raise _queue_unavailable()
    entry = Activity(
        user=ObjectId(user_id), action="updated", task_id=ObjectId(task_id), title=state["title"]
    )
    entry.save()
    cache.invalidate_tags(keys.collection_tag(user_id), keys.responses_tag(user_id))
    cache.list_push(keys.activity(user_id), entry.to_dict(), maxlen=ACTIVITY_MAXLEN)
    return _public(state)


def _queue_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the write-behind queue is unavailable; the change was not made, retry shortly",
        retry_after=1,
    )


def apply_pending(task_id: str, state: dict[str, Any]) -> None:
    """Write a pending state to MongoDB unless MongoDB has it or a newer one (idempotent)."""
    update: dict[str, Any] = {
        "set__version": state["version"],
        "set__priority_rank": PRIORITY_RANK[state["priority"]],
    }
    for name in TASK_FIELDS:
        value = state[name]
        if name in ("due_date", "updated_at"):
            value = _parse_date(value)
        if value is None:
            update[f"unset__{name}"] = True
        else:
            update[f"set__{name}"] = value
    Task.objects(id=ObjectId(task_id), version__lt=state["version"]).update(**update)
    user_id = state["owner"]
    cache.invalidate_tags(*_affected_tags(user_id, task_id))


def _parse_date(value: str | None) -> datetime | None:
    return to_bson_datetime(datetime.fromisoformat(value)) if value else None


def init_app(app: Flask) -> None:
    """Choose the read and write strategies once; register the loaders of read-through."""
    for family, fetch in FETCHERS.items():
        cache.register_loader(family, fetch)
    reads = READ_STRATEGIES[app.config["TASK_READ_STRATEGY"]]()
    writes = WRITE_STRATEGIES[app.config["TASK_WRITE_STRATEGY"]]()
    app.extensions[EXTENSION] = Strategies(reads, writes)
    writes.start(app)


# MongoDB reads (each through db.read, materialised inside it)


def _fetch_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    query = Task.objects(id=ObjectId(task_id), owner=ObjectId(user_id))
    task = db.read(lambda: query.first())
    return _versioned(task) if task is not None else None


def _versioned(task: Task) -> dict[str, Any]:
    return {**task.to_dict(), "version": task.version}


def _fetch_page(user_id: str, params: ListQuery) -> dict[str, Any]:
    # Plain comparisons only (FerretDB 1.x has no $facet nor $cond); $lt/$gt on a date match only
    # dates, so a task without a due date never passes a due_before or due_after filter.
    filters: dict[str, Any] = {"owner": ObjectId(user_id)}
    if params.completed is not None:
        filters["completed"] = params.completed
    if params.priority is not None:
        filters["priority"] = params.priority
    if params.due_before is not None:
        filters["due_date__lt"] = to_bson_datetime(params.due_before)
    if params.due_after is not None:
        filters["due_date__gt"] = to_bson_datetime(params.due_after)
    query = Task.objects(**filters)
    page, per_page = params.page, params.per_page
    page_query = query.order_by(*ORDERS[params.sort]).skip((page - 1) * per_page).limit(per_page)
    items = db.read(lambda: [_versioned(task) for task in page_query])
    total = db.read(lambda: query.count())
    return {"items": items, "page": page, "per_page": per_page, "total": total}


def _fetch_stats(user_id: str) -> dict[str, int]:
    # One $group over the user's tasks, summing per state: no $facet nor $cond, which FerretDB
    # 1.x lacks. $lt on a date matches only dates, so tasks without a due date are never overdue.
    owner = ObjectId(user_id)
    groups = db.read(
        lambda: list(
            Task.objects.aggregate(
                [{"$match": {"owner": owner}}, {"$group": {"_id": "$completed", "n": {"$sum": 1}}}]
            )
        )
    )
    overdue = db.read(
        lambda: Task.objects(owner=owner, completed=False, due_date__lt=utcnow()).count()
    )
    counts = {group["_id"]: group["n"] for group in groups}
    total, completed = sum(counts.values()), counts.get(True, 0)
    return {"total": total, "completed": completed, "open": total - completed, "overdue": overdue}


def _fetch_activity(user_id: str) -> list[dict[str, Any]]:
    query = Activity.objects(user=ObjectId(user_id)).order_by("-at", "-id").limit(ACTIVITY_MAXLEN)
    return db.read(lambda: [entry.to_dict() for entry in query])


def _stored_date(value: Any) -> Any:
    return to_bson_datetime(value) if value is not None else None


FETCHERS: dict[str, Callable[..., Any]] = {
    "task": _fetch_task,
    "task_list": _fetch_page,
    "stats": _fetch_stats,
}


def forget_user(user_id: str) -> None:
    """Delete a deleted account's tasks and activity, and every cache entry made of them."""
    oid = ObjectId(user_id)
    task_ids = db.read(lambda: [str(t.id) for t in Task.objects(owner=oid).only("id")])
    Task.objects(owner=oid).delete()
    Activity.objects(user=oid).delete()
    tags = {tag for task_id in task_ids for tag in _affected_tags(user_id, task_id)}
    cache.invalidate_tags(*tags, keys.collection_tag(user_id), keys.responses_tag(user_id))
    cache.delete(keys.activity(user_id))
