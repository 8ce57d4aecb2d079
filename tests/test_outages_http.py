"""The HTTP API while its Redis hangs (SIGSTOP), dies (SIGKILL) or is down at start-up.

Every request is still answered, as fast as an uncached one; writes succeed; once Redis is back,
the invalidations the outage held back are replayed before anything cached is served again.
"""

from __future__ import annotations

import statistics
import time

import pytest

from taskapp import keys
from taskapp.auth import revocation, tokens
from taskapp.extensions import cache
from tests.api import account, cache_errors

TASKS = "/api/v1/tasks"
STATS = "/api/v1/tasks/stats"
ACTIVITY = "/api/v1/activity"
COOLDOWN = 0.5
DB_LATENCY_MS = 20


@pytest.fixture
def app(make_app, private_redis):
    return make_app(
        REDIS_URL=private_redis.url,
        CACHE_BREAKER_COOLDOWN=COOLDOWN,
        SIMULATED_DB_LATENCY_MS=DB_LATENCY_MS,
    )


def create(client, headers, title: str, **fields) -> dict:
    response = client.post(TASKS, json={"title": title, **fields}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def timed_get(client, url: str, headers: dict[str, str]):
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    return response, time.perf_counter() - started


def list_titles(client, headers) -> list[str]:
    response = client.get(TASKS, headers=headers)
    assert response.status_code == 200
    return [item["title"] for item in response.get_json()["items"]]


OUTAGES = {
    # (begin, end): a hung server keeps connections open and answers nothing; a killed one
    # refuses connections and comes back empty.
    "paused": (lambda server: server.pause(), lambda server: server.resume()),
    "killed": (lambda server: server.kill(), lambda server: server.start()),
}


@pytest.mark.parametrize("outage", OUTAGES)
def test_the_api_serves_reads_and_writes_through_a_redis_outage_and_replays_its_invalidations(
    app, client, private_redis, outage
):
    begin, end = OUTAGES[outage]
    user_id, headers = account(client)
    keep = create(client, headers, "keep", completed=False)
    doomed = create(client, headers, "doomed")
    create(client, headers, "other", completed=True)
    task_url = f"{TASKS}/{keep['id']}"
    urls = {"task": task_url, "list": TASKS, "stats": STATS}
    expected = {
        "task": keep,
        "list": {"titles": ["other", "doomed", "keep"], "total": 3},
        "stats": {"total": 3, "completed": 1, "open": 2, "overdue": 0},
    }

    def check_body(name: str, body: dict) -> None:
        if name == "list":
            assert [item["title"] for item in body["items"]] == expected["list"]["titles"]
            assert body["total"] == expected["list"]["total"]
        else:
            assert body == expected[name]

    # Cached before the outage: every URL is a hit, with the right body.
    for name, url in urls.items():
        assert client.get(url, headers=headers).headers["X-Cache"] == "MISS"
        response = client.get(url, headers=headers)
        assert response.headers["X-Cache"] == "HIT"
        check_body(name, response.get_json())
    assert client.get(ACTIVITY, headers=headers).status_code == 200

    # The cost of an uncached request against a healthy Redis: every cache layer emptied first.
    uncached: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(7):
        for name, url in urls.items():
            with app.app_context():
                cache.invalidate_tags(
                    keys.task_tag(user_id, keep["id"]),
                    keys.collection_tag(user_id),
                    keys.responses_tag(user_id),
                )
            response, seconds = timed_get(client, url, {**headers, "Cache-Control": "no-cache"})
            assert response.status_code == 200
            assert response.headers["X-Cache"] == "MISS"
            check_body(name, response.get_json())
            uncached[name].append(seconds)

    # Cached again (the measurement emptied the cache), so a missed replay would show stale data.
    for name, url in urls.items():
        client.get(url, headers=headers)
        response = client.get(url, headers=headers)
        assert response.headers["X-Cache"] == "HIT"
        check_body(name, response.get_json())

    # While Redis is down each authenticated request also checks its token against MongoDB
    # (taskapp.auth.revocation: revoked tokens stay refused): its cost, measured the same way.
    access = tokens.access_of(headers["Authorization"], app.config["SECRET_KEY"])
    check: list[float] = []
    with app.app_context():
        for _ in range(7):
            started = time.perf_counter()
            assert revocation._admitted_by_mongodb(access)
            check.append(time.perf_counter() - started)
    token_check = statistics.median(check)

    errors_before = cache_errors()
    during: dict[str, list[float]] = {name: [] for name in urls}
    begin(private_redis)
    try:
        for _ in range(10):
            for name, url in urls.items():
                response, seconds = timed_get(client, url, headers)
                assert response.status_code == 200, (name, response.get_json())
                check_body(name, response.get_json())
                during[name].append(seconds)
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json() == {
            "status": "degraded",
            "checks": {"mongodb": True, "redis": False},
        }

        # Writes succeed, and reads during the outage already show them (from MongoDB).
        added = create(client, headers, "added during the outage")
        response = client.patch(
            task_url,
            json={"title": "renamed during the outage", "completed": True},
            headers=headers,
        )
        assert response.status_code == 200
        renamed = response.get_json()
        assert client.delete(f"{TASKS}/{doomed['id']}", headers=headers).status_code == 204
        assert client.get(task_url, headers=headers).get_json() == renamed
        assert list_titles(client, headers) == [
            "added during the outage",
            "other",
            "renamed during the outage",
        ]
    finally:
        end(private_redis)

    assert cache_errors() > errors_before
    for name in urls:
        paused, fresh = statistics.median(during[name]), statistics.median(uncached[name])
        assert paused <= (fresh + token_check) * 1.2 + 0.005, (
            f"{name}: median {paused * 1000:.1f} ms during the outage, "
            f"{fresh * 1000:.1f} ms uncached with Redis up, {token_check * 1000:.1f} ms token check"
        )

    # Back: after the cool-down, nothing cached before the outage hides a write made during it.
    time.sleep(COOLDOWN + 0.2)
    for _ in range(2):
        response = client.get(task_url, headers=headers)
        assert response.status_code == 200
        assert response.get_json() == renamed
        assert list_titles(client, headers) == [
            "added during the outage",
            "other",
            "renamed during the outage",
        ]
        assert client.get(STATS, headers=headers).get_json() == {
            "total": 3,
            "completed": 2,
            "open": 1,
            "overdue": 0,
        }
        assert client.get(f"{TASKS}/{doomed['id']}", headers=headers).status_code == 404
        assert client.get(f"{TASKS}/{added['id']}", headers=headers).get_json() == added
        feed = client.get(ACTIVITY, headers=headers).get_json()["items"]
        assert [(item["action"], item["title"]) for item in feed[:3]] == [
            ("deleted", "doomed"),
            ("updated", "renamed during the outage"),
            ("created", "added during the outage"),
        ]
    # ... and the cache is in use again.
    cached_again(client, task_url, headers)
    assert client.get(TASKS, headers=headers).headers["X-Cache"] == "HIT"
    assert client.get("/readyz").get_json()["status"] == "ready"
    with app.app_context():
        assert not cache.degraded


def cached_again(client, url: str, headers: dict[str, str], timeout: float = 5.0):
    """The first ``X-Cache: HIT`` answer for ``url`` once the breaker's background probe has
    closed it (reads until then are answered from MongoDB)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url, headers=headers)
        if response.headers["X-Cache"] == "HIT" or time.monotonic() > deadline:
            assert response.headers["X-Cache"] == "HIT"
            return response
        time.sleep(0.02)


def test_an_app_starts_and_serves_while_redis_is_down_and_uses_it_once_it_is_up(
    make_app, private_redis
):
    private_redis.kill()
    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_COOLDOWN=COOLDOWN)
    client = app.test_client()
    _, headers = account(client)
    task = create(client, headers, "made without redis")
    for _ in range(3):
        response = client.get(f"{TASKS}/{task['id']}", headers=headers)
        assert response.status_code == 200
        assert response.get_json() == task
        assert response.headers["X-Cache"] == "MISS"
    assert list_titles(client, headers) == ["made without redis"]
    assert client.get(STATS, headers=headers).get_json()["total"] == 1
    assert client.get(ACTIVITY, headers=headers).status_code == 200
    assert client.get("/readyz").get_json()["status"] == "degraded"

    private_redis.start()
    time.sleep(COOLDOWN + 0.2)
    assert client.get(f"{TASKS}/{task['id']}", headers=headers).get_json() == task
    response = cached_again(client, f"{TASKS}/{task['id']}", headers)
    assert response.get_json() == task
    assert client.get("/readyz").get_json()["status"] == "ready"
