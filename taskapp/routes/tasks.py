"""Task routes (under /api/v1): thin views over the task service."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, request, url_for
from werkzeug.exceptions import NotFound
from werkzeug.http import parse_etags, unquote_etag

from taskapp.auth.identity import login_required
from taskapp.cache import etag as user_etag
from taskapp.openapi import response
from taskapp.responses import cached_response, no_content, signed_in
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


def task_response(task: dict[str, Any], status: int = 200) -> Response:
    """``task`` as JSON with its ETag: the bytes and the ETag a GET of the task answers."""
    resp = jsonify(task)
    resp.status_code = status
    resp.headers["ETag"] = user_etag(g.user_id, resp.get_data())
    return resp


def etag_of(task: dict[str, Any]) -> str:
    """The caller's ETag of ``task``: the response cache's, over the bytes a GET would send."""
    return user_etag(g.user_id, jsonify(task).get_data())


def if_match() -> service.Precondition | None:
    """The request's If-Match as a condition on the task, None without the header.

    Strong comparison (RFC 9110 section 13.1.1): a weak ``W/"..."`` never matches, since a weak
    tag does not promise the same bytes; ``*`` matches any existing task.
    """
    header = request.headers.get("If-Match")
    if header is None:
        return None
    etags = parse_etags(header)
    return lambda task: etags.contains(unquote_etag(etag_of(task))[0])


@bp.get("/tasks")
@response(TaskPage, cached=True)
@cached_response(readers=signed_in)
@login_required
@arguments(ListQuery)
def list_tasks(query: ListQuery) -> dict[str, Any]:
    """List your tasks one page at a time.

    Newest first, or filtered and sorted as you ask.
    """
    return service.list_tasks(g.user_id, query)


@bp.post("/tasks")
@response(TaskOut, status=201, headers=("Location", "ETag"))
@login_required
@body(TaskCreate)
def create_task(body: TaskCreate) -> Response:
    """Create a task."""
    task = service.create_task(g.user_id, body)
    resp = task_response(task, 201)
    resp.headers["Location"] = url_for("tasks.get_task", task_id=task["id"])
    return resp


@bp.get("/tasks/stats")
@response(TaskStats, cached=True)
@cached_response(readers=signed_in)
@login_required
def task_stats() -> dict[str, int]:
    """Count your tasks: total, completed, open and overdue."""
    return service.stats(g.user_id)


@bp.get("/tasks/<objectid:task_id>")
@response(TaskOut, cached=True)
@cached_response(readers=signed_in)
@login_required
def get_task(task_id: str) -> dict[str, Any]:
    """Get one of your tasks."""
    return found(service.get_task(g.user_id, task_id))


@bp.patch("/tasks/<objectid:task_id>")
@response(TaskOut, headers=("ETag",), if_match=True)
@login_required
@body(TaskUpdate)
def update_task(task_id: str, body: TaskUpdate) -> Response:
    """Change any subset of a task's fields.

    With If-Match, only while it names the task's current ETag (else 412, nothing changed).
    """
    return task_response(found(service.update_task(g.user_id, task_id, body, if_match())))


@bp.delete("/tasks/<objectid:task_id>")
@response(None, status=204, if_match=True)
@login_required
def delete_task(task_id: str) -> Response:
    """Delete one of your tasks.

    With If-Match, only while it names the task's current ETag (else 412, nothing changed).
    """
    if not service.delete_task(g.user_id, task_id, if_match()):
        raise NotFound("task not found")
    return no_content()


@bp.get("/activity")
@response(ActivityFeed, cached=True)
@cached_response(readers=signed_in)
@login_required
@arguments(ActivityQuery)
def activity(query: ActivityQuery) -> dict[str, Any]:
    """Your most recent actions on tasks, newest first."""
    return service.activity(g.user_id, query.limit)
