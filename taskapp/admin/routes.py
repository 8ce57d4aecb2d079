"""Admin routes (under /api/v1/admin): the role is checked in MongoDB on every request."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from flask import Blueprint, g
from pydantic import BaseModel, ConfigDict
from werkzeug.exceptions import Forbidden, NotFound

from taskapp.auth import service as accounts
from taskapp.auth.tokens import login_required
from taskapp.models import User
from taskapp.openapi import annotate, response
from taskapp.tasks import service as tasks
from taskapp.tasks.schemas import ListQuery, TaskPage
from taskapp.validation import arguments, body

bp = Blueprint("admin", __name__)


class RoleUpdate(BaseModel):
    """A user's new role."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "admin"]


class AdminUserOut(BaseModel):
    """A user as an admin sees it."""

    id: str
    email: str
    role: Literal["user", "admin"]


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer 403 unless the caller is an admin right now (MongoDB is asked on every request).

    Never cached and never taken from the token, so a demotion takes effect on the next request.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not accounts.is_admin(g.user_id):
            raise Forbidden("admin role required")
        return view(*args, **kwargs)

    annotate(wrapper, errors=(403,))
    return login_required(wrapper)


def existing_user(user_id: str) -> User:
    """The user with this id, or 404."""
    user = accounts.find_user(user_id)
    if user is None:
        raise NotFound("user not found")
    return user


@bp.get("/users/<user_id>/tasks")
@response(TaskPage)
@admin_required
@arguments(ListQuery)
def user_tasks(user_id: str, query: ListQuery) -> dict[str, Any]:
    """List any user's tasks, newest first (admin only)."""
    user = existing_user(user_id)
    return tasks.list_tasks(str(user.id), query.page, query.per_page, query.completed)


@bp.patch("/users/<user_id>")
@response(AdminUserOut)
@admin_required
@body(RoleUpdate)
def set_role(user_id: str, body: RoleUpdate) -> dict[str, Any]:
    """Give a user the user or admin role (admin only); effective on their next request."""
    user = accounts.set_role(user_id, body.role)
    if user is None:
        raise NotFound("user not found")
    return user.to_dict()
