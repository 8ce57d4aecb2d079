"""How task changes are made: created, updated and deleted in MongoDB (under an If-Match
precondition, when the request has one), then brought to the cache by the write strategy
(invalidate or write-through here; write-behind, which answers before MongoDB has the change, is
``write_behind.py``); and a deleted account's tasks forgotten."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from flask import current_app
from mongoengine.errors import OperationError
from pymongo.errors import PyMongoError
from werkzeug.exceptions import PreconditionFailed

from taskapp import db, keys
from taskapp.extensions import cache
from taskapp.models import PRIORITY_RANK, Activity, Task, to_bson_datetime, utcnow
from taskapp.tasks.queries import ACTIVITY_MAXLEN, canonical_id, versioned
from taskapp.tasks.reads import current_task, public
from taskapp.tasks.schemas import TaskCreate, TaskUpdate
from taskapp.tasks.strategies import Precondition, WriteStrategy, chosen


def create_task(user_id: str, data: TaskCreate) -> dict[str, Any]:
    """Store a new task for the user and return it."""
    now = utcnow()
    fields = data.model_dump()
    fields["due_date"] = stored_date(fields["due_date"])
    task = Task(id=ObjectId(), owner=ObjectId(user_id), created_at=now, updated_at=now, **fields)
    lease = chosen().writes.lease(user_id, str(task.id))
    task.save(force_insert=True)
    _record_change(user_id, "created", versioned(task), lease)
    return task.to_dict()


def update_task(
    user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None = None
) -> dict[str, Any] | None:
    """Apply the sent fields to one of the user's tasks; None when unknown or foreign, 412 when
    ``precondition`` does not hold for the task as it is."""
    tid = canonical_id(task_id)
    if tid is None:
        return None
    return chosen().writes.update(user_id, tid, data, precondition)


def _checked(user_id: str, tid: str, precondition: Precondition | None) -> dict[str, Any] | None:
    """The task (with its version) when ``precondition`` holds for it, None when it is gone;
    412 when it does not hold. Without a precondition: {} (nothing to compare, nothing read)."""
    if precondition is None:
        return {}
    return read_checked(user_id, tid, precondition)


def read_checked(
    user_id: str, tid: str, precondition: Precondition | None
) -> dict[str, Any] | None:
    """The task as read now (with its version), None when it is gone; 412 when
    ``precondition`` (if any) does not hold for it."""
    current = current_task(user_id, tid)
    if current is not None and precondition is not None and not precondition(public(current)):
        raise _precondition_failed()
    return current


def _precondition_failed() -> PreconditionFailed:
    return PreconditionFailed("the task has changed: If-Match names none of its current ETags")


def _update_in_mongodb(
    user_id: str,
    tid: str,
    data: TaskUpdate,
    precondition: Precondition | None = None,
    lease: str = "",
) -> dict[str, Any] | None:
    """PATCH straight to MongoDB (invalidate and write-through, with its lease).

    With a precondition the write is filtered by the version it was checked against, so a
    change landing in between makes it match nothing (then 412), never overwrite that change.
    """
    current = _checked(user_id, tid, precondition)
    if current is None:
        return None
    update: dict[str, Any] = {"set__updated_at": utcnow(), "inc__version": 1}
    for name, value in data.changes().items():
        if name == "due_date" and value is None:
            update["unset__due_date"] = True  # a cleared date is absent, as in a new task
        else:
            update[f"set__{name}"] = stored_date(value) if name == "due_date" else value
        if name == "priority":
            update["set__priority_rank"] = PRIORITY_RANK[value]
    # find-and-modify filtered by owner: a foreign id matches nothing, in one atomic step.
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id), **_same_version(current)).modify(
        new=True, **update
    )
    if task is None:
        _gone_or_changed(user_id, tid, current)
        return None
    _record_change(user_id, "updated", versioned(task), lease)
    return task.to_dict()


def _same_version(current: dict[str, Any]) -> dict[str, Any]:
    """The MongoDB filter of "still the version checked", for a task read under a precondition
    (nothing without one, and nothing for a write-behind state, whose version MongoDB may not
    have yet)."""
    if "version" not in current or not chosen().writes.versions_in_mongodb:
        return {}
    return {"version": current["version"]}


def _gone_or_changed(user_id: str, tid: str, current: dict[str, Any]) -> None:
    """After a filtered write matched nothing: None when the task is gone, else 412 (it changed
    since the check)."""
    if not _same_version(current):
        return
    query = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id))
    if db.read(lambda: query.count()):
        raise _precondition_failed()


def delete_task(user_id: str, task_id: str, precondition: Precondition | None = None) -> bool:
    """Delete one of the user's tasks; False when unknown or foreign, 412 when
    ``precondition`` does not hold for the task as it is."""
    tid = canonical_id(task_id)
    if tid is None:
        return False
    current = _checked(user_id, tid, precondition)
    if current is None:
        return False
    undo = chosen().writes.before_delete(user_id, tid)
    try:
        task = Task.objects(
            id=ObjectId(tid), owner=ObjectId(user_id), **_same_version(current)
        ).modify(remove=True)
    except (PyMongoError, OperationError):  # MongoDB refused or timed out: not deleted
        undo()  # the task's pending changes stand
        raise
    if task is None:
        _gone_or_changed(user_id, tid, current)
        return False
    _record_change(user_id, "deleted", versioned(task))
    return True


def _record_change(user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
    """Record the action, bring the cache up to date by TASK_WRITE_STRATEGY, extend the feed.

    Runs after the MongoDB write succeeded, so a reader that refills the cache sees the change.
    ``task`` is the task as written with its version (as it was, for a deletion). invalidate:
    drop every entry the change affects. write-through: the same, and store the task as written
    in the same atomic step, so the next read of it is a hit (``lease``: read before the write).
    """
    task_id = task["id"]
    entry = Activity(
        user=ObjectId(user_id), action=action, task_id=ObjectId(task_id), title=task["title"]
    )
    entry.save()
    chosen().writes.changed(user_id, action, task, lease)
    cache.list_push(keys.activity(user_id), entry.to_dict(), maxlen=ACTIVITY_MAXLEN)


def affected_tags(user_id: str, task_id: str) -> list[str]:
    """Everything a change of one task can make wrong: the task, the lists and stats, responses."""
    return [
        keys.task_tag(user_id, task_id),
        keys.collection_tag(user_id),
        keys.responses_tag(user_id),
    ]


class InvalidateWrites(WriteStrategy):
    """invalidate: a change is written to MongoDB, then drops every entry it affects, through
    tags; the next read refills."""

    def update(
        self, user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None
    ) -> dict[str, Any] | None:
        lease = self.lease(user_id, task_id)
        return _update_in_mongodb(user_id, task_id, data, precondition, lease)

    def changed(self, user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
        cache.invalidate_tags(*affected_tags(user_id, task["id"]))


class WriteThroughWrites(InvalidateWrites):
    """write-through: the same drops, and the task as written is stored in the same atomic step,
    so the next read of it is a hit. The task's own cache version is read before the MongoDB
    write (the lease): when another change came in between, the entry is dropped instead, so
    writers that overlap never store an older task over a newer one."""

    def lease(self, user_id: str, task_id: str) -> str:
        return cache.write_lease(keys.task(user_id, task_id))

    def changed(self, user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
        if action == "deleted":
            return super().changed(user_id, action, task)
        task_id = task["id"]
        cache.write_through(
            keys.task(user_id, task_id),
            task,
            lease,
            ttl=current_app.config["TASK_CACHE_TTL"],
            tags=[keys.task_tag(user_id, task_id)],
            invalidate=affected_tags(user_id, task_id),
        )


def stored_date(value: Any) -> Any:
    """A date as MongoDB stores it (None stays None)."""
    return to_bson_datetime(value) if value is not None else None


def forget_user(user_id: str) -> None:
    """Delete a deleted account's tasks and activity, and every cache entry made of them."""
    oid = ObjectId(user_id)
    task_ids = db.read(lambda: [str(t.id) for t in Task.objects(owner=oid).only("id")])
    Task.objects(owner=oid).delete()
    Activity.objects(user=oid).delete()
    tags = {tag for task_id in task_ids for tag in affected_tags(user_id, task_id)}
    tags |= {keys.collection_tag(user_id), keys.responses_tag(user_id)}  # also with no task
    cache.invalidate_tags(*tags)
    cache.delete(keys.activity(user_id))
