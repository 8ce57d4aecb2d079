"""The bench's apps besides ``wsgi:app``: bare Flask (the reference of every speed ratio) and
taskapp with one mechanism taken out (no setting turns it off) or its Redis call replaced."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response

BODY = os.environ.get("BENCH_TASK_JSON", '{"id": "bench"}\n').encode()
GET_KEY = "bench:get"  # the runner stores a value of the task's size here


def bare() -> Flask:
    """A Flask app with one route answering the task's JSON bytes (``BENCH_TASK_JSON``)."""
    app = Flask(__name__)

    @app.get("/<path:anything>")
    def task(anything: str) -> Response:
        return Response(BODY, mimetype="application/json")

    return app


def pooled() -> Flask:
    """taskapp whose request path calls Redis through redis-py's pool (``Direct`` off)."""
    from taskapp import create_app
    from taskapp.cache import store

    store.Direct = lambda client, load: None  # type: ignore[assignment,misc,return-value]
    return create_app()


def unrouted() -> Flask:
    """taskapp whose fast path matches the route of every hit anew (no route memo)."""
    from taskapp import create_app, fastpath

    fastpath.FastPath.route = fastpath.FastPath._match  # type: ignore[method-assign]
    return create_app()


def same_client() -> Flask:
    """taskapp with the defaults whose request-path Redis call (a hit's admission, one
    BITFIELD in ``Direct.marked``, or a call of the library's ``request``) is one plain GET on
    the same connection, answered with what a real call with the same arguments answered (a
    real call again once that answer is a second old, so the entry, the rate limit and the
    in-process layer's expiry stay as in the defaults): the same Python work and pacing per
    request, only what Redis runs differs."""
    from taskapp import create_app
    from taskapp.cache.store import Direct, Store

    real, answers = Store.fcall, {}
    real_marked, hits = Direct.marked, {}

    def marked(self: Direct, command: Any) -> Any:
        key, now = command(0)[:2], time.monotonic()  # the command and its key
        known = hits.get(key)
        if known is None or now - known[0] > 1:
            hits[key] = known = (now, real_marked(self, command))
        else:
            self.execute("GET", GET_KEY)
        return known[1]  # the reply, the mark and the clock of the real call

    def fcall(self: Store, function: str, keys: list[str], args: list[Any]) -> Any:
        if function != "request" or self.direct is None:
            return real(self, function, keys, args)
        key, now = (function, *keys, *args), time.monotonic()
        known = answers.get(key)
        if known is None or now - known[0] > 1:
            answers[key] = known = (now, real(self, function, keys, args))
        else:
            self.direct.execute("GET", GET_KEY)
        return known[1]

    Store.fcall = fcall  # type: ignore[method-assign]
    Direct.marked = marked  # type: ignore[method-assign]
    return create_app()
