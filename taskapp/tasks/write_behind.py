"""Write-behind: a PATCH is answered from Redis at once (its change staged on the cache's
``WriteBehindQueue``, with retries when a flush outdated what it read) and applied to MongoDB by
flushers (``apply_pending``); reads see the pending changes first."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import mongoengine
from bson import ObjectId
from bson.errors import InvalidDocument
from flask import Flask, current_app
from mongoengine.errors import OperationError
from pymongo.errors import DocumentTooLarge, PyMongoError, WriteError
from werkzeug.exceptions import ServiceUnavailable

from taskapp import keys
from taskapp.cache import ObjectDeleted, SourceUnavailable, Unavailable
from taskapp.extensions import cache
from taskapp.models import PRIORITY_RANK, Activity, Task, isoformat, to_bson_datetime, utcnow
from taskapp.tasks.queries import ACTIVITY_MAXLEN
from taskapp.tasks.reads import current_task, public
from taskapp.tasks.schemas import TaskUpdate
from taskapp.tasks.strategies import Precondition
from taskapp.tasks.writes import InvalidateWrites, affected_tags, read_checked, stored_date

STAGE_ATTEMPTS = 5
STAGE_REPLY_MARGIN_MS = 50  # for a stage's reply to come back, and the hosts' clocks to differ
TASK_FIELDS = ("title", "description", "completed", "priority", "due_date", "updated_at")
log = logging.getLogger("taskapp.tasks")


class WriteBehindWrites(InvalidateWrites):
    """write-behind: a PATCH is answered from Redis at once and applied to MongoDB by flushers;
    reads see the pending change first. A task is created and deleted in MongoDB at once, and
    the cache invalidated, as under invalidate."""

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
        return _stage_change(user_id, task_id, data, precondition)

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
            fresh = current_task(user_id, item["id"])
            if fresh is not None:  # else deleted since: gone from the page
                result.append(fresh)
        else:
            result.append(item)
    return result


def _stage_change(
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
        name: isoformat(stored_date(value)) if name == "due_date" else value
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
    return public(state)


def _read_latest(
    user_id: str, tid: str, precondition: Precondition | None
) -> dict[str, Any] | None:
    """The task as it is now, for a write-behind change (see ``_read_checked``).

    What this process's memory holds is checked against Redis again: this request learned
    the versions that check it when it began, and a flush that settled since (in any process)
    must be seen, or every stage over the older task is refused again.
    """
    cache.recheck_memory()
    return read_checked(user_id, tid, precondition)


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
    tags = affected_tags(state["owner"], task_id)
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
