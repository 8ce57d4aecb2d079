"""The comparison apps of the benchmark, each one route shaped like taskapp's task GET.

Served exactly like taskapp (``gunicorn -c gunicorn.conf.py 'bench.apps:create_app("bare")'``) so
every figure shares the server and its worker, thread and access-log settings:

- ``raw``: no Flask at all, a plain WSGI callable answering the task's JSON bytes with the same
  headers as ``bare``; the ceiling of the server itself.
- ``bare``: a fixed task JSON, nothing else; the ceiling of a Flask JSON route on this server.
- ``jwt``: ``bare`` plus one PyJWT decode of the bearer token (HS256 with SECRET_KEY, the claims
  taskapp requires), 401 without a valid one: what a token check adds to a route.
- ``nocache``: the same task read from a slow "database" (a sleep of SIMULATED_DB_LATENCY_MS) on
  every request; the "no cache" row.
- ``flask_caching``: that slow read behind Flask-Caching's ``@cache.cached`` with
  ``CACHE_TYPE = "RedisCache"`` and its defaults (no socket timeout): what a Flask user picks today.
- ``seed_lock``: that slow read behind the seed lesson's ``getOrSet`` lock, ported as is
  (``SET lock NX EX 10``; a loser sleeps 100 ms and tries again; recursion turned into a loop).

Every app counts its slow reads (``GET /_bench/fetches``) and marks the response of a request that
read the "database" ``X-Cache: MISS`` (others ``HIT``), as taskapp does, so the benchmark counts
fills and tells the filler from the waiters the same way for all of them. Except in ``jwt``, the
routes do no authentication: the ``Authorization`` header the load generator sends is ignored.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
from flask import Flask, abort, g, request

ROUTE = "/api/v1/tasks/<task_id>"

#: The payload when BENCH_TASK_JSON is unset; bench/run passes the JSON body of taskapp's seeded task.
DEFAULT_TASK: dict[str, Any] = {
    "id": "6650f0c2a1b2c3d4e5f60718",
    "title": "Benchmark task",
    "description": "A task read again and again by the benchmark",
    "completed": False,
    "priority": "high",
    "due_date": "2030-01-01T00:00:00Z",
    "created_at": "2025-01-01T00:00:00Z",
    "updated_at": "2025-01-01T00:00:00Z",
}


def _task() -> dict[str, Any]:
    raw = os.environ.get("BENCH_TASK_JSON")
    return json.loads(raw) if raw else dict(DEFAULT_TASK)


class SlowDatabase:
    """A "database" whose every read sleeps like taskapp's SIMULATED_DB_LATENCY_MS; reads are counted."""

    def __init__(self, task: dict[str, Any], latency_ms: int) -> None:
        self.task = task
        self.latency = latency_ms / 1000
        self.reads = 0
        self._lock = threading.Lock()

    def read(self, task_id: str) -> dict[str, Any]:
        """The task (with the asked id), after the simulated query time."""
        with self._lock:
            self.reads += 1
        g.source_read = True
        time.sleep(self.latency)
        return {**self.task, "id": task_id}


