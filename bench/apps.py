"""The two reference apps of the bench, served like taskapp (``gunicorn -c gunicorn.conf.py``).

``bare`` and ``raw`` answer every GET with the bytes of taskapp's task answer
(``BENCH_TASK_JSON``, set by the runner): ``bare`` is a bare Flask route, the reference of every
ratio; ``raw`` is a WSGI callable without Flask, the server's own ceiling. ``pooled`` is taskapp
with one mechanism taken out, to show what it buys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response

BODY = os.environ.get("BENCH_TASK_JSON", '{"id": "bench"}\n').encode()


def bare() -> Flask:
    """A Flask app with one route answering the task's JSON bytes."""
    app = Flask(__name__)

    @app.get("/<path:anything>")
    def task(anything: str) -> Response:
        return Response(BODY, mimetype="application/json")

    return app


def raw() -> Callable[..., Iterable[bytes]]:
    """A plain WSGI callable answering the same bytes with the same Content-Type."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", headers)
        return [BODY]

    return app


def pooled() -> Flask:
    """taskapp whose request path sends its Redis calls through redis-py's connection pool, as
    every other call does (``Direct`` off: ``taskapp/cache/store.py``)."""
    from taskapp import create_app
    from taskapp.cache import store

    store.Direct = lambda client: None  # type: ignore[assignment,misc,return-value]
    return create_app()


def unrouted() -> Flask:
    """taskapp whose fast path matches the route of every hit anew (no route memo)."""
    from taskapp import create_app, fastpath

    fastpath.FastPath.route = fastpath.FastPath._match  # type: ignore[method-assign]
    return create_app()
