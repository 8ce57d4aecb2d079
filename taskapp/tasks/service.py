"""The task service: what the routes, the CLI and the app factory call for tasks.

Views never touch the cache. TASK_READ_STRATEGY and TASK_WRITE_STRATEGY pick a strategy object
each, once, in ``init_app`` (``strategies.py`` says what each is): every read goes through the
read strategy (``reads.py``: cache-aside, read-through or refresh-ahead) and every change
through the write strategy (``writes.py``: invalidate or write-through; ``write_behind.py``:
write-behind, whose changes reach MongoDB through ``apply_pending``, run by the flushers). The
MongoDB queries the cache fills from are ``queries.py``'s.
"""

from __future__ import annotations

from flask import Flask

from taskapp.extensions import cache
from taskapp.tasks.queries import FETCHERS
from taskapp.tasks.reads import (
    CacheAsideReads,
    ReadThroughReads,
    RefreshAheadReads,
    activity,
    get_task,
    list_tasks,
    stats,
)
from taskapp.tasks.strategies import (
    EXTENSION,
    Precondition,
    ReadStrategy,
    Strategies,
    WriteStrategy,
)
from taskapp.tasks.write_behind import WriteBehindWrites, apply_pending
from taskapp.tasks.writes import (
    InvalidateWrites,
    WriteThroughWrites,
    create_task,
    delete_task,
    forget_user,
    update_task,
)

__all__ = [
    "Precondition",
    "activity",
    "apply_pending",
    "create_task",
    "delete_task",
    "forget_user",
    "get_task",
    "init_app",
    "list_tasks",
    "start_flushers",
    "stats",
    "stop_flushers",
    "update_task",
]

READ_STRATEGIES: dict[str, type[ReadStrategy]] = {
    "cache-aside": CacheAsideReads,
    "read-through": ReadThroughReads,
    "refresh-ahead": RefreshAheadReads,
}
WRITE_STRATEGIES: dict[str, type[WriteStrategy]] = {
    "invalidate": InvalidateWrites,
    "write-through": WriteThroughWrites,
    "write-behind": WriteBehindWrites,
}


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
