"""App metrics (the cache's own live in ``taskapp.cache.metrics``) and request timing."""

from __future__ import annotations

import time

from flask import Flask, g, request
from prometheus_client import Counter, Histogram

DB_READS = Counter("taskapp_db_reads_total", "MongoDB read queries issued")
REQUEST_SECONDS = Histogram(
    "taskapp_request_duration_seconds",
    "Request latency by route",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def init_app(app: Flask) -> None:
    """Time every request by its route pattern (never the raw path: ids would explode labels)."""

    @app.before_request
    def start_timer() -> None:
        g._started = time.perf_counter()

    @app.after_request
    def observe(response):
        started = g.pop("_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            REQUEST_SECONDS.labels(request.method, route, response.status_code).observe(
                time.perf_counter() - started
            )
        return response
