"""The task service: every MongoDB access and every caching decision for tasks.

Views never touch the cache. Reads go through ``_read`` (cache-aside today) and every change goes
through ``_changed`` (invalidate today), the two places where TASK_READ_STRATEGY and
TASK_WRITE_STRATEGY will plug in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import ObjectId
from flask import current_app

from taskapp import db, keys
from taskapp.extensions import cache
from taskapp.models import Activity, Task, to_bson_datetime, utcnow
from taskapp.tasks.schemas import TaskCreate, TaskUpdate

ACTIVITY_MAXLEN = 100  # feed items kept in Redis and read back from MongoDB on a miss
ACTIVITY_TTL = 3600
Fetch = Callable[[], Any]


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
    config = current_app.config
    return _read(
        keys.task(user_id, tid),
        lambda: _fetch_task(user_id, tid),
        ttl=lambda task: (
            config["TASK_CACHE_TTL"] if task is not None else config["NEGATIVE_CACHE_TTL"]
        ),
        tags=[keys.task_tag(user_id, tid)],
    )


def list_tasks(user_id: str, page: int, per_page: int, completed: bool | None) -> dict[str, Any]:
    """One page of the user's tasks, newest first, optionally only done or open ones."""
    return _read(
        keys.task_list(user_id, page, per_page, completed),
        lambda: _fetch_page(user_id, page, per_page, completed),
        ttl=current_app.config["TASK_LIST_CACHE_TTL"],
        tags=[keys.collection_tag(user_id)],
    )


def stats(user_id: str) -> dict[str, int]:
    """Counts over the user's tasks: total, completed, open and overdue."""
    return _read(
        keys.stats(user_id),
        lambda: _fetch_stats(user_id),
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


def _read(key: str, fetch: Fetch, ttl: int | Callable[[Any], int], tags: list[str]) -> Any:
    """Cache-aside: the cached value, else ``fetch()`` stored under ``tags``."""
    return cache.get_or_set(key, fetch, ttl=ttl, tags=tags)


# Writes


def create_task(user_id: str, data: TaskCreate) -> dict[str, Any]:
    """Store a new task for the user and return it."""
    now = utcnow()
    fields = data.model_dump()
    fields["due_date"] = _stored_date(fields["due_date"])
    task = Task(owner=ObjectId(user_id), created_at=now, updated_at=now, **fields)
    task.save()
    item = task.to_dict()
    _changed(user_id, "created", item)
    return item


def update_task(user_id: str, task_id: str, data: TaskUpdate) -> dict[str, Any] | None:
    """Apply the sent fields to one of the user's tasks; None when unknown or foreign."""
    tid = canonical_id(task_id)
    if tid is None:
        return None
    update: dict[str, Any] = {"set__updated_at": utcnow()}
    for name, value in data.changes().items():
        if name == "due_date" and value is None:
            update["unset__due_date"] = True  # a cleared date is absent, as in a new task
        else:
            update[f"set__{name}"] = _stored_date(value) if name == "due_date" else value
    # find-and-modify filtered by owner: a foreign id matches nothing, in one atomic step.
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id)).modify(new=True, **update)
    if task is None:
        return None
    item = task.to_dict()
    _changed(user_id, "updated", item)
    return item


def delete_task(user_id: str, task_id: str) -> bool:
    """Delete one of the user's tasks; False when unknown or foreign."""
    tid = canonical_id(task_id)
    if tid is None:
        return False
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id)).modify(remove=True)
    if task is None:
        return False
    _changed(user_id, "deleted", task.to_dict())
    return True


def _changed(user_id: str, action: str, task: dict[str, Any]) -> None:
    """Invalidate strategy: record the action, drop every cached entry it affects, extend the feed.

    Runs after the MongoDB write succeeded, so a reader that refills the cache sees the change.
    ``task`` is the task as written (as it was, for a deletion).
    """
    task_id = task["id"]
    entry = Activity(
        user=ObjectId(user_id), action=action, task_id=ObjectId(task_id), title=task["title"]
    )
    entry.save()
    cache.invalidate_tags(
        keys.task_tag(user_id, task_id), keys.collection_tag(user_id), keys.responses_tag(user_id)
    )
    cache.list_push(keys.activity(user_id), entry.to_dict(), maxlen=ACTIVITY_MAXLEN)


# MongoDB reads (each through db.read, materialised inside it)


def _fetch_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    query = Task.objects(id=ObjectId(task_id), owner=ObjectId(user_id))
    task = db.read(lambda: query.first())
    return task.to_dict() if task is not None else None


def _fetch_page(user_id: str, page: int, per_page: int, completed: bool | None) -> dict[str, Any]:
    filters: dict[str, Any] = {"owner": ObjectId(user_id)}
    if completed is not None:
        filters["completed"] = completed
    query = Task.objects(**filters)
    # _id breaks ties between tasks created in the same millisecond, so pages never overlap.
    page_query = query.order_by("-created_at", "-id").skip((page - 1) * per_page).limit(per_page)
    items = db.read(lambda: [task.to_dict() for task in page_query])
    total = db.read(lambda: query.count())
    return {"items": items, "page": page, "per_page": per_page, "total": total}


def _fetch_stats(user_id: str) -> dict[str, int]:
    pipeline = [
        {"$match": {"owner": ObjectId(user_id)}},
        {
            "$facet": {
                "total": [{"$count": "n"}],
                "completed": [{"$match": {"completed": True}}, {"$count": "n"}],
                # $lt on a date matches only dates: tasks without a due date are never overdue.
                "overdue": [
                    {"$match": {"completed": False, "due_date": {"$lt": utcnow()}}},
                    {"$count": "n"},
                ],
            }
        },
    ]
    (facets,) = db.read(lambda: list(Task.objects.aggregate(pipeline)))
    total, completed, overdue = (
        facets[name][0]["n"] if facets[name] else 0 for name in ("total", "completed", "overdue")
    )
    return {"total": total, "completed": completed, "open": total - completed, "overdue": overdue}


def _fetch_activity(user_id: str) -> list[dict[str, Any]]:
    query = Activity.objects(user=ObjectId(user_id)).order_by("-at", "-id").limit(ACTIVITY_MAXLEN)
    return db.read(lambda: [entry.to_dict() for entry in query])


def _stored_date(value: Any) -> Any:
    return to_bson_datetime(value) if value is not None else None
