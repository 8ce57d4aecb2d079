"""The deployment shape end to end: gunicorn with 3 workers on one FerretDB and one redis-server.

Requests go over fresh connections, so the kernel spreads them over the workers; gunicorn's access
log names the pid that answered each one (``%(p)s``), so a test can tell that every worker took
part.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pymongo
import pytest
from bson import ObjectId

from tests.test_gunicorn import ROOT, call, serve  # noqa: F401  (the fixture)

WORKERS = 3
PASSWORD = "correct horse battery"
SECRET_KEY = "deployment-test-secret-key-with-32-bytes"
# pid, request line's method and path, status: enough to map each answer to its worker.
ACCESS_FORMAT = "access pid=%(p)s %(m)s %(U)s %(s)s"
ACCESS_LINE = re.compile(r"access pid=<(\d+)> (\w+) (\S+) (\d{3})")


@pytest.fixture
def deployment(serve, redis_url, mongodb_uri, key_prefix):  # noqa: F811
    """Start gunicorn with 3 workers on the test Redis and a database of this test."""

    def start(**env: str):
        settings = {
            "REDIS_URL": redis_url,
            "MONGODB_URI": mongodb_uri,
            "CACHE_KEY_PREFIX": key_prefix,
            "SECRET_KEY": SECRET_KEY,
            "GUNICORN_WORKERS": str(WORKERS),
            "EXTRA_ARGS": f"--access-logformat '{ACCESS_FORMAT}'",
            **env,
        }
        server = serve(**settings)
        server.env = settings
        wait_for_workers(server, WORKERS)
        return server

    return start


def wait_for_workers(server, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` workers have booted and each answers (a worker imports the app)."""
    deadline = time.monotonic() + timeout
    while len(answering_pids(server)) < count:
        assert time.monotonic() < deadline, server.output()
        for _ in range(10):
            call(server.base, "GET", "/healthz")


def answering_pids(server) -> set[int]:
    return {int(pid) for pid, *_ in ACCESS_LINE.findall(server.output())}


def answers(server, method: str, path: str) -> list[tuple[int, int]]:
    """(pid, status) of every logged request with this method and path, in order."""
    return [
        (int(pid), int(status))
        for pid, m, p, status in ACCESS_LINE.findall(server.output())
        if m == method and p == path
    ]


def wait_logged(server, method: str, path: str, count: int) -> list[tuple[int, int]]:
    """The access-log lines of ``count`` requests (gunicorn writes them after the response)."""
    deadline = time.monotonic() + 5
    while len(found := answers(server, method, path)) < count:
        assert time.monotonic() < deadline, (count, found)
        time.sleep(0.02)
    return found


def register(server, email: str | None = None) -> tuple[str, str]:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    status, _, body = call(
        server.base, "POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD}
    )
    assert status == 201, body
    return body["id"], email


def login(server, email: str) -> dict[str, str]:
    status, _, body = call(
        server.base, "POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}
    )
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


