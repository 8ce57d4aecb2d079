"""MongoDB: one client per app, its indexes, the one gateway every read goes through, and the
bound on each request's wait for it (``MONGODB_TIMEOUT_MS``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from time import monotonic  # not through ``time``: tests replace db.time's sleep
from typing import Any, TypeVar
from urllib.parse import urlsplit

import mongomock
import pymongo
from flask import Flask, Response, current_app, g, has_app_context, has_request_context
from pymongo import monitoring
from pymongo.database import Database as PyMongoDatabase
from pymongo.errors import ConnectionFailure, PyMongoError
from pymongo.uri_parser import parse_uri
from werkzeug.exceptions import ServiceUnavailable

from taskapp.cache import RequestState
from taskapp.config import EMBEDDED_MONGODB, FILL_READS
from taskapp.errors import problem_of
from taskapp.extensions import cache
from taskapp.http_metrics import DB_READS
from taskapp.models import DB_EXTENSION, MODELS, AppDocument, Task

log = logging.getLogger(__name__)

T = TypeVar("T")

# /readyz answers within this even when the request deadline is longer: probes time out fast.
READY_TIMEOUT_S = 1.0
# Index builds at start-up may take longer than a request may wait (a large collection).
INDEX_TIMEOUT_S = 600.0


class NotTried(ConnectionFailure):
    """A MongoDB operation this request does not even try (answered 503 at once): MongoDB did
    not answer within the deadline lately and another request is probing it (``Gate``), rather
    than taking a thread for the whole deadline, or the request's MongoDB time is spent."""


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or the error it was raised from, as mongoengine wraps pymongo's)
    means MongoDB could not be reached or did not answer in time."""
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, ConnectionFailure):
            return True
        if isinstance(err, PyMongoError) and err.timeout:
            return True
    return False


class Spent(NotTried):
    """This request has used all its MongoDB time (MONGODB_TIMEOUT_MS): its next operation is
    not even tried (503)."""


class BoundedClient(pymongo.MongoClient):  # type: ignore[type-arg]
    """A MongoClient whose operations in a request share one bound: MONGODB_TIMEOUT_MS for all
    of them together, not each (plus, when SIMULATED_DB_LATENCY_MS is set, the delays of a
    fill's reads, which the request's waits for other callers' fills may have used up).

    Each operation of a collection (a query, each batch of a cursor, a count, an aggregation,
    each write) passes through pymongo's ``_retry_internal``, where pymongo applies its
    client-side operation timeout; here it runs under ``pymongo.timeout`` of what is left of the
    request's MongoDB time (``RequestState.source_time``, which waits for other callers' fills
    also use up), and its duration is added to it. Time between operations (hashing a password,
    Redis calls) is not counted. Outside a request each operation has the whole bound.
    """

    def __init__(self, *args: Any, bound: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bound = bound

    def _retry_internal(self, *args: Any, **kwargs: Any) -> Any:
        state = RequestState.current()
        if state is None:
            return super()._retry_internal(*args, **kwargs)
        left = self._bound - state.source_time
        if left <= 0:
            raise Spent("this request has used all its MongoDB time; try again")
        started = monotonic()
        try:
            with pymongo.timeout(left):
                return super()._retry_internal(*args, **kwargs)
        finally:
            state.source_time += monotonic() - started


class Gate(monitoring.CommandListener, monitoring.ServerHeartbeatListener):
    """Fails requests at once while MongoDB does not answer; one request per process probes it.

    Without it a hung MongoDB keeps every thread that needs it for the whole deadline, and
    cached reads queue behind them. The gate shuts when a request finds MongoDB unavailable
    (a timeout), or sooner, when this process's oldest command in flight has waited a third of
    the deadline and no command has succeeded since it was sent (a hung server, not one slow
    query among quick ones). Any command or heartbeat that succeeds opens it again, so requests
    succeed as soon as MongoDB answers (the probe in flight is usually the first to see it).
    """

    def __init__(self, timeout: float) -> None:
        self.down = False  # a request found MongoDB unavailable, and nothing answered since
        self.stall = timeout / 3
        self._probe = threading.Lock()
        self._lock = threading.Lock()  # over _sent: pymongo's threads and ours change it
        self._sent: dict[int, float] = {}  # request id -> when, of the commands in flight
        self._answered = 0.0  # when a command last succeeded

    def enter(self) -> None:
        """Before a request's MongoDB operation: pass, probe, or raise NotTried."""
        if not (self.down or self._stalled()) or g.get("_mongodb_probe"):
            return
        if self._probe.acquire(blocking=False):
            g._mongodb_probe = True  # released at the end of the request
            log.debug("MongoDB gate shut: this request probes it")
            return
        raise NotTried("the database did not answer in time; try again")

    def leave(self) -> None:
        """At the end of a request: give up the probe it held."""
        if g.pop("_mongodb_probe", False):
            self._probe.release()

    def mark_down(self, exc: BaseException) -> None:
        """MongoDB did not answer: fail other requests fast until it does."""
        if not self.down:
            log.warning("MongoDB unavailable (%s): failing requests fast until it answers", exc)
        self.down = True

    def _stalled(self) -> bool:
        """True when the oldest command in flight was sent over ``stall`` ago and none has
        succeeded since."""
        with self._lock:
            oldest = min(self._sent.values(), default=None)
        return oldest is not None and oldest > self._answered and monotonic() - oldest > self.stall

    def _mark_up(self) -> None:
        self._answered = monotonic()
        if self.down:
            self.down = False
            log.warning("MongoDB answers again")

    # pymongo's listener callbacks, for commands and for heartbeats (called on pymongo's
    # threads and ours; they must not block)
    def started(self, event: Any) -> None:
        if isinstance(event, monitoring.CommandStartedEvent):
            with self._lock:
                self._sent[event.request_id] = monotonic()

    def succeeded(self, event: Any) -> None:
        if isinstance(event, monitoring.CommandSucceededEvent):
            with self._lock:
                self._sent.pop(event.request_id, None)
        self._mark_up()

    def failed(self, event: Any) -> None:
        if isinstance(event, monitoring.CommandFailedEvent):
            with self._lock:
                self._sent.pop(event.request_id, None)


