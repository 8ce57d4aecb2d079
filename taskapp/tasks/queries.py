"""MongoDB's side of the task service: the reads the cache fills from (``FETCHERS``), each through
``db.read`` and materialised inside it, and the one spelling of a task id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import ObjectId

from taskapp import db
from taskapp.models import Activity, Task, to_bson_datetime, utcnow
from taskapp.tasks.schemas import ListQuery

ACTIVITY_MAXLEN = 100  # feed items kept in Redis and read back from MongoDB on a miss
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


def canonical_id(raw: str) -> str | None:
    """The canonical (lowercase hex) form of an ObjectId string, None when malformed.

    Ids become part of cache keys and tags; one spelling per id means an invalidation always
    reaches every cached copy.
    """
    return str(ObjectId(raw)) if isinstance(raw, str) and ObjectId.is_valid(raw) else None


def versioned(task: Task) -> dict[str, Any]:
    """A task document as the service passes it on: its fields and its version."""
    return {**task.to_dict(), "version": task.version}


def fetch_task(user_id: str, task_id: str) -> dict[str, Any] | None:
    """One of the user's tasks with its version, None when unknown or foreign."""
    query = Task.objects(id=ObjectId(task_id), owner=ObjectId(user_id))
    task = db.read(lambda: query.first())
    return versioned(task) if task is not None else None


def fetch_page(user_id: str, params: ListQuery) -> dict[str, Any]:
    """One page of the user's tasks, filtered and ordered as ``params`` say, and their total."""
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
    items = db.read(lambda: [versioned(task) for task in page_query])
    total = db.read(lambda: query.count())
    return {"items": items, "page": page, "per_page": per_page, "total": total}


def fetch_stats(user_id: str) -> dict[str, int]:
    """Counts over the user's tasks: total, completed, open and overdue."""
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


def fetch_activity(user_id: str) -> list[dict[str, Any]]:
    """The user's most recent actions (ACTIVITY_MAXLEN of them), newest first."""
    query = Activity.objects(user=ObjectId(user_id)).order_by("-at", "-id").limit(ACTIVITY_MAXLEN)
    return db.read(lambda: [entry.to_dict() for entry in query])


#: The key families the cache fills from MongoDB, and their fetchers (read-through's loaders).
FETCHERS: dict[str, Callable[..., Any]] = {
    "task": fetch_task,
    "task_list": fetch_page,
    "stats": fetch_stats,
}
