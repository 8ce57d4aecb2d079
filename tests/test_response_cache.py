"""The HTTP response cache: per-user JSON answers, ETags, request directives, and what is never stored."""

from __future__ import annotations

import threading
import time

import pytest

from taskapp.extensions import cache
from tests.api import PausedRead, account, db_reads, metric
from tests.cache_helpers import bare_app, running

TASKS = "/api/v1/tasks"


def http_keys(app) -> list[bytes]:
    """The cached responses (entries, not the versions and locks derived from their keys)."""
    with app.app_context():
        entries = cache.keys.prefix + "{u:*}:http:*"
        return [k for k in cache.client.scan_iter(match=entries)]


@pytest.fixture
def alice(register):
    return register("alice@example.com")


@pytest.fixture
def task(client, alice):
    return client.post(TASKS, json={"title": "cached"}, headers=alice).get_json()


def test_a_miss_then_a_hit_with_identical_bodies_and_headers(client, alice, task):
    first = client.get(f"{TASKS}/{task['id']}", headers=alice)
    second = client.get(f"{TASKS}/{task['id']}", headers=alice)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.data == second.data
    assert first.headers["ETag"] == second.headers["ETag"]
    for response in (first, second):
        assert response.headers["Cache-Control"] == "private, no-cache"
        assert "Authorization" in response.headers["Vary"]
        assert response.mimetype == "application/json"


def test_a_hit_reads_no_database(client, alice, task):
    client.get(TASKS, headers=alice)
    before = db_reads()
    assert client.get(TASKS, headers=alice).headers["X-Cache"] == "HIT"
    assert db_reads() == before


def test_query_strings_in_any_order_share_one_entry(client, alice, task):
    client.get(f"{TASKS}?page=1&per_page=5", headers=alice)
    assert client.get(f"{TASKS}?per_page=5&page=1", headers=alice).headers["X-Cache"] == "HIT"