class Database:
    """One app's MongoDB client and database: models find it through ``current_app``.

    The client connects lazily (``connect=False``), i.e. after gunicorn has forked its workers.
    ``mongomock://host/name`` is the embedded store: a database inside this process only.
    """

    def __init__(
        self,
        uri: str,
        timeout_ms: int = 3000,
        simulated_ms: int = 0,
        listeners: Iterable[Any] = (),
    ) -> None:
        self.uri = uri
        self.timeout = timeout_ms / 1000
        # A request's MongoDB time in all: the bound, and the simulated delays of a fill's reads
        # it may wait for (as CACHE_FILL_TIMEOUT; both the bound alone when nothing is simulated).
        self.bound = (timeout_ms + FILL_READS * simulated_ms) / 1000
        self.gate = Gate(self.timeout)
        self.client: Any
        if uri.startswith(EMBEDDED_MONGODB):
            name = urlsplit(uri).path.lstrip("/") or "taskapp"
            self.client = mongomock.MongoClient()
        else:
            name = parse_uri(uri).get("database") or "taskapp"
            # timeoutMS (pymongo's client-side operation timeout) bounds each operation as a
            # whole: server selection, connection checkout and the query; in a request,
            # BoundedClient bounds them all together. Not a deadline per request: time a
            # request spends elsewhere (hashing a password on a busy host) must not fail its
            # next query.
            self.client = BoundedClient(
                uri,
                bound=self.bound,
                connect=False,
                timeoutMS=timeout_ms,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                event_listeners=[self.gate, *listeners],
                uuidRepresentation="standard",
            )
        self.database: PyMongoDatabase = self.client[name]
        self._collections: dict[type[AppDocument], Any] = {}
        self._indexed = False
        self._lock = threading.Lock()

    def collection(self, model: type[AppDocument]) -> Any:
        """The collection of ``model``; the first use also ensures every model's indexes.

        Every model query comes through here, so a request meets the gate here.
        """
        if has_request_context():
            self.gate.enter()
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
            # An index build on a large collection may take longer than a request may wait,
            # at start-up; a request that comes here keeps its own bound. The ping first: a
            # CSOT block also bounds server selection, so an unreachable MongoDB must fail
            # within the ordinary bound, not the long one.
            seconds = self.timeout if has_request_context() else INDEX_TIMEOUT_S
            try:
                with pymongo.timeout(self.timeout):
                    self.client.admin.command("ping")
                with pymongo.timeout(seconds):
                    for model in MODELS:
                        model.ensure_indexes()
                    Task.backfill_priority_rank()
            except PyMongoError as exc:
                self._indexed = False
                log.warning("could not ensure MongoDB indexes now (%s); retried on next use", exc)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def init_app(app: Flask, listeners: Iterable[Any] = ()) -> None:
    """Give the app a MongoDB client of its own (with pymongo's command ``listeners``, such as
    the tracing's) and ensure the models' indexes."""
    database = Database(
        app.config["MONGODB_URI"],
        app.config["MONGODB_TIMEOUT_MS"],
        app.config["SIMULATED_DB_LATENCY_MS"],
        listeners,
    )
    app.extensions[DB_EXTENSION] = database
    with app.app_context():
        database.ensure_indexes()


def leave_gate(exc: BaseException | None) -> None:
    """``teardown_request``: let the gate's probe go when this request was it (see ``Gate``)."""
    current().gate.leave()


def handle_unavailable(exc: Exception) -> Response:
    """MongoDB unreachable or past the request's deadline (MONGODB_TIMEOUT_MS): 503 with
    Retry-After, so clients retry instead of reading a server bug."""
    request_unavailable(exc)  # logs once per episode, not once per request
    log.debug("MongoDB unavailable: %s", exc)
    return problem_of(ServiceUnavailable("the database is unavailable; try again", retry_after=1))


def request_unavailable(exc: BaseException) -> None:
    """A request found MongoDB unavailable: shut the gate (see ``Gate``)."""
    if has_app_context() and not isinstance(exc, NotTried):
        current().gate.mark_down(exc)


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
    """True when MongoDB answers a ping within READY_TIMEOUT_S (for /readyz); never raises."""
    try:
        with pymongo.timeout(min(READY_TIMEOUT_S, current().timeout)):
            current().client.admin.command("ping")
    except PyMongoError as exc:
        log.debug("MongoDB ping failed: %s", exc)  # /readyz reports it; probes would flood the log
        return False
    return True