def db_reads(server) -> float:
    """``taskapp_db_reads_total`` summed over every worker (prometheus multiprocess mode)."""
    _, _, text = call(server.base, "GET", "/metrics")
    found = re.search(r"^taskapp_db_reads_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_an_account_made_on_one_worker_logs_in_on_every_worker(deployment):
    server = deployment(LOGIN_RATE_LIMIT_PER_MINUTE="1000")
    _, email = register(server)
    (registrar,) = {pid for pid, _ in wait_logged(server, "POST", "/api/v1/auth/register", 1)}
    logins: list[tuple[int, int]] = []
    for _ in range(60):
        login(server, email)
        logins = wait_logged(server, "POST", "/api/v1/auth/login", len(logins) + 1)
        if len({pid for pid, _ in logins}) == WORKERS:
            break
    assert {status for _, status in logins} == {200}
    assert (
        len({pid for pid, _ in logins}) == WORKERS
    )  # including workers other than the registrar's
    assert {pid for pid, _ in logins} - {registrar}


def test_a_user_made_by_the_cli_logs_in_and_passes_the_admin_check(deployment):
    server = deployment()
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({k: v for k, v in server.env.items() if k not in ("EXTRA_ARGS", "GUNICORN_WORKERS")})
    flask = Path(sys.executable).parent / "flask"
    result = subprocess.run(
        [str(flask), "--app", "taskapp", "users", "create", email, "--role", "admin"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    user_id = re.search(r"id ([0-9a-f]{24})", result.stdout).group(1)
    headers = login(server, email)
    status, _, me = call(
        server.base, "GET", f"/api/v1/admin/users/{user_id}/tasks", headers=headers
    )
    assert status == 200, me


def test_a_stampede_of_60_cold_gets_over_3_workers_reads_mongodb_once(deployment):
    server = deployment(SIMULATED_DB_LATENCY_MS="300", RATE_LIMIT_PER_MINUTE="0")
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "hot"}, headers)
    assert status == 201
    path = f"/api/v1/tasks/{task['id']}"
    before = db_reads(server)
    barrier = threading.Barrier(60)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def get() -> None:
        barrier.wait()
        status, _, body = call(server.base, "GET", path, headers=headers)
        with lock:
            results.append((status, body))

    threads = [threading.Thread(target=get) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in results] == [200] * 60
    assert all(body == task for _, body in results)
    assert db_reads(server) - before == 1
    assert len({pid for pid, _ in wait_logged(server, "GET", path, 60)}) > 1


def test_the_per_user_rate_limit_holds_across_workers(deployment):
    server = deployment(RATE_LIMIT_PER_MINUTE="20")
    _, email = register(server)
    headers = login(server, email)
    statuses = [call(server.base, "GET", "/api/v1/tasks", headers=headers)[0] for _ in range(30)]
    assert Counter(statuses) == {200: 20, 429: 10}
    assert statuses[:20] == [200] * 20
    assert len({pid for pid, _ in wait_logged(server, "GET", "/api/v1/tasks", 30)}) > 1


def test_the_per_user_rate_limit_is_exact_under_concurrent_hits_on_every_worker(deployment):
    """Hits are counted by one BITFIELD each (scope_state.py), refusals by the library: 96
    concurrent requests for a cached task, of which exactly the limit's rest is answered."""
    server = deployment(RATE_LIMIT_PER_MINUTE="40")
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "hot"}, headers)
    assert status == 201
    path = f"/api/v1/tasks/{task['id']}"
    statuses: list[int] = []
    barrier = threading.Barrier(16)

    def hammer() -> None:
        barrier.wait()
        for _ in range(6):
            statuses.append(call(server.base, "GET", path, headers=headers)[0])

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(statuses) == {200: 39, 429: 57}  # the POST was the first of the 40
    assert len({pid for pid, _ in wait_logged(server, "GET", path, 96)}) > 1


@pytest.mark.parametrize("rate_limit", ["0", "100000"], ids=["rate-limit-off", "rate-limit-on"])
def test_no_worker_answers_an_older_value_after_a_write_was_answered(deployment, rate_limit):
    """Read-your-writes across workers: 20 writes, 9 reads over fresh connections after each.

    No message tells a worker that its memory is out of date: each in-process entry is checked
    against its scope's version in Redis, read in the request's own round trip.
    """
    server = deployment(RATE_LIMIT_PER_MINUTE=rate_limit)
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "v0"}, headers)
    path = f"/api/v1/tasks/{task['id']}"
    stale = []
    for i in range(1, 21):
        # Every worker holds the current value in every cache layer before the write.
        for _ in range(9):
            assert call(server.base, "GET", path, headers=headers)[2]["title"] == f"v{i - 1}"
        status, _, body = call(server.base, "PATCH", path, {"title": f"v{i}"}, headers)
        assert status == 200, body
        for _ in range(9):
            status, head, body = call(server.base, "GET", path, headers=headers)
            assert status == 200
            if body["title"] != f"v{i}":
                stale.append((i, body["title"], head.get("X-Cache")))
    read_by = {pid for pid, _ in answers(server, "GET", path)}
    assert stale == []
    assert len(read_by) == WORKERS


def test_write_behind_loses_no_accepted_change_when_a_worker_is_killed(deployment, mongodb_uri):
    server = deployment(
        TASK_WRITE_STRATEGY="write-behind",
        WRITE_BEHIND_FLUSH_MS="200",
        WRITE_BEHIND_CLAIM_IDLE_MS="500",
        RATE_LIMIT_PER_MINUTE="0",
    )
    _, email = register(server)
    headers = login(server, email)
    tasks = [
        call(server.base, "POST", "/api/v1/tasks", {"title": f"t{n}-0"}, headers)[2]
        for n in range(5)
    ]
    accepted: dict[str, str] = {}
    victim = None
    for round_ in range(1, 21):
        if round_ == 8:  # mid-stream: SIGKILL a worker, with its flusher and whatever it read
            victim = max(answering_pids(server))
            os.kill(victim, signal.SIGKILL)
        for task in tasks:
            title = f"{task['title'].split('-')[0]}-{round_}"
            status, _, body = call(
                server.base, "PATCH", f"/api/v1/tasks/{task['id']}", {"title": title}, headers
            )
            if status == 200:
                accepted[task["id"]] = title
            else:
                assert status in (502, 503), body  # refused: not accepted, may be lost
    assert victim is not None
    assert len(accepted) == len(tasks)

    parts = urlsplit(mongodb_uri)
    client = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=3000)
    collection = client[parts.path.lstrip("/")]["tasks"]
    deadline = time.monotonic() + 20
    try:
        while True:
            stored = {
                str(doc["_id"]): doc["title"]
                for doc in collection.find({"_id": {"$in": [ObjectId(t) for t in accepted]}})
            }
            if stored == accepted:
                break
            assert time.monotonic() < deadline, (stored, accepted)
            time.sleep(0.1)
    finally:
        client.close()


