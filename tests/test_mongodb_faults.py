"""A hung MongoDB through HTTP: gunicorn with 3 workers on FerretDB and Redis, FerretDB paused.

Each test starts a FerretDB of its own, so pausing it (SIGSTOP) cannot stall another test's
database; it is resumed in a ``finally``.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from tests.api import account, problem, problem_of
from tests.ferretdb import FerretDBServer
from tests.test_deployment import (
    ACCESS_FORMAT,
    SECRET_KEY,
    WORKERS,
    login,
    register,
    wait_for_workers,
)
from tests.test_gunicorn import call, serve  # noqa: F401  (the fixture)

TIMEOUT_MS = 2000
DEADLINE = TIMEOUT_MS / 1000
#: What a request may take past its MongoDB bound: Redis calls, a thread to run on, the answer.
MARGIN = 0.75
TASKS = "/api/v1/tasks"


@pytest.fixture
def ferretdb():
    server = FerretDBServer()
    yield server
    server.process.send_signal(signal.SIGCONT)  # in case a test failed between pause and resume
    server.stop()


@pytest.fixture
def deployment(serve, ferretdb, redis_url, key_prefix):  # noqa: F811
    """gunicorn with 3 workers on this test's FerretDB and the test Redis."""
    return serve_deployment(serve, f"{ferretdb.url}taskapp_faults", redis_url, key_prefix)


def serve_deployment(serve, mongodb_uri, redis_url, key_prefix, extra_args=""):  # noqa: F811
    """gunicorn with WORKERS workers, MONGODB_TIMEOUT_MS=TIMEOUT_MS and no rate limit, once
    every worker answers."""
    server = serve(
        REDIS_URL=redis_url,
        MONGODB_URI=mongodb_uri,
        CACHE_KEY_PREFIX=key_prefix,
        SECRET_KEY=SECRET_KEY,
        GUNICORN_WORKERS=str(WORKERS),
        EXTRA_ARGS=f"{extra_args}--access-logformat '{ACCESS_FORMAT}'",
        MONGODB_TIMEOUT_MS=str(TIMEOUT_MS),
        RATE_LIMIT_PER_MINUTE="0",
    )
    wait_for_workers(server, WORKERS)
    return server


def timed(method: str, base: str, path: str, body=None, headers=None):
    """(status, headers, body, seconds) of one request."""
    started = time.monotonic()
    status, head, answer = call(base, method, path, body, headers)
    return status, head, answer, time.monotonic() - started


class Writers:
    """Threads that PATCH a task over and over until stopped, each answer recorded."""

    def __init__(self, base: str, path: str, headers: dict[str, str], count: int) -> None:
        self.stop = threading.Event()
        self.answers: list[tuple[int, str | None, float]] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(base, path, headers)) for _ in range(count)
        ]

    def _run(self, base: str, path: str, headers: dict[str, str]) -> None:
        """PATCH over one kept-alive connection (a new one only when the server closed it), as
        a browser or a proxy does: a new connection per request, thousands a second, would
        recycle the client's ports into the server's TIME_WAIT sockets, and a SYN that meets one
        is answered only by its retransmission a second later, delaying whoever connects."""
        connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=10)
        sent = {**headers, "Content-Type": "application/json"}
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                connection.request("PATCH", path, json.dumps({"title": uuid.uuid4().hex}), sent)
                response = connection.getresponse()
                response.read()
            except (http.client.HTTPException, OSError):
                connection.close()  # closed by the server: the next request reconnects
                continue
            took = time.monotonic() - started
            with self._lock:
                self.answers.append((response.status, response.getheader("Retry-After"), took))
            if response.will_close:
                connection.close()
        connection.close()

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_a_paused_mongodb_costs_a_bounded_wait_and_cached_reads_stay_instant(deployment, ferretdb):
    server = deployment
    _, email = register(server)
    headers = login(server, email)
    tasks = [call(server.base, "POST", TASKS, {"title": f"t{i}"}, headers)[2] for i in range(2)]
    cached, uncached = (f"{TASKS}/{task['id']}" for task in tasks)
    assert call(server.base, "GET", cached, headers=headers)[0] == 200
    assert call(server.base, "GET", cached, headers=headers)[1]["X-Cache"] == "HIT"

    ferretdb.process.send_signal(signal.SIGSTOP)
    try:
        # More writers than the 6 threads of 3 workers x 2 threads: without a bound they would
        # hold every thread for as long as MongoDB is paused.
        with Writers(server.base, cached, headers, count=4 * WORKERS) as writers:
            time.sleep(DEADLINE * 1.5)  # the first writers have met the deadline by now
            hits = [timed("GET", server.base, cached, headers=headers) for _ in range(10)]
            miss = timed("GET", server.base, uncached, headers=headers)
            write = timed("POST", server.base, TASKS, {"title": "while paused"}, headers)
            ready = timed("GET", server.base, "/readyz")
        for status, head, body, took in hits:
            assert (status, head["X-Cache"], body) == (200, "HIT", tasks[0])
            assert took < DEADLINE / 2, [h[3] for h in hits]
        for status, head, body, took in (miss, write):
            assert status == 503, body
            problem_of(body, 503)
            assert int(head["Retry-After"]) >= 1
            assert took < 2 * DEADLINE + 2, took
        assert ready[0] == 503 and ready[2]["checks"]["mongodb"] is False, ready
        assert ready[3] < DEADLINE, ready[3]
        assert writers.answers, "no writer was answered while MongoDB was paused"
        assert {status for status, _, _ in writers.answers} == {503}
        assert all(retry for _, retry, _ in writers.answers)
        # At most one deadline queued behind the first writers, one waiting as a probe.
        assert max(took for _, _, took in writers.answers) < 2 * DEADLINE + 2
    finally:
        ferretdb.process.send_signal(signal.SIGCONT)

    # MongoDB is back: every worker serves writes and uncached reads again at once.
    for i in range(3 * WORKERS):
        status, _, body, took = timed(
            "PATCH", server.base, uncached, {"title": f"back {i}"}, headers
        )
        assert status == 200, body
        assert took < DEADLINE, took
    status, _, body = call(server.base, "GET", uncached, headers=headers)
    assert (status, body["title"]) == (200, f"back {3 * WORKERS - 1}")
    assert call(server.base, "GET", "/readyz")[0] == 200


