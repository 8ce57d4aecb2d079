"""The task service: every MongoDB access and every caching decision for tasks.

Views never touch the cache. TASK_READ_STRATEGY and TASK_WRITE_STRATEGY pick a strategy object
each, once, in ``init_app``: every read goes through the read strategy (cache-aside, read-through
or refresh-ahead) and every change through the write strategy (invalidate, write-through or
write-behind, whose changes reach MongoDB through ``apply_pending``, run by the flushers).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import mongoengine
from bson import ObjectId
from bson.errors import InvalidDocument
from flask import Flask, current_app
from mongoengine.errors import OperationError
from pymongo.errors import DocumentTooLarge, PyMongoError, WriteError
from werkzeug.exceptions import PreconditionFailed, ServiceUnavailable

from taskapp import db, keys
from taskapp.cache import ObjectDeleted, SourceUnavailable, Unavailable
from taskapp.extensions import cache
from taskapp.models import PRIORITY_RANK, Activity, Task, isoformat, to_bson_datetime, utcnow
from taskapp.tasks.schemas import ListQuery, TaskCreate, TaskOut, TaskUpdate

ACTIVITY_MAXLEN = 100  # feed items kept in Redis and read back from MongoDB on a miss
ACTIVITY_TTL = 3600
STAGE_ATTEMPTS = 5
STAGE_REPLY_MARGIN_MS = 50  # for a stage's reply to come back, and the hosts' clocks to differ
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
    try:
        found = cache.write_behind().pending_many(task_keys)
    except Unavailable:
        raise _pending_unavailable() from None
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


#: The fields of a task as the API shows it, in the order Task.to_dict gives them.
PUBLIC_FIELDS = tuple(TaskOut.model_fields)


def _public(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the API shows it (without the bookkeeping fields), its fields always in one
    order: the same task is the same bytes, hence the same ETag, whether it was read from
    MongoDB or from a write-behind state (whose JSON comes back from Lua in another order)."""
    return {k: task[k] for k in PUBLIC_FIELDS if k in task}


# Writes


def create_task(user_id: str, data: TaskCreate) -> dict[str, Any]:
    """Store a new task for the user and return it."""
    now = utcnow()
    fields = data.model_dump()
    fields["due_date"] = _stored_date(fields["due_date"])
    task = Task(id=ObjectId(), owner=ObjectId(user_id), created_at=now, updated_at=now, **fields)
    lease = _writes().lease(user_id, str(task.id))
    task.save(force_insert=True)
    _changed(user_id, "created", _versioned(task), lease)
    return task.to_dict()


#: A condition on a task as the API shows it (If-Match): the change is made only when it holds.
Precondition = Callable[[dict[str, Any]], bool]


def update_task(
    user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None = None
) -> dict[str, Any] | None:
    """Apply the sent fields to one of the user's tasks; None when unknown or foreign, 412 when
    ``precondition`` does not hold for the task as it is."""
    tid = canonical_id(task_id)
    if tid is None:
        return None
    return _writes().update(user_id, tid, data, precondition)


def _checked(user_id: str, tid: str, precondition: Precondition | None) -> dict[str, Any] | None:
    """The task (with its version) when ``precondition`` holds for it, None when it is gone;
    412 when it does not hold. Without a precondition: {} (nothing to compare, nothing read)."""
    if precondition is None:
        return {}
    return _read_checked(user_id, tid, precondition)


def _read_checked(
    user_id: str, tid: str, precondition: Precondition | None
) -> dict[str, Any] | None:
    """The task as read now (with its version), None when it is gone; 412 when
    ``precondition`` (if any) does not hold for it."""
    current = _current_task(user_id, tid)
    if current is not None and precondition is not None and not precondition(_public(current)):
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
            update[f"set__{name}"] = _stored_date(value) if name == "due_date" else value
        if name == "priority":
            update["set__priority_rank"] = PRIORITY_RANK[value]
    # find-and-modify filtered by owner: a foreign id matches nothing, in one atomic step.
    task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id), **_same(current)).modify(
        new=True, **update
    )
    if task is None:
        _gone_or_changed(user_id, tid, current)
        return None
    _changed(user_id, "updated", _versioned(task), lease)
    return task.to_dict()