def test_write_behind_flushers_start_with_the_workers_before_any_request(
    make_app, durable_redis, mongodb_uri, key_prefix, tmp_path
):
    """A Redis of this test alone: its clients are the test's and the workers'."""
    from taskapp.extensions import cache
    from taskapp.models import Task
    from taskapp.tasks import service
    from taskapp.tasks.schemas import TaskCreate, TaskUpdate
    from tests.test_gunicorn import Server

    app = make_app(TASK_WRITE_STRATEGY="write-behind", REDIS_URL=durable_redis.url)
    with app.app_context():  # not a serving process: it queues, and nothing flushes
        user_id = str(ObjectId())
        task = service.create_task(user_id, TaskCreate(title="before"))
        service.update_task(user_id, task["id"], TaskUpdate(title="queued"))
        queue = cache.write_behind()
    server = Server(
        {
            "REDIS_URL": durable_redis.url,
            "MONGODB_URI": mongodb_uri,
            "CACHE_KEY_PREFIX": key_prefix,
            "SECRET_KEY": SECRET_KEY,
            "GUNICORN_WORKERS": str(WORKERS),
            "TASK_WRITE_STRATEGY": "write-behind",
            "WRITE_BEHIND_FLUSH_MS": "100",
            "EXTRA_ARGS": f"--access-logformat '{ACCESS_FORMAT}'",
        },
        tmp_path / "gunicorn.log",
    )
    try:
        deadline = time.monotonic() + 30

        def flushers() -> int:
            """Connections reading the stream: one per flusher (each has its own)."""
            return sum(c["cmd"] == "xreadgroup" for c in queue.client.client_list())

        while flushers() < WORKERS:  # no request is made: the workers start them at boot
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        with app.app_context():
            while Task.objects(id=ObjectId(task["id"])).first().title != "queued":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert server.output().count("Booting worker") == WORKERS
        assert answering_pids(server) == set()  # no request was ever answered
    finally:
        server.stop()


def test_a_change_that_keeps_failing_is_a_dead_letter_the_fleet_reports(deployment, make_app):
    from taskapp import keys
    from taskapp.extensions import cache

    server = deployment(
        TASK_WRITE_STRATEGY="write-behind",
        WRITE_BEHIND_FLUSH_MS="100",
        WRITE_BEHIND_CLAIM_IDLE_MS="100",
        RATE_LIMIT_PER_MINUTE="0",
    )
    user_id, email = register(server)
    headers = login(server, email)
    bad, good = (
        call(server.base, "POST", "/api/v1/tasks", {"title": title}, headers)[2]
        for title in ("bad", "good")
    )
    app = make_app(TASK_WRITE_STRATEGY="write-behind")  # the same Redis prefix and database
    with app.app_context():  # a state MongoDB's apply can never write (no such priority)
        queue = cache.write_behind()
        queue.stage(
            keys.task(user_id, bad["id"]),
            bad["id"],
            {**bad, "owner": user_id, "version": 1},
            {"priority": "urgent"},
        )
    status, _, body = call(
        server.base, "PATCH", f"/api/v1/tasks/{good['id']}", {"title": "good-2"}, headers
    )
    assert status == 200, body
    deadline = time.monotonic() + 30
    while queue.client.xlen(queue.dead_letters) < 1 or queue.client.xlen(queue.stream):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    parts = urlsplit(server.env["MONGODB_URI"])
    client = pymongo.MongoClient(server.env["MONGODB_URI"], serverSelectionTimeoutMS=3000)
    try:
        stored = client[parts.path.lstrip("/")]["tasks"].find_one({"_id": ObjectId(good["id"])})
    finally:
        client.close()
    assert stored["title"] == "good-2"  # the failing change held nothing up
    # Dead, not pending: every worker answers what MongoDB has.
    for _ in range(6):
        status, _, shown = call(server.base, "GET", f"/api/v1/tasks/{bad['id']}", headers=headers)
        assert (status, shown["priority"]) == (200, "medium")
    _, _, text = call(server.base, "GET", "/metrics")
    found = re.search(r"^taskapp_write_behind_dead_letters_total (\S+)$", text, re.MULTILINE)
    assert found and float(found.group(1)) == 1.0
    output = app.test_cli_runner().invoke(args=["write-behind", "status"]).output
    assert "dead letters:    1" in output
    assert f"object {bad['id']} version 2, 5 attempts: KeyError" in output
