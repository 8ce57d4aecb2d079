"""MongoDB: one client per app, its indexes, and the one gateway every read goes through."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import mongomock
import pymongo
from flask import Flask, current_app, has_app_context
from pymongo.database import Database as PyMongoDatabase
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from taskapp.config import EMBEDDED_MONGODB
from taskapp.extensions import cache
from taskapp.metrics import DB_READS
from taskapp.models import DB_EXTENSION, MODELS, AppDocument, Task

log = logging.getLogger(__name__)

T = TypeVar("T")

# A dead MongoDB must fail a request (and /readyz) within seconds, not pymongo's default 30 s.
SERVER_SELECTION_TIMEOUT_MS = 2000


class Database:
    """One app's MongoDB client and database: models find it through ``current_app``.

    The client connects lazily (``connect=False``), i.e. after gunicorn has forked its workers.
    ``mongomock://host/name`` is the embedded store: a database inside this process only.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client: Any
        if uri.startswith(EMBEDDED_MONGODB):
            name = urlsplit(uri).path.lstrip("/") or "taskapp"
            self.client = mongomock.MongoClient()
        else:
            name = parse_uri(uri).get("database") or "taskapp"
            self.client = pymongo.MongoClient(
                uri,
                connect=False,
                serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
                uuidRepresentation="standard",
            )
        self.database: PyMongoDatabase = self.client[name]
        self._collections: dict[type[AppDocument], Any] = {}
        self._indexed = False
        self._lock = threading.Lock()

    def collection(self, model: type[AppDocument]) -> Any:
        """The collection of ``model``; the first use also ensures every model's indexes."""
        found = self._collections.get(model)
        if found is None:
            found = self._collections[model] = self.database[model._get_collection_name()]
        if not self._indexed:
            self.ensure_indexes()
        return found

    def ensure_indexes(self) -> None:
        """Create the indexes declared in the models' meta and fill in derived fields that older
        documents lack; a MongoDB that is down only logs.

        The app must still start (and answer /readyz with 503) while MongoDB is unreachable;
        the indexes are tried again on the next use of a collection.
        """
        with self._lock:
            if self._indexed:
                return
            self._indexed = True  # model.ensure_indexes() below comes back through collection()
            try:
                for model in MODELS:
                    model.ensure_indexes()
                Task.backfill_priority_rank()
            except PyMongoError as exc:
                self._indexed = False
                log.warning("could not ensure MongoDB indexes now (%s); retried on next use", exc)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def init_app(app: Flask) -> None:
    """Give the app a MongoDB client of its own and ensure the models' indexes."""
    database = Database(app.config["MONGODB_URI"])
    app.extensions[DB_EXTENSION] = database
    with app.app_context():
        database.ensure_indexes()


def current() -> Database:
    """The database of the current app."""
    return current_app.extensions[DB_EXTENSION]


def read(fn: Callable[[], T]) -> T:
    """Run one MongoDB read query: count it, tell the response cache, add the simulated latency.

    ``fn`` must materialise its result (``list()``, ``.first()``, ``.count()``) so the query really
    runs here. The delay comes after the result is taken, as a slow query returns data as of its
    start.
    """
    DB_READS.inc()
    cache.mark_source_read()
    result = fn()
    delay_ms = current_app.config["SIMULATED_DB_LATENCY_MS"] if has_app_context() else 0
    if delay_ms:
        time.sleep(delay_ms / 1000)
    return result


def ping() -> bool:
    """True when MongoDB answers a ping (for /readyz); never raises."""
    try:
        current().client.admin.command("ping")
    except PyMongoError as exc:
        log.debug("MongoDB ping failed: %s", exc)  # /readyz reports it; probes would flood the log
        return False
    return True