def _base_app(db: SlowDatabase | None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # as taskapp

    @app.get("/_bench/fetches")
    def fetches() -> dict[str, int]:
        return {"fetches": db.reads if db is not None else 0}

    @app.after_request
    def mark(response):
        response.headers["X-Cache"] = "MISS" if g.get("source_read") else "HIT"
        return response

    return app


def _bare() -> Flask:
    app = _base_app(None)
    task = _task()

    @app.get(ROUTE)
    def get_task(task_id: str) -> dict[str, Any]:
        return task

    return app


def _jwt() -> Flask:
    app = _base_app(None)
    task = _task()
    secret = os.environ["SECRET_KEY"]

    @app.get(ROUTE)
    def get_task(task_id: str) -> dict[str, Any]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            abort(401)
        try:
            # The same call as taskapp's token check (taskapp/auth/tokens.py).
            jwt.decode(
                token.strip(),
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError:
            abort(401)
        return task

    return app


def _raw() -> Callable[..., Any]:
    """A WSGI callable, no framework: the task's bytes on the task route, a zero on the counter."""
    raw = os.environ.get("BENCH_TASK_JSON")
    body = (raw if raw else json.dumps(DEFAULT_TASK)).encode()
    if not body.endswith(b"\n"):
        body += b"\n"  # as Flask's JSON responses
    fetches = b'{"fetches":0}\n'

    def headers(length: int) -> list[tuple[str, str]]:
        return [
            ("Content-Type", "application/json"),
            ("Content-Length", str(length)),
            ("X-Cache", "HIT"),
        ]

    task_headers = headers(len(body))
    fetches_headers = headers(len(fetches))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] == "/_bench/fetches":
            start_response("200 OK", fetches_headers)
            return [fetches]
        start_response("200 OK", task_headers)
        return [body]

    return app


def _nocache(db: SlowDatabase) -> Flask:
    app = _base_app(db)

    @app.get(ROUTE)
    def get_task(task_id: str) -> dict[str, Any]:
        return db.read(task_id)

    return app


def _flask_caching(db: SlowDatabase) -> Flask:
    from flask_caching import Cache

    app = _base_app(db)
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": os.environ["REDIS_URL"],
            "CACHE_KEY_PREFIX": "bench:fc:",
            "CACHE_DEFAULT_TIMEOUT": 60,
        },
    )

    @app.get(ROUTE)
    @cache.cached(timeout=60)
    def get_task(task_id: str) -> dict[str, Any]:
        return db.read(task_id)

    return app


class SeedCache:
    """The seed lesson's CacheService.getOrSet, in Python: its lock and its polling, nothing more."""

    LOCK_TTL = 10  # seconds, as the seed's EX 10
    POLL = 0.1  # seconds a loser sleeps before trying again, as the seed's setTimeout(100)

    def __init__(self, url: str) -> None:
        import redis

        # The seed sets only a connect timeout (and no command timeout).
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=5)

    def get_or_set(self, key: str, fetch: Callable[[], Any], ttl: int) -> Any:
        """The cached value, else one caller fetches under ``lock:<key>`` while the others poll."""
        while True:  # the seed recurses; a loop is the same without the stack growth
            cached = self.redis.get(key)
            if cached:
                return json.loads(cached)
            lock_key = f"lock:{key}"
            if not self.redis.set(lock_key, "1", nx=True, ex=self.LOCK_TTL):
                time.sleep(self.POLL)
                continue
            try:
                value = fetch()
                self.redis.set(key, json.dumps(value), ex=ttl)
                return value
            finally:
                self.redis.delete(lock_key)  # no owner token, as in the seed


def _seed_lock(db: SlowDatabase) -> Flask:
    app = _base_app(db)
    cache = SeedCache(os.environ["REDIS_URL"])

    @app.get(ROUTE)
    def get_task(task_id: str) -> dict[str, Any]:
        return cache.get_or_set(f"bench:seed:task:{task_id}", lambda: db.read(task_id), 60)

    return app


def create_app(name: str) -> Callable[..., Any]:
    """One of the comparison apps: raw, bare, jwt, nocache, flask_caching or seed_lock."""
    latency = int(os.environ.get("SIMULATED_DB_LATENCY_MS", "50"))
    db = SlowDatabase(_task(), latency)
    if name == "raw":
        return _raw()
    if name == "bare":
        return _bare()
    if name == "jwt":
        return _jwt()
    if name == "nocache":
        return _nocache(db)
    if name == "flask_caching":
        return _flask_caching(db)
    if name == "seed_lock":
        return _seed_lock(db)
    raise ValueError(
        f"unknown bench app {name!r}: raw, bare, jwt, nocache, flask_caching or seed_lock"
    )
