"""Command-line tools: ``flask --app taskapp users ...``, ``write-behind ...`` and ``cache warm``.

Every command runs inside an app context (Flask's ``AppGroup``). The other ``cache`` commands
are the cache extension's own (``taskapp.cache``, registered by its ``init_app``); ``warm`` is
added to its group here. A Redis or MongoDB failure anywhere in a command ends it with one line
naming the (password-redacted) URL, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from pydantic import ValidationError
from pymongo.errors import PyMongoError
from werkzeug.exceptions import Conflict

from taskapp.auth.schemas import Registration
from taskapp.auth.service import find_user_by_email, register, set_role
from taskapp.cache import redacted, redis_command, shared_redis
from taskapp.config import EMBEDDED_MONGODB
from taskapp.extensions import cache
from taskapp.models import ROLES
from taskapp.tasks import service as task_service
from taskapp.tasks.schemas import ListQuery

F = TypeVar("F", bound=Callable[..., Any])

WARM_PAGES = 3
WARM_PER_PAGE = 10

users_cli = AppGroup("users", help="Manage accounts.")
write_behind_cli = AppGroup("write-behind", help="Run and watch the write-behind flusher.")


def init_app(app: Flask) -> None:
    """Register the ``users`` and ``write-behind`` command groups (``cache warm`` is in the
    extension's ``cache`` group)."""
    app.cli.add_command(users_cli)
    app.cli.add_command(write_behind_cli)


# -- helpers --------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def backend_command(fn: F) -> F:
    """Turn a Redis or MongoDB failure inside the command into one line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PyMongoError as exc:
            url = redacted(current_app.config["MONGODB_URI"])
            raise click.ClickException(f"MongoDB failed at {url}: {_reason(exc)}") from None

    return redis_command(wrapper)  # type: ignore[no-any-return]


def shared_mongodb(fn: F) -> F:
    """Refuse to run on the embedded MongoDB: its data lives inside one process, not this one's.

    ``flask --app taskapp users create`` on ``mongomock://`` would report success into a database
    that is gone when the command exits.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value = current_app.config["MONGODB_URI"]
        if value.startswith(EMBEDDED_MONGODB):
            raise click.ClickException(
                f"MONGODB_URI={value} is an in-process MongoDB that would die with this command; "
                "set MONGODB_URI to the server the app uses"
            )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _client() -> Any:
    """The raw Redis client, checked to answer (so a dead server fails here, loudly)."""
    client = cache.client
    client.ping()
    return client


def _user_by_email(email: str) -> Any:
    user = find_user_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


# -- users ----------------------------------------------------------------------------------


@users_cli.command("create")
@click.argument("email")
@click.option(
    "--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Asked if omitted."
)
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@backend_command
@shared_mongodb
def users_create(email: str, password: str, role: str) -> None:
    """Create an account."""
    try:
        valid = Registration(email=email, password=password)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise click.BadParameter(error["msg"], param_hint=str(error["loc"][0])) from None
    try:
        user = register(valid.email, valid.password, role=role)
    except Conflict:
        raise click.ClickException(f"an account with email {valid.email} already exists") from None
    click.echo(f"created {user.email} (id {user.id}, role {user.role})")


@users_cli.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@backend_command
@shared_mongodb
def users_set_role(email: str, role: str) -> None:
    """Give an account a role (effective on its next request)."""
    user = set_role(str(_user_by_email(email).id), role)
    if user is None:  # deleted between the lookup and the update
        raise click.ClickException(f"no user with email {email}")
    click.echo(f"{user.email} is now {user.role}")


# -- cache warm and write-behind ------------------------------------------------------------


@cache.cli.command("warm")
@click.argument("email")
@backend_command
@shared_mongodb
@shared_redis
def cache_warm(email: str) -> None:
    """Fill a user's first pages of tasks and their stats, as their requests would."""
    _client()
    user_id = str(_user_by_email(email).id)
    for page in range(1, WARM_PAGES + 1):
        task_service.list_tasks(user_id, ListQuery(page=page, per_page=WARM_PER_PAGE))
    task_service.stats(user_id)
    click.echo(f"warmed {WARM_PAGES} pages of tasks and the stats of {email}")


@write_behind_cli.command("run")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: never).")
@backend_command
@shared_mongodb
@shared_redis
def write_behind_run(seconds: float | None) -> None:
    """Apply queued write-behind changes to MongoDB until stopped (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    _client()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if seconds is not None:
        threading.Timer(seconds, stop.set).start()
    click.echo("write-behind flusher running; Ctrl-C to stop")
    try:
        cache.write_behind().run(task_service.apply_pending, stop)
    except KeyboardInterrupt:
        stop.set()
    click.echo("write-behind flusher stopped")


@write_behind_cli.command("status")
@backend_command
@shared_redis
def write_behind_status() -> None:
    """Pending changes, consumers and lag of the write-behind flushers, and the dead letters
    (changes that failed too often, kept for an operator: how many, and the newest few)."""
    _client()
    status = cache.write_behind().status()
    click.echo(f"queued changes:  {status['stream_length']}")
    click.echo(f"pending (read, not yet applied): {status['pending']}")
    click.echo(f"lag (never read): {status['lag'] if status['lag'] is not None else '-'}")
    oldest = status["oldest_pending_ms"]
    click.echo(f"oldest pending:  {'-' if oldest is None else f'{oldest} ms'}")
    for consumer in status["consumers"]:
        click.echo(
            f"consumer {consumer['name']}: {consumer['pending']} pending, idle {consumer['idle_ms']} ms"
        )
    click.echo(f"dead letters:    {status['dead_letters']}")
    for dead in status["newest_dead_letters"]:
        fields = dead["fields"]
        click.echo(
            f"dead letter {dead['id']}: object {fields.get('id', '?')} version "
            f"{fields.get('version', '?')}, {fields.get('attempts', '?')} attempts: "
            f"{fields.get('error', '?')}"
        )
