"""Each TASK_READ_STRATEGY and TASK_WRITE_STRATEGY end to end over HTTP, with its race protection."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
import redis
from bson import ObjectId

from taskapp import keys
from taskapp.cache import Unavailable, writebehind
from taskapp.extensions import cache
from taskapp.models import Task
from taskapp.tasks import queries, service, write_behind
from tests.api import PausedRead, account, db_reads
from tests.cache_helpers import wait_until

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
    service.start_flushers(app)  # as gunicorn's post_worker_init does
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
    service.start_flushers(app)
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
    fetch_page, apply, settle = queries.FETCHERS["task_list"], write_behind.apply_pending, None

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

    settle = writebehind.WriteBehindQueue._settle_object
    monkeypatch.setitem(queries.FETCHERS, "task_list", slow_page)
    monkeypatch.setattr(write_behind, "apply_pending", late_apply)
    monkeypatch.setattr(writebehind.WriteBehindQueue, "_settle_object", settle_and_tell)
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=20)
    service.start_flushers(app)  # with the apply patched above
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


def test_a_flush_whose_invalidation_is_held_back_keeps_the_change_pending(make_app):
    """A flusher applies a change while its process cannot reach Redis with the cache's
    invalidation (its breaker open, Redis not answering it) though the flusher's own connection
    can: the change must stay pending until the invalidation is sent, or another process,
    finding no pending state, serves the task as the cache kept it before the change."""
    settings = {
        "TASK_WRITE_STRATEGY": "write-behind",
        "WRITE_BEHIND_FLUSH_MS": 60_000,  # no flusher of its own: flushed below, by hand
        "WRITE_BEHIND_CLAIM_IDLE_MS": 100,
    }
    flushing, reading = make_app(**settings), make_app(**settings)  # two processes of one app
    client = reading.test_client()
    user_id, headers = account(client)
    task = client.post(TASKS, json={"title": "old"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    client.get(path, headers={**headers, **NO_HTTP_CACHE})  # the task cached as "old"
    hit = client.get(path, headers={**headers, **NO_HTTP_CACHE})
    assert (hit.headers["X-Cache"], hit.get_json()["title"]) == ("HIT", "old")
    assert client.patch(path, json={"title": "new"}, headers=headers).status_code == 200

    def unreachable():
        raise redis.exceptions.ConnectionError("partitioned")

    with flushing.app_context():
        store = cache._state().store
        for _ in range(store.breaker.threshold):
            store.breaker._failed(ConnectionError("partitioned"))
        store.held_back._ping = unreachable
        cache.write_behind().ensure_group()
        try:
            cache.write_behind().flush_once(service.apply_pending, "flusher")
            settled_now = True
        except Unavailable:
            settled_now = False
        assert mongo_title(task["id"]) == "new"

    for _ in range(2):  # the invalidation still held back by the flushing process
        shown = client.get(path, headers=headers)
        assert shown.get_json()["title"] == "new", shown.headers["X-Cache"]
    assert not settled_now  # applied, and left to settle once the invalidation is sent

    with flushing.app_context():
        store.held_back._ping = store.client.ping
        store.held_back.replay()  # its probe, once the process reaches Redis again
        time.sleep(0.15)  # the unsettled change is claimed again after 100 ms idle
        assert cache.write_behind().flush_once(service.apply_pending, "flusher") == 1
        assert cache.write_behind().pending(keys.task(user_id, task["id"])) is None  # settled


def test_write_behind_keeps_concurrent_patches_of_one_task(make_app):
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=200)
    service.start_flushers(app)
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


def test_a_write_behind_patch_whose_stage_a_flush_outdated_reads_the_task_as_it_is_now(
    make_app, monkeypatch
):
    """A PATCH reads the task (this process's memory holds it); before it stages, another
    PATCH is staged and flushed, so its stage is refused (its view predates the flushed
    version). It must read the task again as it is now: this request learned, when it began,
    the versions that check memory, and memory still holds the task as it was then. Reading
    that again, every retry was refused and the PATCH answered 503 with nothing down."""
    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=60_000)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "t"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    for _ in range(2):  # cached, then held in this process's memory
        client.get(path, headers={**headers, **NO_HTTP_CACHE})
    stage = writebehind.WriteBehindQueue.stage
    raced = threading.Event()

    def another_change_flushed():
        assert (
            app.test_client().patch(path, json={"completed": True}, headers=headers).status_code
            == 200
        )
        with app.app_context():
            cache.write_behind().ensure_group()
            assert cache.write_behind().flush_once(service.apply_pending, "flusher", block_ms=10)

    def stage_after_another_change(self, *args, **kwargs):
        if not raced.is_set():
            raced.set()  # the other PATCH's stage comes through here too: straight on
            other = threading.Thread(target=another_change_flushed)
            other.start()
            other.join(10)
        return stage(self, *args, **kwargs)

    monkeypatch.setattr(writebehind.WriteBehindQueue, "stage", stage_after_another_change)
    response = client.patch(path, json={"title": "both"}, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["title"], response.get_json()["completed"]) == ("both", True)


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


def test_write_behind_refuses_changes_it_cannot_queue_with_503(make_app, durable_redis):
    app = make_app(TASK_WRITE_STRATEGY="write-behind", REDIS_URL=durable_redis.url)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "kept"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    durable_redis.kill()
    response = client.patch(path, json={"title": "lost?"}, headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["status"] == 503
    assert client.delete(path, headers=headers).status_code == 503
    # Reads too: without Redis nothing says whether MongoDB has every answered change.
    assert client.get(path, headers=headers).status_code == 503


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


def test_a_patch_racing_a_delete_is_refused_and_the_task_never_comes_back(make_app, monkeypatch):
    """The PATCH reads the task, the DELETE is answered, then the PATCH stages its change: the
    DELETE's tombstone refuses it (404). No flusher runs, as while MongoDB is failing: a state
    staged after the delete would be answered for as long as that lasts."""
    app = make_app(TASK_WRITE_STRATEGY="write-behind")
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "doomed"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    read, go = threading.Event(), threading.Event()
    stage = writebehind.WriteBehindQueue.stage

    def stage_after_the_delete(self, *args, **kwargs):
        if threading.current_thread().name == "patcher":
            read.set()  # the PATCH has read the task (it exists) and is about to stage
            assert go.wait(10)
        return stage(self, *args, **kwargs)

    monkeypatch.setattr(writebehind.WriteBehindQueue, "stage", stage_after_the_delete)
    statuses = []

    def patch():
        response = app.test_client().patch(path, json={"title": "back?"}, headers=headers)
        statuses.append(response.status_code)

    patcher = threading.Thread(target=patch, name="patcher")
    patcher.start()
    assert read.wait(10)
    assert client.delete(path, headers=headers).status_code == 204
    go.set()
    patcher.join(10)
    assert statuses == [404]
    assert client.get(path, headers=headers).status_code == 404
    assert client.get(path, headers={**headers, **NO_HTTP_CACHE}).status_code == 404
    assert client.get(TASKS, headers=NO_HTTP_CACHE | headers).get_json()["items"] == []
    feed = client.get("/api/v1/activity", headers=headers).get_json()["items"]
    assert [item["action"] for item in feed] == ["deleted", "created"]  # no refused change


@pytest.fixture
def private_mongodb():
    """A FerretDB of this test alone, to kill and start again (its files are kept)."""
    from tests.ferretdb import FerretDBServer

    server = FerretDBServer()
    yield server
    server.stop()


def wait_for_mongo(app, task_id: str, predicate, timeout: float = 20.0) -> Task:
    """The task as MongoDB has it, once ``predicate`` holds for it."""
    with app.app_context():
        deadline = time.monotonic() + timeout
        while True:
            stored = Task.objects(id=ObjectId(task_id)).first()
            if predicate(stored) or time.monotonic() > deadline:
                return stored
            time.sleep(0.05)


def test_a_write_behind_patch_refused_while_mongodb_is_down_never_reaches_it(
    make_app, private_mongodb
):
    from tests.conftest import database_uri

    app = make_app(
        TASK_WRITE_STRATEGY="write-behind",
        MONGODB_URI=database_uri(private_mongodb.url),
        WRITE_BEHIND_FLUSH_MS=50,
    )
    service.start_flushers(app)
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "kept"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    assert client.get(path, headers=headers).status_code == 200  # cached: a PATCH needs no read
    private_mongodb.kill()
    refused = client.patch(path, json={"title": "refused"}, headers=headers)
    assert refused.status_code == 503
    assert client.get(path, headers=headers).get_json()["title"] == "kept"
    private_mongodb.start()
    accepted = client.patch(path, json={"description": "later"}, headers=headers)
    assert accepted.status_code == 200
    assert accepted.get_json()["title"] == "kept"
    stored = wait_for_mongo(app, task["id"], lambda t: t.description == "later")
    assert (stored.title, stored.description) == ("kept", "later")


def test_a_delete_mongodb_refused_keeps_the_pending_changes_and_allows_new_ones(
    make_app, private_mongodb
):
    from tests.conftest import database_uri

    app = make_app(
        TASK_WRITE_STRATEGY="write-behind",
        MONGODB_URI=database_uri(private_mongodb.url),
        WRITE_BEHIND_FLUSH_MS=50,
    )
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    assert client.patch(path, json={"title": "pending"}, headers=headers).status_code == 200
    private_mongodb.kill()
    assert client.delete(path, headers=headers).status_code == 503
    assert client.get(path, headers=NO_HTTP_CACHE | headers).get_json()["title"] == "pending"
    private_mongodb.start()
    # Not deleted: the tombstone is lifted, so the task takes changes again.
    again = client.patch(path, json={"description": "again"}, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["title"] == "pending"
    service.start_flushers(app)  # the queued changes, including the one put back, flush now
    stored = wait_for_mongo(app, task["id"], lambda t: t.description == "again")
    assert (stored.title, stored.description) == ("pending", "again")
    with app.app_context():
        queue = cache.write_behind()
        wait_until(lambda: queue.client.xlen(queue.stream) == 0)  # every entry settled


def test_write_behind_asks_a_redis_that_was_down_at_start_and_refuses_a_volatile_one(
    make_app, private_redis
):
    private_redis.kill()
    app = make_app(TASK_WRITE_STRATEGY="write-behind", REDIS_URL=private_redis.url)  # not asked
    private_redis.start()  # back, with appendonly no
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "kept"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    response = client.patch(path, json={"title": "volatile"}, headers=headers)
    assert response.status_code == 503
    assert "appendonly no" in response.get_json()["detail"]
    assert client.get(path, headers=NO_HTTP_CACHE | headers).get_json()["title"] == "kept"
    with app.app_context():
        queue = cache.write_behind()
        assert queue.client.exists(queue.stream) == 0  # nothing was queued


def test_a_patch_answered_503_while_redis_hangs_is_not_queued_when_redis_resumes(
    make_app, durable_redis, monkeypatch
):
    """Redis is paused (SIGSTOP) just as the PATCH sends its stage: the request gives up and
    answers 503, while the script waits in the server's socket and runs when it resumes."""
    app = make_app(TASK_WRITE_STRATEGY="write-behind", REDIS_URL=durable_redis.url)
    client = app.test_client()
    user_id, headers = account(client)
    task = client.post(TASKS, json={"title": "first"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    # Redis knows the script (EVALSHA finds it), and the app knows Redis keeps an AOF.
    assert client.patch(path, json={"title": "kept"}, headers=headers).status_code == 200
    stage = writebehind.WriteBehindQueue.stage

    def stage_into_a_paused_redis(self, *args, **kwargs):
        durable_redis.pause()
        return stage(self, *args, **kwargs)

    monkeypatch.setattr(writebehind.WriteBehindQueue, "stage", stage_into_a_paused_redis)
    raw = redis.Redis.from_url(durable_redis.url)
    scripts_run = raw.info("commandstats")["cmdstat_fcall"]["calls"]
    try:
        response = client.patch(path, json={"title": "answered 503"}, headers=headers)
    finally:
        durable_redis.resume()
    assert response.status_code == 503
    deadline = time.monotonic() + 5
    while raw.info("commandstats")["cmdstat_fcall"]["calls"] == scripts_run:
        assert time.monotonic() < deadline  # the stage reached Redis after all, and ran
        time.sleep(0.01)
    with app.app_context():
        pending = cache.write_behind().pending(keys.task(user_id, task["id"]))
    raw.close()
    assert pending is None or pending["title"] == "kept"  # nothing of the refused change
    assert client.get(path, headers=NO_HTTP_CACHE | headers).get_json()["title"] == "kept"


@pytest.mark.parametrize("path_kind", ["task", "list"])
def test_a_write_behind_read_while_redis_is_down_is_503_not_the_older_mongodb_state(
    make_app, durable_redis, path_kind
):
    """An answered PATCH not yet in MongoDB lives only in Redis: while Redis cannot be asked, a
    read from MongoDB would answer the older title, so it is refused (503, Retry-After)."""
    app = make_app(
        TASK_WRITE_STRATEGY="write-behind",
        REDIS_URL=durable_redis.url,
        WRITE_BEHIND_FLUSH_MS=60_000,  # no flusher runs here: the change stays queued
    )
    client = app.test_client()
    headers = login(client)
    task = client.post(TASKS, json={"title": "old"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    assert client.patch(path, json={"title": "new"}, headers=headers).status_code == 200
    with app.app_context():
        assert Task.objects(id=ObjectId(task["id"])).first().title == "old"  # still queued
    durable_redis.kill()
    read = client.get(path if path_kind == "task" else TASKS, headers=headers)
    assert read.status_code == 503, read.get_json()
    assert read.headers["Retry-After"] == "1"
