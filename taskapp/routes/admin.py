"""Admin routes (under /api/v1/admin): the role is checked in MongoDB on every request."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from flask import Blueprint, g
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.exceptions import Forbidden, NotFound

from taskapp.auth import service as accounts
from taskapp.auth.identity import login_required
from taskapp.auth.schemas import AccountOut
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


class UserQuery(BaseModel):
    """Paging of the accounts, or one account by email."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(
        default=None, min_length=1, max_length=254, description="only the account of this email"
    )
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=10, ge=1, le=100)


class AccountPage(BaseModel):
    """One page of accounts, ordered by email."""

    items: list[AccountOut]
    page: int
    per_page: int
    total: int


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


@bp.get("/users")
@response(AccountPage)
@admin_required
@arguments(UserQuery)
def users(query: UserQuery) -> dict[str, Any]:
    """List the accounts by email, or find one by its email (admin only)."""
    found, total = accounts.list_users(query.email, query.page, query.per_page)
    items = [user.to_dict() for user in found]
    return {"items": items, "page": query.page, "per_page": query.per_page, "total": total}


@bp.get("/users/<user_id>/tasks")
@response(TaskPage)
@admin_required
@arguments(ListQuery)
def user_tasks(user_id: str, query: ListQuery) -> dict[str, Any]:
    """List any user's tasks, with the filters and orders of the task list (admin only)."""
    user = existing_user(user_id)
    return tasks.list_tasks(str(user.id), query)


@bp.patch("/users/<user_id>")
@response(AccountOut)
@admin_required
@body(RoleUpdate)
def set_role(user_id: str, body: RoleUpdate) -> dict[str, Any]:
    """Give a user the user or admin role (admin only).

    The role is checked on every request: it takes effect on the user's next one.
    """
    user = accounts.set_role(user_id, body.role)
    if user is None:
        raise NotFound("user not found")
    return user.to_dict()
