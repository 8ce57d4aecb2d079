"""OpenTelemetry traces: a span per request (the fast path's hits too) named by its route, with
the cache's decisions as attributes, and a child span for each Redis call and each MongoDB
command; nothing at all unless the OTEL_* variables ask for traces."""

from __future__ import annotations

import json
import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from taskapp import tracing
from taskapp.cache import tracing as cache_tracing
from taskapp.cache.tracing import DECISIONS
from tests.api import PausedRead, account
from tests.cache_helpers import wait_until
from tests.test_gunicorn import call, serve  # noqa: F401  (the fixture)

TASKS = "/api/v1/tasks"
TASK_ROUTE = "/api/v1/tasks/<objectid:task_id>"


@pytest.fixture
def spans():
    """Tracing on in this process, into memory: the exporter (spans as they end)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider)
    yield exporter
    tracing.stop()


def is_redis(span) -> bool:
    return span.attributes.get("db.system.name") == "redis"


def is_mongodb(span) -> bool:
    return "mongodb" in (span.attributes.get("db.system"), span.attributes.get("db.system.name"))


class Trace:
    """The spans one request made: its own (the server span) and its children."""

    def __init__(self, finished) -> None:
        servers = [span for span in finished if span.kind == SpanKind.SERVER]
        assert len(servers) == 1, [span.name for span in finished]
        self.request = servers[0]
        self.children = [span for span in finished if span is not self.request]
        for child in self.children:
            assert child.context.trace_id == self.request.context.trace_id, child.name
            assert child.parent is not None and child.parent.span_id == self.request.context.span_id

    @property
    def redis(self) -> list:
        return [span for span in self.children if is_redis(span)]

    @property
    def mongodb(self) -> list:
        return [span for span in self.children if is_mongodb(span)]

    @property
    def decisions(self) -> tuple[str, ...]:
        return tuple(self.request.attributes.get(DECISIONS, ()))


def traced(spans, request) -> Trace:
    """The trace of one request (``request()``, a call of the test client)."""
    spans.clear()
    response = request()
    response.close()  # the request's span ends as the server closes its answer
    trace = Trace(spans.get_finished_spans())
    trace.response = response  # type: ignore[attr-defined]
    return trace


def test_a_hit_has_one_redis_span_and_no_mongodb_span_and_a_miss_has_both(make_app, spans):
    app = make_app()
    client = app.test_client()
    _, auth = account(client)
    task = client.post(TASKS, json={"title": "traced"}, headers=auth).get_json()
    path = f"{TASKS}/{task['id']}"

    miss = traced(spans, lambda: client.get(path, headers=auth))
    hit = traced(spans, lambda: client.get(path, headers=auth))

    assert miss.response.headers["X-Cache"] == "MISS"
    assert hit.response.headers["X-Cache"] == "HIT"
    for trace in (miss, hit):
        assert trace.request.name == f"GET {TASK_ROUTE}"
        assert trace.request.attributes["http.route"] == TASK_ROUTE
        assert (
            trace.request.attributes["taskapp.request_id"] == trace.response.headers["X-Request-ID"]
        )
    # The fast path's one call: the revocation check, the rate limit and the lookup.
    assert len(hit.redis) == 1 and hit.mongodb == []
    assert hit.decisions[-1] == "http.hit"
    assert miss.redis and miss.mongodb
    assert all(span.name.startswith("taskapp") for span in miss.mongodb)  # database.command
    assert "http.miss" in miss.decisions and "fill" in miss.decisions


def test_the_flask_paths_requests_are_traced_alike(make_app, spans):
    app = make_app(HTTP_FAST_PATH=False)
    client = app.test_client()
    _, auth = account(client)
    created = traced(spans, lambda: client.post(TASKS, json={"title": "t"}, headers=auth))
    assert created.request.name == f"POST {TASKS}"
    assert created.redis and created.mongodb  # the admission call, the insert
    path = f"{TASKS}/{created.response.get_json()['id']}"
    client.get(path, headers=auth)
    hit = traced(spans, lambda: client.get(path, headers=auth))
    assert hit.response.headers["X-Cache"] == "HIT"
    assert hit.redis and hit.mongodb == []
    assert "http.hit" in hit.decisions


def test_a_fill_refused_because_a_write_came_first_is_a_decision(make_app, spans, monkeypatch):
    app = make_app(SIMULATED_DB_LATENCY_MS=1)
    client = app.test_client()
    _, auth = account(client)
    path = f"{TASKS}/{client.post(TASKS, json={'title': 'old'}, headers=auth).get_json()['id']}"
    paused = PausedRead(monkeypatch)
    spans.clear()
    reader = threading.Thread(
        target=lambda: app.test_client().get(path, headers=auth).close(), name="reader"
    )
    reader.start()
    assert paused.taken.wait(10)
    client.patch(path, json={"title": "new"}, headers=auth)
    paused.release.set()
    reader.join(10)
    read = [
        span
        for span in spans.get_finished_spans()
        if span.kind == SpanKind.SERVER and span.name == f"GET {TASK_ROUTE}"
    ]
    assert len(read) == 1
    assert "refused_stale_fill" in read[0].attributes[DECISIONS]


def test_a_redis_down_shows_as_failed_redis_spans_then_the_breaker_open(make_app, spans):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", CACHE_BREAKER_THRESHOLD=1)
    client = app.test_client()
    _, auth = account(client)
    trace = traced(spans, lambda: client.get(TASKS, headers=auth))
    assert trace.response.status_code == 200  # served from MongoDB
    assert trace.redis and all(not span.status.is_ok for span in trace.redis)
    assert "breaker_open" in trace.decisions


def test_without_otel_variables_nothing_is_traced(make_app, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.requested()
    app = make_app()
    assert tracing.provider() is None and cache_tracing.tracer is None
    assert type(app.wsgi_app).__name__ == "RequestIds"
    assert "OpenTelemetry" not in type(app.wsgi_app.app).__name__


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "taskapp"}, False),
    ],
)
def test_the_otel_variables_decide_whether_requests_are_traced(environ, wanted):
    assert tracing.requested(environ) is wanted


def test_under_gunicorn_the_console_exporter_prints_each_workers_spans(
    serve,  # noqa: F811
    redis_url,
    key_prefix,
    mongodb_uri,
):
    """OTEL_TRACES_EXPORTER=console: each worker (set up in post_fork) prints its spans as JSON,
    a request's span with its Redis and MongoDB children in one trace."""
    server = serve(
        REDIS_URL=redis_url,
        CACHE_KEY_PREFIX=key_prefix,
        MONGODB_URI=mongodb_uri,
        SECRET_KEY="tracing-test-secret-key-with-32-bytes!!",
        GUNICORN_WORKERS="2",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="taskapp-under-test",
    )
    credentials = {"email": "traced@example.com", "password": "correct horse battery"}
    assert call(server.base, "POST", "/api/v1/auth/register", credentials)[0] == 201
    _, _, login = call(server.base, "POST", "/api/v1/auth/login", credentials)
    auth = {"Authorization": f"Bearer {login['access_token']}", "X-Request-ID": "traced-1"}
    status, head, _ = call(server.base, "GET", TASKS, headers=auth)
    assert status == 200 and head["X-Request-ID"] == "traced-1"

    def printed() -> list[dict]:
        found, text, at = [], server.output(), 0
        decoder = json.JSONDecoder()
        while (start := text.find("{\n", at)) != -1:
            try:
                span, at = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                at = start + 1
                continue
            if isinstance(span, dict) and "context" in span:
                found.append(span)
        return found

    def request_span() -> dict | None:
        return next(
            (
                span
                for span in printed()
                if span.get("attributes", {}).get("taskapp.request_id") == "traced-1"
            ),
            None,
        )

    wait_until(lambda: request_span() is not None, timeout=10, interval=0.05)
    span = request_span()
    assert span["name"] == f"GET {TASKS}" and span["kind"] == "SpanKind.SERVER"
    assert span["resource"]["attributes"]["service.name"] == "taskapp-under-test"
    children = [
        child
        for child in printed()
        if child.get("parent_id") == span["context"]["span_id"]
        and child["context"]["trace_id"] == span["context"]["trace_id"]
    ]
    kinds = {
        child["attributes"].get("db.system.name") or child["attributes"].get("db.system")
        for child in children
    }
    assert {"redis", "mongodb"} <= kinds