def test_if_none_match_with_the_current_etag_is_304_without_a_body(client, alice, task):
    etag = client.get(f"{TASKS}/{task['id']}", headers=alice).headers["ETag"]
    response = client.get(f"{TASKS}/{task['id']}", headers={**alice, "If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag


def test_if_none_match_with_an_old_etag_is_a_full_answer(client, alice, task):
    etag = client.get(f"{TASKS}/{task['id']}", headers=alice).headers["ETag"]
    client.patch(f"{TASKS}/{task['id']}", json={"title": "changed"}, headers=alice)
    response = client.get(f"{TASKS}/{task['id']}", headers={**alice, "If-None-Match": etag})
    assert response.status_code == 200
    assert response.get_json()["title"] == "changed"


def test_a_request_with_no_cache_skips_the_response_cache(client, alice, task):
    client.get(TASKS, headers=alice)
    stored = http_keys(client.application)
    response = client.get(TASKS, headers={**alice, "Cache-Control": "no-cache"})
    assert response.status_code == 200
    assert response.headers["X-Cache"] == "HIT"  # answered by the service cache below
    assert http_keys(client.application) == stored


def test_writes_drop_the_users_cached_responses(client, alice, task):
    client.get(TASKS, headers=alice)
    client.post(TASKS, json={"title": "second"}, headers=alice)
    response = client.get(TASKS, headers=alice)
    assert response.headers["X-Cache"] == "MISS"
    assert response.get_json()["total"] == 2


def test_errors_and_anonymous_requests_are_never_stored(client, alice):
    missing = f"{TASKS}/0123456789abcdef01234567"
    assert client.get(missing, headers=alice).status_code == 404
    assert client.get(TASKS).status_code == 401
    assert http_keys(client.application) == []


def test_a_view_answer_marked_no_store_is_never_stored(client, alice, task):
    client.get(TASKS, headers={**alice, "Cache-Control": "no-store"})
    assert http_keys(client.application) == []


def test_a_slow_response_that_raced_a_write_is_not_stored(make_app, monkeypatch):
    app = make_app(SIMULATED_DB_LATENCY_MS=1)
    client = app.test_client()
    headers = register_on(client)
    task = client.post(TASKS, json={"title": "old"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    paused = PausedRead(monkeypatch)
    slow = []

    def read():
        slow.append(app.test_client().get(path, headers=headers).get_json()["title"])

    reader = threading.Thread(target=read, name="reader")
    reader.start()
    assert paused.taken.wait(10)  # the view holds MongoDB's "old"; its response is not stored yet
    client.patch(path, json={"title": "new"}, headers=headers)
    paused.release.set()
    reader.join(10)
    assert slow == ["old"]  # it started before the write ...
    assert client.get(path, headers=headers).get_json()["title"] == "new"  # ... and is not kept


def register_on(client) -> dict[str, str]:
    return account(client)[1]


def test_a_cold_url_requested_by_many_clients_at_once_runs_its_view_once(make_app):
    app = make_app(SIMULATED_DB_LATENCY_MS=200)
    client = app.test_client()
    headers = register_on(client)
    task = client.post(TASKS, json={"title": "popular"}, headers=headers).get_json()
    path = f"{TASKS}/{task['id']}"
    barrier = threading.Barrier(20)
    answers = []

    def get():
        barrier.wait()
        response = app.test_client().get(path, headers=headers)
        answers.append((response.status_code, response.data, response.headers["X-Cache"]))

    before = db_reads()
    threads = [threading.Thread(target=get) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db_reads() - before == 1
    assert {(status, body) for status, body, _ in answers} == {(200, answers[0][1])}
    assert sorted(outcome for *_, outcome in answers) == ["HIT"] * 19 + ["MISS"]


def test_a_failed_answer_releases_the_fill_lock_for_the_next_caller(make_app):
    app = make_app(CACHE_LOCK_TTL=30)  # a lock left behind would stall the next caller 30 s
    client = app.test_client()
    headers = register_on(client)
    missing = f"{TASKS}/0123456789abcdef01234567"
    assert client.get(missing, headers=headers).status_code == 404
    started = time.monotonic()
    assert client.get(missing, headers=headers).status_code == 404
    assert time.monotonic() - started < 1


def response_cache_app(redis_url: str, key_prefix: str):
    """A bare app with the extension's ResponseCache for one user, "u1" (nothing of taskapp)."""
    from taskapp.cache.response_cache import ResponseCache

    app, ext = bare_app(redis_url, key_prefix)
    responses = ResponseCache(
        ext,
        identity=lambda: "u1",
        key=lambda user, method, path, query: f"{{u:{user}}}:http:{method}:{path}?{query}",
        tags=lambda user: [f"{{u:{user}}}:responses"],
        ignored_parameters=("_",),
    )
    responses.init_app(app)
    return app, ext, responses


@pytest.fixture
def echo_app(redis_url, key_prefix):
    """A bare app whose cached view answers the first value of each parameter, as views read."""
    from flask import request

    app, ext, responses = response_cache_app(redis_url, key_prefix)

    @app.get("/echo")
    @responses.mark(readers=lambda user: True)
    def echo():
        ext.mark_source_read()  # an answer made by the view is a MISS
        return {name: request.args.get(name) for name in sorted(request.args) if name != "_"}

    with running(app, ext):
        yield app.test_client()


def test_many_clients_missing_one_url_at_once_run_its_view_once(redis_url, key_prefix):
    """The response cache's own fill lock, counted in view calls (a database read count would
    also be kept at one by the service cache's lock below it)."""
    app, ext, responses = response_cache_app(redis_url, key_prefix)
    clients, calls = 20, []
    waits_before = metric("taskapp_cache_lock_waits_total")

    def others_wait() -> bool:
        return metric("taskapp_cache_lock_waits_total") - waits_before >= clients - 1

    @app.get("/cold")
    @responses.mark(readers=lambda user: True)
    def cold():
        calls.append(1)
        ext.mark_source_read()
        deadline = time.monotonic() + 3  # hold the fill until every other client waits for it
        while not others_wait() and time.monotonic() < deadline:
            time.sleep(0.001)
        return {"made": True}

    barrier = threading.Barrier(clients)
    answers = []

    def get():
        barrier.wait()
        response = app.test_client().get("/cold")
        answers.append((response.status_code, response.headers["X-Cache"]))

    with running(app, ext):
        threads = [threading.Thread(target=get) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert len(calls) == 1
    assert sorted(answers) == [(200, "HIT")] * (clients - 1) + [(200, "MISS")]


@pytest.mark.parametrize(
    ("stored", "asked", "answer"),
    [
        ("page=2&page=1", "page=1&page=2", {"page": "1"}),  # repeated: the view reads the first
        ("a=x%26b%3Dy", "a=x&b=y", {"a": "x", "b": "y"}),  # an escaped & and = in a value
        ("a=x&b=y", "a=x%26b%3Dy", {"a": "x&b=y"}),
        ("a=1%3D2", "a%3D1=2", {"a=1": "2"}),  # an = in a name
    ],
)
def test_a_cached_answer_equals_the_views_answer_to_the_same_request(
    echo_app, stored, asked, answer
):
    echo_app.get(f"/echo?{stored}")
    response = echo_app.get(f"/echo?{asked}")
    assert response.get_json() == answer
    assert response.headers["X-Cache"] == "MISS"


def test_the_cache_buster_parameter_shares_one_entry(echo_app):
    assert echo_app.get("/echo?a=1&_=111").headers["X-Cache"] == "MISS"
    hit = echo_app.get("/echo?_=222&a=1")
    assert (hit.headers["X-Cache"], hit.get_json()) == ("HIT", {"a": "1"})


def test_if_none_match_compares_weakly(client, alice, task):
    path = f"{TASKS}/{task['id']}"
    etag = client.get(path, headers=alice).headers["ETag"]
    for sent in (f"W/{etag}", f'"other", W/{etag}', "*"):
        response = client.get(path, headers={**alice, "If-None-Match": sent})
        assert response.status_code == 304, sent


def test_head_of_a_cached_get_carries_the_get_headers(client, alice, task):
    path = f"{TASKS}/{task['id']}"
    head = client.head(path, headers=alice)
    get = client.get(path, headers=alice)
    again = client.head(path, headers=alice)
    assert (head.status_code, head.data) == (200, b"")
    assert (head.headers["X-Cache"], get.headers["X-Cache"], again.headers["X-Cache"]) == (
        "MISS",
        "HIT",
        "HIT",
    )
    for response in (head, again):
        assert response.headers["ETag"] == get.headers["ETag"]
        assert "Authorization" in response.headers["Vary"]
        assert response.headers["Cache-Control"] == "private, no-cache"
        assert response.headers["Content-Length"] == str(len(get.data))


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast-path", "flask-path"])
def test_a_cached_answer_is_served_only_to_the_readers_its_route_declares(make_app, fast_path):
    """A permission revoked after an answer was cached holds from the next request: the route's
    ``readers`` are asked before any cached answer, on both paths (the view's own decorators do
    not run on a hit)."""
    from flask import jsonify
    from werkzeug.exceptions import Forbidden

    from taskapp.auth.identity import current_user_id, login_required
    from taskapp.responses import cached_response

    allowed: set[str] = set()
    calls = []
    app = make_app(HTTP_FAST_PATH=fast_path)

    @cached_response(readers=lambda user: user in allowed)
    @login_required
    def report():
        if current_user_id() not in allowed:  # the view's own check, as an admin route's
            raise Forbidden("not allowed")
        calls.append(1)
        return jsonify({"secret": "report"})

    app.add_url_rule("/api/v1/report", "report", report)
    client = app.test_client()
    user, auth = account(client)
    allowed.add(user)
    assert client.get("/api/v1/report", headers=auth).status_code == 200
    assert client.get("/api/v1/report", headers=auth).status_code == 200
    assert len(calls) == 1  # the second answer was the cached one
    allowed.clear()  # revoked
    assert client.get("/api/v1/report", headers=auth).status_code == 403
