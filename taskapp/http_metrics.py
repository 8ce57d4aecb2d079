"""App metrics (the cache's own live in ``taskapp.cache.metrics``) and request timing."""

from __future__ import annotations

import time
from typing import Any

from flask import Response, request
from prometheus_client import Counter, Histogram

from taskapp.cache import RequestState

DB_READS = Counter("taskapp_db_reads_total", "MongoDB read queries issued")
REQUEST_SECONDS = Histogram(
    "taskapp_request_duration_seconds",
    "Request latency by route",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def observe(request: RequestState, method: str, route: str, status: int) -> None:
    """Record a request's latency by its route pattern (never the raw path: ids would explode
    labels), once: from when the first layer that saw it made its state (the response cache's
    WSGI fast path, else Flask's hook)."""
    started, request.started = request.started, None
    if started is not None:
        labels = (method, route, status)
        child = _REQUEST_CHILDREN.get(labels)
        if child is None:  # routes x methods x statuses: a small, bounded set
            child = _REQUEST_CHILDREN[labels] = REQUEST_SECONDS.labels(*labels)
        child.observe(time.perf_counter() - started)


#: REQUEST_SECONDS's children by labels (``labels()`` builds and checks its key on every call).
_REQUEST_CHILDREN: dict[tuple[str, str, int], Any] = {}


def start_request() -> None:
    """``before_request``: the request's clock starts, unless a layer in front started it."""
    RequestState.of(request.environ)


def finish_request(response: Response) -> Response:
    """``after_request``: the request's latency by its route and final status."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    observe(RequestState.of(request.environ), request.method, route, response.status_code)
    return response
