"""Production defaults for ``gunicorn -c gunicorn.conf.py wsgi:app``; GUNICORN_* variables override.

This file runs in the master before any worker exists, and the app is imported only in the workers
(``preload_app = False``), so whatever it puts into ``os.environ`` is seen by the app's imports.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile

import gunicorn.util

from taskapp.config import (
    EMBEDDED_MONGODB,
    EMBEDDED_REDIS,
    SETTINGS,
    ConfigError,
    check_redis,
    load,
)

MAX_AUTO_WORKERS = 8  # past this, more processes mostly add Redis and MongoDB connections


def _positive_int(name: str, default: int) -> int:
    """The whole number in environment variable ``name``; stops start-up naming it if invalid."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"setting {name}={raw!r} is invalid: a whole number of at least 1")
    return int(raw)


def _auto_workers() -> int:
    """(2 x CPUs) + 1, capped, unless GUNICORN_WORKERS says otherwise."""
    return _positive_int("GUNICORN_WORKERS", min(2 * (os.cpu_count() or 1) + 1, MAX_AUTO_WORKERS))


def _embedded_backends() -> list[str]:
    """The settings that select an in-process backend (unset means the embedded default)."""
    found = []
    for name, scheme in (("MONGODB_URI", EMBEDDED_MONGODB), ("REDIS_URL", EMBEDDED_REDIS)):
        value = os.environ.get(name, SETTINGS[name][0])
        if value.startswith(scheme):
            found.append(f"{name}={value}")
    return found


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
worker_class = "gthread"
threads = _positive_int("GUNICORN_THREADS", 4)
timeout = 30
graceful_timeout = 20
keepalive = 5
# GUNICORN_ACCESSLOG: a path, "-" for stdout (the default), or "off" (e.g. behind a proxy that
# logs requests already: the log costs each request a write under a lock).
accesslog = (
    None
    if os.environ.get("GUNICORN_ACCESSLOG", "-") == "off"
    else os.environ.get("GUNICORN_ACCESSLOG", "-")
)
errorlog = "-"
# Not preloaded: each worker imports the app after the fork, so its Redis and MongoDB
# connections (and the cache's pub/sub listener thread) are opened in the worker, never shared
# across processes through a forked socket.
preload_app = False
# Recent gunicorn opens a control socket at one fixed per-user path by default, so two
# instances on a host would take it from each other: open one only where
# GUNICORN_CONTROL_SOCKET names it.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# The app's settings, and the Redis they name, are checked here, in the master, so a bad value or
# a Redis that refuses the app stops start-up with one line and exit status 1 instead of a
# traceback from every worker that fails to boot.
try:
    _SETTINGS = load()
    check_redis(_SETTINGS)
except ConfigError as exc:
    raise SystemExit(f"taskapp: {exc}") from None

# Each access line ends with the response's request id (the client's, or the one the app made).
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
)
if _SETTINGS["LOG_FORMAT"] == "json":
    # gunicorn's own lines (its error log and the access log) as one JSON object each too, like
    # the app's (taskapp.logs, which gives the root logger its handler in each worker).
    _ACCESS = (
        {"class": "logging.NullHandler"}
        if accesslog is None
        else {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
        if accesslog == "-"
        else {"class": "logging.FileHandler", "filename": accesslog}
    )
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "taskapp.logs.JsonFormatter"}},
        "handlers": {
            "error": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "access": {**_ACCESS, "formatter": "json"},
        },
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"handlers": ["error"], "level": "INFO", "propagate": False},
            "gunicorn.access": {
                "handlers": ["access"],
                "level": "INFO" if accesslog is not None else "WARNING",
                "propagate": False,
            },
        },
    }

workers = _auto_workers()
_EMBEDDED = _embedded_backends()
if _EMBEDDED:
    # An embedded store lives inside one process: two workers would hold two different databases.
    workers = 1

# Prometheus multiprocess mode: every worker writes its metrics to files in this directory and
# /metrics sums them. It must be in os.environ before a worker imports prometheus_client.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="taskapp-prometheus-")
METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _write_problem(sock, status_int, reason, mesg):
    """gunicorn's own error answers (headers over 8 KB: 431, a request line over 4 KB: 414, a
    malformed request: 400) as the API's problem details instead of an HTML page, with a
    request id of their own (the request's was not read)."""
    from taskapp import request_id
    from taskapp.errors import PROBLEM_JSON, problem_body, title

    body = problem_body(status_int, mesg or title(status_int).lower())
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"{request_id.HEADER}: {request_id.new()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers call gunicorn.util.write_error for requests gunicorn refuses before the app sees
# them; they fork from this master, so they inherit the problem-details version.
gunicorn.util.write_error = _write_problem


def on_starting(server):
    """Start with an empty metrics directory, and say why there is one worker if so."""
    os.makedirs(METRICS_DIR, exist_ok=True)
    for name in os.listdir(METRICS_DIR):
        path = os.path.join(METRICS_DIR, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    server.log.info("prometheus multiprocess directory: %s", METRICS_DIR)
    if _EMBEDDED:
        server.log.info(
            "workers = 1: embedded data lives in one process (%s)", ", ".join(_EMBEDDED)
        )
        server.num_workers = 1  # also over a -w/--workers on the command line


def nworkers_changed(server, new_value, old_value):
    """Hold an embedded backend to one worker, even when TTIN asks for more."""
    if _EMBEDDED and new_value is not None and new_value > 1:
        server.log.warning(
            "kept at 1 worker, not %d: embedded data lives in one process (%s)",
            new_value,
            ", ".join(_EMBEDDED),
        )
        server.num_workers = 1


def post_fork(server, worker):
    """Start tracing in the worker when the OTEL_* variables ask for it: its own tracer provider
    and exporter thread (a thread started in the master would not survive the fork)."""
    from taskapp import tracing

    tracing.start()


def post_worker_init(worker):
    """Start the worker's background work, then put what loading the app made out of the cyclic
    collector's sight (``gc.freeze``).

    The write-behind flusher starts here, with the worker (after the fork: its thread and
    connections are the worker's own), not with its first request: a worker that gets no
    request still applies the queued changes.

    A full collection otherwise walks every object of Flask, the app and its libraries: 30 to 50
    ms with every thread stopped, measured under a 100-request stampede, which then lands on
    whichever requests are in flight. Frozen, it walks only what requests allocated.
    """
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from taskapp.tasks.service import start_flushers

        start_flushers(app)
    gc.freeze()


def worker_exit(server, worker):
    """In the worker, as it exits (SIGTERM, max requests): stop its write-behind flusher after
    the batch in hand, so no task it was applying waits for its lease to run out."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from taskapp.tasks.service import stop_flushers

        stop_flushers(app)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this file made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
