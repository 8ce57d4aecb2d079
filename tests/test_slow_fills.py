"""One fill however slow, through HTTP: gunicorn with 3 workers on FerretDB and Redis.

Each fill here takes longer than both CACHE_LOCK_WAIT (how often a waiter looks at the lock
again) and CACHE_LOCK_TTL (how long a lock lives without renewal): waiters must keep waiting
while the holder renews its lock, and take over only when the holder died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from tests.test_deployment import (  # noqa: F401  (deployment and serve are fixtures)
    ROOT,
    db_reads,
    deployment,
    login,
    register,
    serve,
)
from tests.test_gunicorn import call

LATENCY_MS = 1500
SLOW = {
    "SIMULATED_DB_LATENCY_MS": str(LATENCY_MS),
    # A request's MongoDB bound, its waits for fills included: long enough for what waiters do
    # here (wait 3 s for a live holder, then for the fill of the one that takes over).
    "MONGODB_TIMEOUT_MS": "10000",
    "CACHE_LOCK_WAIT": "0.5",
    "CACHE_LOCK_TTL": "1",
    "RATE_LIMIT_PER_MINUTE": "0",
}
GETS = 12


def concurrent_gets(base: str, path: str, headers: dict[str, str], count: int):
    """Start ``count`` GETs at once in threads: (threads, answers list filled as they end)."""
    barrier = threading.Barrier(count)
    answers: list[tuple[int, dict, float]] = []
    lock = threading.Lock()

    def get() -> None:
        barrier.wait()
        status, _, body = call(base, "GET", path, headers=headers)
        with lock:
            answers.append((status, body, time.monotonic()))

    threads = [threading.Thread(target=get) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


@pytest.mark.parametrize(
    ("route", "reads_per_fill"),
    [("task", 1), ("list page", 2)],  # a page reads its items and its count
)
def test_concurrent_gets_across_workers_make_one_fill_slower_than_the_lock_wait_and_ttl(
    deployment,  # noqa: F811
    route,
    reads_per_fill,
):
    server = deployment(**SLOW)
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "slow"}, headers)
    assert status == 201
    path = f"/api/v1/tasks/{task['id']}" if route == "task" else "/api/v1/tasks?per_page=5"
    before = db_reads(server)

    started = time.monotonic()
    threads, answers = concurrent_gets(server.base, path, headers, GETS)
    for thread in threads:
        thread.join(30)

    # One fill, though it took 3 or 6 lock waits and 1.5 or 3 lock TTLs.
    assert db_reads(server) - before == reads_per_fill
    fresh = {**headers, "Cache-Control": "no-cache"}  # the view's own answer, for comparison
    status, _, expected = call(server.base, "GET", path, headers=fresh)
    assert status == 200
    assert [(status, body) for status, body, _ in answers] == [(200, expected)] * GETS
    assert max(t for _, _, t in answers) - started < 10 * LATENCY_MS / 1000


HOLDER = textwrap.dedent(
    """
    import sys
    from taskapp import create_app

    app = create_app()
    print("holding", flush=True)
    app.test_client().get(sys.argv[1], headers={"Authorization": sys.argv[2]})
    """
)


def test_a_holder_killed_mid_fill_is_replaced_by_one_waiter(deployment, redis_url):  # noqa: F811
    server = deployment(**SLOW)
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "orphan"}, headers)
    assert status == 201
    path = f"/api/v1/tasks/{task['id']}"
    raw = redis.Redis.from_url(redis_url)
    locks = server.env["CACHE_KEY_PREFIX"] + "lock:*"

    # Another process of the fleet (the same app and settings) takes the fill lock and hangs in
    # its MongoDB read, renewing the lock, until it is killed.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(server.env, SIMULATED_DB_LATENCY_MS="60000")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path, headers["Authorization"]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not list(raw.scan_iter(match=locks)):
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        before = db_reads(server)
        threads, answers = concurrent_gets(server.base, path, headers, GETS)
        time.sleep(3)  # 3 lock TTLs, 6 lock waits: the holder is alive, so everyone waits
        assert answers == []
        assert list(raw.scan_iter(match=locks)), "the live holder's lock was not renewed"
        holder.send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        holder.kill()
        holder.wait(10)
        raw.close()
    for thread in threads:
        thread.join(30)

    assert [(status, body) for status, body, _ in answers] == [(200, task)] * GETS
    assert db_reads(server) - before == 1  # one waiter took over; the others waited for it
    # The lock expires within a TTL, a waiter notices within a lock wait, then one fill.
    assert max(t for _, _, t in answers) - killed < 1 + 0.5 + 5 * LATENCY_MS / 1000