#: Threads per worker in the bound test: more than its requests, so none waits for a thread
#: (time in gunicorn's queue is no MongoDB time) however the kernel spreads them.
THREADS = 16


def test_a_hung_mongodb_costs_each_request_at_most_the_bound_in_all(
    serve,  # noqa: F811
    ferretdb,
    redis_url,
    key_prefix,
):
    """12 uncached requests at once on 3 workers while FerretDB is paused: reads of one task
    (one fills, the others wait for its fill), reads of other tasks, a list page and writes.
    Each is answered 503 within MONGODB_TIMEOUT_MS and a margin for scheduling: a request's
    MongoDB time is bounded in all, its wait for another request's fill included, not once per
    query or per wait."""
    server = serve_deployment(
        serve, f"{ferretdb.url}taskapp_bound", redis_url, key_prefix, f"--threads {THREADS} "
    )
    _, email = register(server)
    headers = login(server, email)
    tasks = [call(server.base, "POST", TASKS, {"title": f"t{i}"}, headers)[2] for i in range(7)]
    paths = [f"{TASKS}/{task['id']}" for task in tasks]  # never read: nothing is cached
    requests = (
        [("GET", paths[0], None)] * 5
        + [("GET", path, None) for path in paths[1:5]]
        + [("GET", f"{TASKS}?per_page=7", None)]
        + [("PATCH", path, {"title": "while paused"}) for path in paths[5:7]]
    )
    start = threading.Barrier(len(requests))
    answers: list[tuple[str, str, int, float]] = []

    def send(method: str, path: str, body) -> None:
        start.wait()
        status, _, _, took = timed(method, server.base, path, body, headers)
        answers.append((method, path, status, took))

    threads = [threading.Thread(target=send, args=request) for request in requests]
    ferretdb.process.send_signal(signal.SIGSTOP)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        ferretdb.process.send_signal(signal.SIGCONT)
    assert len(answers) == len(requests)
    assert {status for _, _, status, _ in answers} == {503}, answers
    slowest = max(took for _, _, _, took in answers)
    assert slowest <= DEADLINE + MARGIN, sorted(answers, key=lambda answer: -answer[3])


def test_a_request_that_meets_a_stalled_mongodb_is_answered_503_at_once(make_app, ferretdb):
    """One process: once its oldest MongoDB command has waited a third of the deadline with no
    answer, one more request probes and the others are answered 503 at once, before any
    timeout, instead of taking a thread each for the whole deadline."""
    app = make_app(MONGODB_URI=f"{ferretdb.url}taskapp_stall", MONGODB_TIMEOUT_MS=3000)
    _, headers = account(app.test_client())
    answers: dict[str, tuple[int, float]] = {}

    def post(name: str) -> None:
        started = time.monotonic()
        response = app.test_client().post(TASKS, json={"title": name}, headers=headers)
        answers[name] = (response.status_code, time.monotonic() - started)

    ferretdb.process.send_signal(signal.SIGSTOP)
    try:
        first = threading.Thread(target=post, args=("first",))
        first.start()
        time.sleep(1.0 + 0.3)  # past a third of the deadline: MongoDB has stalled
        probe = threading.Thread(target=post, args=("probe",))
        probe.start()
        time.sleep(0.2)
        post("third")
        status, took = answers["third"]
        assert status == 503
        assert took < 0.5, took
        assert "first" not in answers and "probe" not in answers  # both still waiting
    finally:
        ferretdb.process.send_signal(signal.SIGCONT)
    first.join(10)
    probe.join(10)
    response = app.test_client().post(TASKS, json={"title": "after"}, headers=headers)
    assert response.status_code == 201


def test_a_write_past_the_deadline_is_answered_503_with_retry_after(make_app):
    """mongoengine re-raises pymongo's time limit on a save as its own OperationError; the
    answer is still a JSON 503, not a 500. (1 ms: no insert on FerretDB is that quick.)"""
    app = make_app(MONGODB_TIMEOUT_MS=1)
    response = app.test_client().post(
        "/api/v1/auth/register",
        json={"email": "late@example.com", "password": "correct horse battery"},
    )
    problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
