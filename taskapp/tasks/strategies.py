"""What a read strategy and a write strategy are, and where a request finds the ones its app chose.

TASK_READ_STRATEGY and TASK_WRITE_STRATEGY pick one of each, once, in ``service.init_app``:
every read goes through the read strategy (``reads.py``: cache-aside, read-through or
refresh-ahead) and every change through the write strategy (``writes.py``: invalidate or
write-through; ``write_behind.py``: write-behind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from flask import Flask, current_app

from taskapp.cache import Ttl
from taskapp.tasks.schemas import TaskUpdate

#: Where an app keeps its strategies (``app.extensions``).
EXTENSION = "taskapp.tasks"

#: A condition on a task as the API shows it (If-Match): the change is made only when it holds.
Precondition = Callable[[dict[str, Any]], bool]


class ReadStrategy:
    """How a task, a page of tasks or the stats are read (TASK_READ_STRATEGY); every strategy
    has the same fill lock and version checks."""

    def read(self, family: str, key: str, args: tuple, ttl: Ttl, tags: list[str]) -> Any:
        """The value of ``key``, of the key ``family``, fetched with ``args`` on a miss."""
        raise NotImplementedError


def _nothing() -> None:
    """Nothing to undo."""


class WriteStrategy:
    """How a change of a task reaches MongoDB and the cache (TASK_WRITE_STRATEGY): one method
    per step of a write. The defaults are those of a change written to MongoDB at once."""

    versions_in_mongodb = True  # a task's version as read is MongoDB's (see writes._same_version)

    def pending(self, key: str) -> dict[str, Any] | None:
        """A change of the task not in MongoDB yet (write-behind only)."""
        return None

    def overlay(self, user_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """List items with changes not in MongoDB yet (write-behind only)."""
        return items

    def update(
        self, user_id: str, task_id: str, data: TaskUpdate, precondition: Precondition | None
    ) -> dict[str, Any] | None:
        """Apply ``data`` to the task; None when it is gone, 412 when ``precondition`` fails."""
        raise NotImplementedError

    def lease(self, user_id: str, task_id: str) -> str:
        """Read before a write to MongoDB (write-through's lease)."""
        return ""

    def before_delete(self, user_id: str, task_id: str) -> Callable[[], None]:
        """Run before a task is deleted from MongoDB; returns what to run if the delete fails."""
        return _nothing

    def changed(self, user_id: str, action: str, task: dict[str, Any], lease: str = "") -> None:
        """Bring the cache up to date after MongoDB has the change."""
        raise NotImplementedError

    def start(self, app: Flask) -> None:
        """Start what this strategy runs in each serving process (see ``start_flushers``)."""

    def stop(self) -> None:
        """Stop what ``start`` started in this process (see ``stop_flushers``)."""


class Strategies(NamedTuple):
    """The app's read and write strategies, chosen once in ``service.init_app``."""

    reads: ReadStrategy
    writes: WriteStrategy


def chosen() -> Strategies:
    """The strategies of the current app."""
    strategies: Strategies = current_app.extensions[EXTENSION]
    return strategies
