"""Task routes (under /api/v1): thin views over the task service."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Blueprint, g
from werkzeug.exceptions import NotFound

from taskapp.auth.tokens import login_required
from taskapp.http_cache import cached_response
from taskapp.openapi import response
from taskapp.tasks import service
from taskapp.tasks.schemas import (
    ActivityFeed,
    ActivityQuery,
    ListQuery,
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskStats,
    TaskUpdate,
)
from taskapp.validation import arguments, body

bp = Blueprint("tasks", __name__)

T = TypeVar("T")


def found(value: T | None) -> T:
    """``value``, or 404 when the service found nothing (unknown, foreign or malformed id)."""
    if value is None:
        raise NotFound("task not found")
    return value


@bp.get("/tasks")
@response(TaskPage, cached=True)
@cached_response
@login_required
@arguments(ListQuery)
def list_tasks(query: ListQuery) -> dict[str, Any]:
    """List your tasks one page at a time: newest first, or filtered and sorted as you ask."""
    return service.list_tasks(g.user_id, query)


@bp.post("/tasks")
@response(TaskOut, status=201)
@login_required
@body(TaskCreate)
def create_task(body: TaskCreate) -> tuple[dict[str, Any], int]:
    """Create a task."""
    return service.create_task(g.user_id, body), 201


@bp.get("/tasks/stats")
@response(TaskStats, cached=True)
@cached_response
@login_required
def task_stats() -> dict[str, int]:
    """Count your tasks: total, completed, open and overdue."""
    return service.stats(g.user_id)


@bp.get("/tasks/<objectid:task_id>")
@response(TaskOut, cached=True)
@cached_response
@login_required
def get_task(task_id: str) -> dict[str, Any]:
    """Get one of your tasks."""
    return found(service.get_task(g.user_id, task_id))


@bp.patch("/tasks/<objectid:task_id>")
@response(TaskOut)
@login_required
@body(TaskUpdate)
def update_task(task_id: str, body: TaskUpdate) -> dict[str, Any]:
    """Change any subset of a task's fields."""
    return found(service.update_task(g.user_id, task_id, body))


@bp.delete("/tasks/<objectid:task_id>")
@response(None, status=204)
@login_required
def delete_task(task_id: str) -> tuple[str, int]:
    """Delete one of your tasks."""
    if not service.delete_task(g.user_id, task_id):
        raise NotFound("task not found")
    return "", 204


@bp.get("/activity")
@response(ActivityFeed, cached=True)
@cached_response
@login_required
@arguments(ActivityQuery)
def activity(query: ActivityQuery) -> dict[str, Any]:
    """Your most recent actions on tasks, newest first."""
    return service.activity(g.user_id, query.limit)
