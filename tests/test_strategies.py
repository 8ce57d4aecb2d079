"""Each TASK_READ_STRATEGY and TASK_WRITE_STRATEGY end to end over HTTP, with its race protection."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from bson import ObjectId

from taskapp import keys
from taskapp.cache import writebehind
from taskapp.extensions import cache
from taskapp.models import Task
from taskapp.tasks import service
from tests.api import PausedRead, account, db_reads

TASKS = "/api/v1/tasks"
NO_HTTP_CACHE = {"Cache-Control": "no-cache"}  # skip the response cache: reach the service cache
READ = ["cache-aside", "read-through", "refresh-ahead"]
WRITE = ["invalidate", "write-through", "write-behind"]


def login(client) -> dict[str, str]:
    return account(client)[1]


def mongo_title(task_id: str) -> str:
    return Task.objects(id=ObjectId(task_id)).first().title


@pytest.mark.parametrize("write", WRITE)
@pytest.mark.parametrize("read", READ)
def test_every_mode_reads_its_own_writes_on_tasks_lists_and_stats(make_app, read, write):
    app = make_app(TASK_READ_STRATEGY=read, TASK_WRITE_STRATEGY=write, WRITE_BEHIND_FLUSH_MS=200)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    first = "HIT" if write == "write-through" else "MISS"  # write-through stored the new task
    assert client.get(path, headers=headers).headers["X-Cache"] == first
    hit = client.get(path, headers={**headers, **NO_HTTP_CACHE})
    assert (hit.headers["X-Cache"], hit.get_json()) == ("HIT", task)
    client.get(TASKS, headers=headers)
    client.get(f"{TASKS}/stats", headers=headers)

    patched = client.patch(path, json={"title": "second", "completed": True}, headers=headers)
    assert patched.status_code == 200
    assert patched.get_json()["title"] == "second"
    assert client.get(path, headers=headers).get_json()["title"] == "second"
    assert client.get(TASKS, headers=headers).get_json()["items"][0]["title"] == "second"
    if write != "write-behind":  # write-behind stats count what MongoDB has (once flushed)
        assert client.get(f"{TASKS}/stats", headers=headers).get_json()["completed"] == 1

    with app.app_context():
        deadline = time.monotonic() + 2
        while mongo_title(task["id"]) != "second" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mongo_title(task["id"]) == "second"
    assert client.get(f"{TASKS}/stats", headers=headers).get_json()["completed"] == 1
    assert client.delete(path, headers=headers).status_code == 204
    assert client.get(path, headers=headers).status_code == 404
    assert client.get(TASKS, headers=headers).get_json()["total"] == 0


def test_write_through_makes_the_next_read_a_hit_with_the_new_value(make_app):
    app = make_app(TASK_WRITE_STRATEGY="write-through")
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    client.patch(path, json={"title": "second"}, headers=headers)
    before = db_reads()
    response = client.get(path, headers={**headers, **NO_HTTP_CACHE})
    assert (response.headers["X-Cache"], response.get_json()["title"]) == ("HIT", "second")
    assert db_reads() == before


def test_read_through_loads_through_the_cache_once(make_app):
    app = make_app(TASK_READ_STRATEGY="read-through")
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "loaded"}, headers=headers).get_json()
    before = db_reads()
    for _ in range(3):
        client.get(f"{TASKS}/{task['id']}", headers={**headers, **NO_HTTP_CACHE})
    assert db_reads() - before == 1


def test_refresh_ahead_readers_of_a_hot_task_never_wait_for_mongodb(make_app):
    app = make_app(
        TASK_READ_STRATEGY="refresh-ahead", TASK_CACHE_TTL=1, SIMULATED_DB_LATENCY_MS=100
    )
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "hot"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    client.get(path, headers={**headers, **NO_HTTP_CACHE})  # the one cold read
    reads_before = db_reads()
    durations = []
    deadline = time.monotonic() + 3.5  # over three expiries of the 1 s entry
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = client.get(path, headers={**headers, **NO_HTTP_CACHE})
        durations.append(time.perf_counter() - started)
        # HIT: this request read nothing from MongoDB (a reader that refreshed would be a MISS).
        assert response.headers["X-Cache"] == "HIT"
        time.sleep(0.005)
    assert db_reads() - reads_before >= 2  # refreshed in the background, again and again
    assert statistics.median(durations) < 0.02


def test_write_behind_answers_at_once_and_reaches_mongodb_within_the_flush_time(make_app):
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=300)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    started = time.monotonic()
    assert client.patch(path, json={"title": "second"}, headers=headers).status_code == 200
    assert client.get(path, headers=headers).get_json()["title"] == "second"
    with app.app_context():
        while mongo_title(task["id"]) != "second":
            assert time.monotonic() - started < 0.3
            time.sleep(0.002)


def test_a_page_read_while_its_change_is_flushed_still_shows_the_change(make_app, monkeypatch):
    """The page is read from MongoDB before the flush; the flush lands and drops the pending
    state before the page is overlaid with pending states: the page still shows the PATCH."""
    page_read, settled = threading.Event(), threading.Event()
    fetch_page, apply, settle = service.FETCHERS["task_list"], service.apply_pending, None

    def slow_page(*args):
        result = fetch_page(*args)
        page_read.set()
        assert settled.wait(5)  # the flush applies and settles the change now
        return result

    def late_apply(task_id, state):
        assert page_read.wait(5)
        apply(task_id, state)

    def settle_and_tell(self, *args, **kwargs):
        result = settle(self, *args, **kwargs)
        settled.set()
        return result

    settle = writebehind.WriteBehind._settle_entry
    monkeypatch.setitem(service.FETCHERS, "task_list", slow_page)
    monkeypatch.setattr(service, "apply_pending", late_apply)
    monkeypatch.setattr(writebehind.WriteBehind, "_settle_entry", settle_and_tell)
    # The flusher starts with the app's first request, with the apply patched above.
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=20)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    assert client.patch(path, json={"title": "second"}, headers=headers).status_code == 200
    page = client.get(TASKS, headers={**headers, **NO_HTTP_CACHE}).get_json()
    with app.app_context():
        assert mongo_title(task["id"]) == "second"
    assert [item["title"] for item in page["items"]] == ["second"]
    assert "version" not in page["items"][0]


def test_write_behind_keeps_concurrent_patches_of_one_task(make_app):
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=200)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "t"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"

    statuses = []

    def patch(body):  # the status is checked by the main thread: a failed assert here only warns
        statuses.append(app.test_client().patch(path, json=body, headers=headers).status_code)

    threads = [
        threading.Thread(target=patch, args=(body,))
        for body in ({"title": "both"}, {"completed": True}, {"priority": "high"})
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200, 200, 200]
    expected = {"title": "both", "completed": True, "priority": "high"}
    shown = client.get(path, headers=headers).get_json()
    assert {k: shown[k] for k in expected} == expected
    with app.app_context():
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            stored = Task.objects(id=ObjectId(task["id"])).first()
            if stored.version == 4:
                break
            time.sleep(0.01)
        assert (stored.title, stored.completed, stored.priority, stored.version) == (
            "both",
            True,
            "high",
            4,
        )


@pytest.mark.parametrize("read", READ)
@pytest.mark.parametrize("write", ["invalidate", "write-through"])
def test_a_slow_read_racing_a_write_never_leaves_the_old_task_cached(
    make_app, monkeypatch, read, write
):
    app = make_app(TASK_READ_STRATEGY=read, TASK_WRITE_STRATEGY=write, SIMULATED_DB_LATENCY_MS=1)
    client = app.test_client()
    user_id, headers = account(client)
    task = client.post(TASKS, json={"title": "old"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    with app.app_context():  # write-through stored the new task: the reader must go to MongoDB
        cache.delete(keys.task(user_id, task["id"]))
    paused = PausedRead(monkeypatch)
    seen = []

    def read_task():
        response = app.test_client().get(path, headers={**headers, **NO_HTTP_CACHE})
        seen.append((response.headers["X-Cache"], response.get_json()["title"]))

    reader = threading.Thread(target=read_task, name="reader")
    reader.start()
    assert paused.taken.wait(10)  # the reader holds MongoDB's "old", not yet stored
    client.patch(path, json={"title": "new"}, headers=headers)
    paused.release.set()
    reader.join(10)
    assert seen == [("MISS", "old")]
    assert client.get(path, headers={**headers, **NO_HTTP_CACHE}).get_json()["title"] == "new"


def test_write_behind_refuses_changes_it_cannot_queue_with_503(make_app, private_redis):
    app = make_app(TASK_WRITE_STRATEGY="write-behind", REDIS_URL=private_redis.url)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "kept"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    private_redis.kill()
    response = client.patch(path, json={"title": "lost?"}, headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == 503
    assert client.delete(path, headers=headers).status_code == 503
    assert client.get(path, headers=headers).get_json()["title"] == "kept"


def test_write_behind_apply_never_replaces_a_newer_version_with_an_older_one(make_app):
    """At-least-once delivery replays changes; the apply is idempotent by version."""
    from taskapp.tasks.service import apply_pending

    app = make_app(TASK_WRITE_STRATEGY="write-behind")
    client = app.test_client()
    user_id, headers = account(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    state = {**task, "owner": user_id}
    with app.app_context():
        apply_pending(task["id"], {**state, "title": "newer", "version": 5})
        apply_pending(task["id"], {**state, "title": "older", "version": 3})  # a late replay
        apply_pending(task["id"], {**state, "title": "newer again", "version": 5})  # a duplicate
        stored = Task.objects(id=ObjectId(task["id"])).first()
    assert (stored.title, stored.version) == ("newer", 5)
