"""MongoDB: the mongoengine connection, its indexes, and the one gateway every read goes through."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import mongoengine
import mongomock
from flask import Flask, current_app, has_app_context
from mongoengine.connection import get_connection, get_db
from pymongo.errors import PyMongoError

from taskapp.config import EMBEDDED_MONGODB
from taskapp.extensions import cache
from taskapp.metrics import DB_READS
from taskapp.models import MODELS

log = logging.getLogger(__name__)

T = TypeVar("T")

# A dead MongoDB must fail a request (and /readyz) within seconds, not pymongo's default 30 s.
SERVER_SELECTION_TIMEOUT_MS = 2000


def init_app(app: Flask) -> None:
    """Connect mongoengine to ``MONGODB_URI`` and ensure the models' indexes."""
    connect(app.config["MONGODB_URI"])
    ensure_indexes()


def connect(uri: str) -> None:
    """(Re)connect mongoengine's default alias; ``mongomock://host/db`` is the embedded store."""
    mongoengine.disconnect()
    if uri.startswith(EMBEDDED_MONGODB):
        # mongoengine 0.29 rejects the mongomock:// scheme, so name the client class instead.
        name = urlsplit(uri).path.lstrip("/") or "taskapp"
        mongoengine.connect(
            db=name,
            host="mongodb://localhost",
            mongo_client_class=mongomock.MongoClient,
            uuidRepresentation="standard",
        )
        return
    # connect=False: the socket opens on first use, i.e. after gunicorn has forked its workers.
    mongoengine.connect(
        host=uri,
        connect=False,
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        uuidRepresentation="standard",
    )


def ensure_indexes() -> None:
    """Create the indexes declared in the models' meta; a MongoDB that is down only logs a warning.

    The app must still start (and answer /readyz with 503) while MongoDB is unreachable;
    mongoengine creates the indexes again on the first use of each collection.
    """
    try:
        for model in MODELS:
            model.ensure_indexes()
    except PyMongoError as exc:
        log.warning("could not ensure MongoDB indexes now (%s); retried on first use", exc)


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
        get_db().client.admin.command("ping")
    except PyMongoError as exc:
        log.debug("MongoDB ping failed: %s", exc)  # /readyz reports it; probes would flood the log
        return False
    return True


def drop_database() -> None:
    """Drop the connected database (test teardown)."""
    get_connection().drop_database(get_db().name)