def _same(current: dict[str, Any]) -> dict[str, Any]:
    """The MongoDB filter of "still the version checked", for a task read under a precondition
    (nothing without one, and nothing for a write-behind state, whose version MongoDB may not
    have yet)."""
    if "version" not in current or not _writes().versions_in_mongodb:
        return {}
    return {"version": current["version"]}


def _gone_or_changed(user_id: str, tid: str, current: dict[str, Any]) -> None:
    """After a filtered write matched nothing: None when the task is gone, else 412 (it changed
    since the check)."""
    if not _same(current):
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
    undo = _writes().before_delete(user_id, tid)
    try:
        task = Task.objects(id=ObjectId(tid), owner=ObjectId(user_id), **_same(current)).modify(
            remove=True
        )
    except (PyMongoError, OperationError):  # MongoDB refused or timed out: not deleted
        undo()  # the task's pending changes stand
        raise
    if task is None:
        _gone_or_changed(user_id, tid, current)
        return False
    _changed(user_id, "deleted", _versioned(task))
    return True


def _changed(user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
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
    _writes().changed(user_id, action, task, lease)
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

    versions_in_mongodb = True  # a task's version as read is MongoDB's (see _same)

    def pending(self, key: str) -> dict[str, Any] | None:
        """A change of the task not in MongoDB yet (write-behind only)."""
        return None

    def overlay(self, user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """List items with changes not in MongoDB yet (write-behind only)."""
        return items

    def update(
        self, user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None
    ) -> dict[str, Any] | None:
        lease = self.lease(user_id, task_id)
        return _update_in_mongodb(user_id, task_id, data, precondition, lease)

    def lease(self, user_id: str, task_id: str) -> str:
        """Read before a write to MongoDB (write-through's lease)."""
        return ""

    def before_delete(self, user_id: str, task_id: str) -> Callable[[], None]:
        """Run before a task is deleted from MongoDB; returns what to run if the delete fails."""
        return _nothing

    def changed(self, user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
        """Bring the cache up to date after MongoDB has the change."""
        cache.invalidate_tags(*_affected_tags(user_id, task["id"]))

    def start(self, app: Flask) -> None:
        """Start what this strategy runs in each serving process (see ``start_flushers``)."""

    def stop(self) -> None:
        """Stop what ``start`` started in this process (see ``stop_flushers``)."""


class WriteThrough(Invalidate):
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
            invalidate=_affected_tags(user_id, task_id),
        )


class WriteBehind(Invalidate):
    """write-behind: a PATCH is answered from Redis at once and applied to MongoDB by flushers;
    reads see the pending change first."""

    versions_in_mongodb = False  # a pending state's version is ahead of MongoDB's

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flusher: Any = None
        self._pid: int | None = None

    def pending(self, key: str) -> dict[str, Any] | None:
        try:
            return cache.write_behind().pending(key)
        except Unavailable:
            raise _pending_unavailable() from None

    def overlay(self, user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _with_pending(user_id, items)

    def update(
        self, user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None
    ) -> dict[str, Any] | None:
        return _stage(user_id, task_id, data, precondition)

    def before_delete(self, user_id: str, task_id: str) -> Callable[[], None]:
        """Tombstone the task before MongoDB deletes it: a PATCH that read it before the delete
        is refused (404) instead of staging a state that would bring it back."""
        key = keys.task(user_id, task_id)
        write_behind = cache.write_behind()
        try:
            dropped = write_behind.tombstone(key)
        except Unavailable:
            raise _queue_unavailable() from None

        def undo() -> None:
            try:
                write_behind.revive(key, task_id, dropped)
            except Unavailable:  # the tombstone expires; the queued changes still flush
                log.warning("write-behind: could not lift the tombstone of %s", task_id)

        return undo

    def start(self, app: Flask) -> None:
        """Run a flusher in this process (idempotent; a forked child makes its own)."""
        with self._lock:
            if self._flusher is None or self._pid != os.getpid():
                with app.app_context():
                    self._flusher = cache.flusher(apply_pending)
                self._pid = os.getpid()
            self._flusher.start()

    def stop(self) -> None:
        """Stop this process's flusher after the batch in hand (a stopping worker hands its
        tasks on settled, not held until their leases run out)."""
        with self._lock:
            if self._flusher is not None and self._pid == os.getpid():
                self._flusher.stop()


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


def _stage(
    user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None = None
) -> dict[str, Any] | None:
    """Write-behind PATCH: queue the change in Redis and answer with the task as changed.

    MongoDB receives it within WRITE_BEHIND_FLUSH_MS from a flusher. Reads of the task see it at
    once (its pending state comes first); list pages show it over their MongoDB items. The
    activity record is saved first: a PATCH answered 503 because MongoDB refused it was never
    queued, so it never reaches MongoDB later.
    """
    _require_durable()
    change = {
        name: isoformat(_stored_date(value)) if name == "due_date" else value
        for name, value in data.changes().items()
    }
    change["updated_at"] = isoformat(utcnow())
    read_at_ms = _now_ms()
    current = _read_latest(user_id, task_id, precondition)
    if current is None:
        return None
    entry = Activity(
        user=ObjectId(user_id),
        action="updated",
        task_id=ObjectId(task_id),
        title=change.get("title", current["title"]),
    )
    entry.save()
    try:
        state = _queue_change(user_id, task_id, current, read_at_ms, change, precondition)
    except BaseException:
        _forget(entry)  # the change was refused: so is its record
        raise
    if state is None:
        _forget(entry)
        return None
    cache.invalidate_tags(keys.collection_tag(user_id), keys.responses_tag(user_id))
    cache.list_push(keys.activity(user_id), entry.to_dict(), maxlen=ACTIVITY_MAXLEN)
    return _public(state)


def _read_latest(
    user_id: str, tid: str, precondition: Precondition | None
) -> dict[str, Any] | None:
    """The task as it is now, for a write-behind change (see ``_read_checked``).

    What this process's memory holds is checked against Redis again: this request learned
    the versions that check it when it began, and a flush that settled since (in any process)
    must be seen, or every stage over the older task is refused again.
    """
    cache.recheck_memory()
    return _read_checked(user_id, tid, precondition)


def _now_ms() -> int:
    """This host's clock, in ms since the epoch (what STAGE compares with Redis's)."""
    return int(time.time() * 1000)


def _queue_change(
    user_id: str,
    task_id: str,
    current: dict[str, Any],
    read_at_ms: int,
    change: dict[str, Any],
    precondition: Precondition | None = None,
) -> dict[str, Any] | None:
    """Stage ``change`` over the task as read at ``read_at_ms``; the new pending state, None
    when the task is gone (deleted since it was read), 412 when a change that came between no
    longer meets ``precondition``, 503 when Redis cannot take it."""
    write_behind = cache.write_behind()
    # A stage that Redis runs later than this (it sat in the socket of a paused server) is
    # refused there: this request gives up waiting (503) one socket timeout after it sends,
    # so the deadline leaves 50 ms (at least half the timeout) for the reply and clock skew.
    timeout_ms = current_app.config["REDIS_SOCKET_TIMEOUT"] * 1000
    budget_ms = max(timeout_ms / 2, timeout_ms - STAGE_REPLY_MARGIN_MS)
    for _ in range(STAGE_ATTEMPTS):
        try:
            state = write_behind.stage(
                keys.task(user_id, task_id),
                task_id,
                {**current, "owner": user_id},
                change,
                deadline_ms=int(_now_ms() + budget_ms),
                read_at_ms=read_at_ms,
            )
        except ObjectDeleted:
            return None  # a DELETE came between our read and our stage: it wins
        except Unavailable:
            raise _queue_unavailable() from None
        if state is not None:
            return state
        # A flush between our read and our stage: read again.
        read_at_ms = _now_ms()
        fresh = _read_latest(user_id, task_id, precondition)
        if fresh is None:
            return None
        current = fresh
    raise _queue_unavailable()


def _forget(entry: Activity) -> None:
    """Delete the activity record of a change that was refused (best effort: it is history)."""
    try:
        entry.delete()
    except PyMongoError as exc:
        log.warning("write-behind: the record of a refused change stays (%s)", exc)


def _require_durable() -> None:
    """Refuse write-behind changes (503) on a Redis that would lose them in a crash or evict
    them, unless WRITE_BEHIND_ALLOW_VOLATILE: start-up checks it too, but Redis may have been
    down then."""
    if current_app.config["WRITE_BEHIND_ALLOW_VOLATILE"]:
        return
    try:
        volatile = cache.write_behind().volatile()
    except Unavailable:
        raise _queue_unavailable() from None
    if volatile:
        raise ServiceUnavailable(
            f"the write-behind queue's Redis runs with {volatile} and could lose answered "
            "changes; the change was not made"
        )


def _nothing() -> None:
    """Nothing to undo."""


def _pending_unavailable() -> ServiceUnavailable:
    """A write-behind read while Redis cannot say which changes are still queued: MongoDB alone
    may be older than an answered PATCH, so nothing is answered from it."""
    return ServiceUnavailable(
        "the write-behind queue is unavailable; changes not yet in the database cannot be "
        "read, retry shortly",
        retry_after=1,
    )


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
    try:
        Task.objects(id=ObjectId(task_id), version__lt=state["version"]).update(**update)
    except Exception as exc:
        if _refused_document(exc):
            raise  # this task's alone: counted, a dead letter after a few tries
        # Anything else may be MongoDB's (down, busy, not allowed): hold every change and
        # count no try, so an answered change is never given up for a passing fault.
        raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc
    tags = _affected_tags(state["owner"], task_id)
    if cache.invalidate_tags(*tags) < len(tags):
        # Held back: the flusher must not settle yet. Settling drops the pending state, the
        # only thing that hides, from every process, what the cache kept of the task before.
        raise Unavailable("the cache's Redis did not take the invalidation; settled later")


def _refused_document(exc: Exception) -> bool:
    """Whether MongoDB refused this document itself (it would refuse it again), not the write.

    mongoengine raises its ``OperationError`` from within pymongo's error (``__context__``).
    """
    cause = exc.__context__ if isinstance(exc, OperationError) else exc
    return isinstance(
        cause, WriteError | DocumentTooLarge | InvalidDocument | mongoengine.ValidationError
    )


def _parse_date(value: str | None) -> datetime | None:
    return to_bson_datetime(datetime.fromisoformat(value)) if value else None


def init_app(app: Flask) -> None:
    """Choose the read and write strategies once; register the loaders of read-through."""
    for family, fetch in FETCHERS.items():
        cache.register_loader(family, fetch)
    reads = READ_STRATEGIES[app.config["TASK_READ_STRATEGY"]]()
    writes = WRITE_STRATEGIES[app.config["TASK_WRITE_STRATEGY"]]()
    app.extensions[EXTENSION] = Strategies(reads, writes)


def start_flushers(app: Flask) -> None:
    """Start this serving process's background work (the write-behind flusher), with the
    worker: gunicorn's ``post_worker_init`` calls it after the fork. CLI runs never do (a
    dedicated flusher is ``flask --app taskapp write-behind run``). Any other WSGI app served
    with ``gunicorn.conf.py`` (the benchmarks' bare Flask apps) has nothing to start."""
    strategies = getattr(app, "extensions", {}).get(EXTENSION)
    if strategies is not None:
        strategies.writes.start(app)


def stop_flushers(app: Flask) -> None:
    """Stop this serving process's background work as its worker exits (gunicorn's
    ``worker_exit``): the flusher finishes the batch in hand instead of dying in it."""
    strategies = getattr(app, "extensions", {}).get(EXTENSION)
    if strategies is not None:
        strategies.writes.stop()


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
    tags |= {keys.collection_tag(user_id), keys.responses_tag(user_id)}  # also with no task
    cache.invalidate_tags(*tags)
    cache.delete(keys.activity(user_id))
