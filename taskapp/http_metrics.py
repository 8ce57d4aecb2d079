"""App metrics (the cache's own live in ``taskapp.cache.metrics``) and request timing."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, request
from prometheus_client import Counter, Histogram

DB_READS = Counter("taskapp_db_reads_total", "MongoDB read queries issued")
REQUEST_SECONDS = Histogram(
    "taskapp_request_duration_seconds",
    "Request latency by route",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

#: The environ key of the moment a request's handling began (``time.perf_counter()``): set by
#: the first layer that sees it (the response cache's WSGI fast path, else Flask's hook).
STARTED = "taskapp.started"


def start_timer(environ: dict[str, Any]) -> None:
    """Note when this request's handling began, unless a layer in front already did."""
    environ.setdefault(STARTED, time.perf_counter())


def observe(environ: dict[str, Any], method: str, route: str, status: int) -> None:
    """Record a request's latency by its route pattern (never the raw path: ids would explode
    labels), once."""
    started = environ.pop(STARTED, None)
    if started is not None:
        labels = (method, route, status)
        child = _REQUEST_CHILDREN.get(labels)
        if child is None:  # routes x methods x statuses: a small, bounded set
            child = _REQUEST_CHILDREN[labels] = REQUEST_SECONDS.labels(*labels)
        child.observe(time.perf_counter() - started)


#: REQUEST_SECONDS's children by labels (``labels()`` builds and checks its key on every call).
_REQUEST_CHILDREN: dict[tuple[str, str, int], Any] = {}


def init_app(app: Flask) -> None:
    """Time every request by its route pattern."""

    @app.before_request
    def start() -> None:
        start_timer(request.environ)

    @app.after_request
    def finish(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        observe(request.environ, request.method, route, response.status_code)
        return response
