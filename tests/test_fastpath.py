"""The response cache's WSGI fast path: the same answers as Flask's, each request counted once."""

from __future__ import annotations

import json

import pytest
import redis
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder, run_wsgi_app

from taskapp.cache.extension import state_of
from taskapp.cache.scope_state import Window
from taskapp.extensions import cache
from taskapp.fastpath import FastPath
from tests.api import account, problem_of, rate_limits

TASKS = "/api/v1/tasks"
ORIGIN = "https://app.example.test"


def fast_path_of(app) -> FastPath | None:
    """The fast path among the app's WSGI layers (behind the request id's), if installed."""
    layer = app.wsgi_app
    while layer is not None and not isinstance(layer, FastPath):
        layer = getattr(layer, "app", None)
    return layer


class Spy:
    """Counts the requests that reach Flask behind the fast path."""

    def __init__(self, app) -> None:
        fast = fast_path_of(app)
        assert fast is not None, "the fast path is installed by default"
        self.fast = fast
        self.flask = fast.next
        self.calls = 0
        fast.next = self

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.flask(environ, start_response)


def wsgi(app_callable, path: str, method: str = "GET", **headers: str):
    """(status, headers, body) exactly as a WSGI server receives them."""
    environ = EnvironBuilder(path=path, method=method, headers=headers).get_environ()
    body, status, sent = run_wsgi_app(app_callable, environ)
    try:
        return status, list(sent.to_wsgi_list()), b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()


def without_remaining(answer):
    status, headers, body = answer
    return status, [(n, v) for n, v in headers if n != "RateLimit"], body


def remaining(answer) -> int:
    return rate_limits(dict(answer[1]))["user"]["r"]


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def user_with_task(app):
    """A new user with one task: (the app's test client, the user's auth headers, its path)."""
    client = app.test_client()
    _, auth = account(client)
    task = client.post(TASKS, json={"title": "fast"}, headers=auth).get_json()
    return client, auth, f"{TASKS}/{task['id']}"


@pytest.fixture
def user(app):
    _, auth, path = user_with_task(app)
    return auth, path


@pytest.mark.parametrize("limit", [0, 1000], ids=["no-rate-limit", "rate-limit"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("conditional", ["none", "current", "weak", "star", "old"])
@pytest.mark.parametrize("cors", [False, True], ids=["no-cors", "cors-no-origin"])
def test_a_hit_before_flask_is_byte_for_byte_flasks_answer(
    make_app, limit, method, conditional, cors
):
    app = make_app(RATE_LIMIT_PER_MINUTE=limit, CORS_ORIGINS=ORIGIN if cors else "")
    client, auth, path = user_with_task(app)
    etag = client.get(path, headers=auth).headers["ETag"]
    headers = dict(auth)
    if conditional != "none":
        headers["If-None-Match"] = {
            "current": etag,
            "weak": f"W/{etag}",
            "star": "*",
            "old": '"0123456789abcdef"',
        }[conditional]
    spy = Spy(app)

    flask_answer = wsgi(spy.flask, path, method, **headers)
    fast_answer = wsgi(spy.fast, path, method, **headers)

    assert spy.calls == 0, "the hit was answered before Flask"
    assert fast_answer[0] == ("200 OK" if conditional in ("none", "old") else "304 NOT MODIFIED")
    assert dict(fast_answer[1])["X-Cache"] == "HIT"
    if limit:  # one more request in the window: one fewer remaining, every other byte equal
        assert remaining(fast_answer) == remaining(flask_answer) - 1
        assert without_remaining(fast_answer) == without_remaining(flask_answer)
    else:
        assert fast_answer == flask_answer


def test_with_cors_a_request_with_an_origin_is_answered_by_flask_with_cors_headers(make_app):
    app = make_app(CORS_ORIGINS=ORIGIN)
    client = app.test_client()
    _, auth = account(client)
    client.get(TASKS, headers=auth)
    spy = Spy(app)
    status, headers, _ = wsgi(app.wsgi_app, TASKS, Origin=ORIGIN, **auth)
    assert spy.calls == 1
    assert status == "200 OK"
    assert dict(headers)["Access-Control-Allow-Origin"] == ORIGIN
    assert dict(headers)["X-Cache"] == "HIT"


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "flask-path"])
def test_a_miss_a_hit_and_a_no_cache_request_each_count_once_in_the_rate_limit(make_app, fast):
    app = make_app(RATE_LIMIT_PER_MINUTE=6, HTTP_FAST_PATH=fast)
    client = app.test_client()
    _, auth = account(client)
    task = client.post(TASKS, json={"title": "counted"}, headers=auth).get_json()  # 1st
    path = f"{TASKS}/{task['id']}"
    seen = []
    for headers in (auth, auth, {**auth, "Cache-Control": "no-cache"}, auth, auth):
        answer = wsgi(app.wsgi_app, path, **headers)
        assert answer[0] == "200 OK"
        seen.append((dict(answer[1])["X-Cache"], remaining(answer)))
    assert seen == [("MISS", 4), ("HIT", 3), ("HIT", 2), ("HIT", 1), ("HIT", 0)]
    status, headers, body = wsgi(app.wsgi_app, path, **auth)
    assert status == "429 TOO MANY REQUESTS"
    assert remaining((status, headers, body)) == 0
    assert int(dict(headers)["Retry-After"]) >= 1
    assert problem_of(json.loads(body), 429)


def test_a_request_over_the_limit_is_flasks_429_counted_once(make_app, redis_client, key_prefix):
    app = make_app(RATE_LIMIT_PER_MINUTE=2)
    client = app.test_client()
    user_id, auth = account(client)
    client.get(TASKS, headers=auth)
    client.get(TASKS, headers=auth)
    window = f"{key_prefix}sv:{{u:{user_id}}}"  # the user's scope state holds the window

    def total() -> int:
        return Window.decode(redis_client.get(window)).total

    assert total() == 2
    spy = Spy(app)
    status, _, body = wsgi(app.wsgi_app, TASKS, **auth)
    assert (status, spy.calls) == ("429 TOO MANY REQUESTS", 1)
    assert problem_of(json.loads(body), 429)
    # a refused request is not added, nor counted twice
    assert total() == 2


@pytest.mark.parametrize("limit", [0, 1000], ids=["no-rate-limit", "rate-limit"])
def test_a_miss_looks_up_and_takes_the_fill_lock_once(make_app, limit, monkeypatch):
    app = make_app(RATE_LIMIT_PER_MINUTE=limit)
    client, auth, path = user_with_task(app)
    calls = []
    lookup, lookup_after = cache.lookup, cache.lookup_after

    def counting(key, tags=(), **options):
        calls.append(key)
        return lookup(key, tags, **options)

    def counting_after(before, key, tags=(), **options):
        calls.append(key)
        return lookup_after(before, key, tags, **options)

    monkeypatch.setattr(cache, "lookup", counting)
    monkeypatch.setattr(cache, "lookup_after", counting_after)
    spy = Spy(app)
    status, headers, _ = wsgi(app.wsgi_app, path, **auth)
    assert (status, dict(headers)["X-Cache"], spy.calls) == ("200 OK", "MISS", 1)
    assert len(calls) == 1, "Flask used the fast path's lookup and lease"
    status, headers, _ = wsgi(app.wsgi_app, path, **auth)
    assert (status, dict(headers)["X-Cache"], spy.calls) == ("200 OK", "HIT", 1)
    with app.app_context():
        assert not list(cache.client.scan_iter(match=cache.keys.prefix + "*lock*"))


@pytest.mark.parametrize("limit", [0, 1000], ids=["no-rate-limit", "rate-limit"])
def test_a_miss_handed_to_flask_is_checked_and_counted_once(make_app, limit, monkeypatch):
    """The fast path's call (the token's revocation check, the rate limit and the lookup) goes
    with the request to Flask in its state: Flask asks Redis neither again."""
    app = make_app(RATE_LIMIT_PER_MINUTE=limit)
    client, auth, path = user_with_task(app)
    calls = []
    admit = cache.admit

    def counting(admission, *args, **options):
        calls.append(admission)
        return admit(admission, *args, **options)

    monkeypatch.setattr(cache, "admit", counting)
    spy = Spy(app)
    status, headers, _ = wsgi(app.wsgi_app, path, **auth)
    assert (status, dict(headers)["X-Cache"], spy.calls) == ("200 OK", "MISS", 1)
    assert calls == [], "Flask made the request's admission call again"
    if limit:
        assert remaining((status, headers, b"")) == limit - 2  # the POST, then this GET


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YTpi"}],
    ids=["no-token", "bad-token", "not-bearer"],
)
def test_requests_without_a_valid_token_go_to_flask_and_are_401(app, user, headers):
    auth, path = user
    wsgi(app.wsgi_app, path, **auth)  # cached for its user
    spy = Spy(app)
    status, _, body = wsgi(app.wsgi_app, path, **headers)
    assert (status, spy.calls) == ("401 UNAUTHORIZED", 1)
    assert problem_of(json.loads(body), 401)


def test_a_bad_query_string_goes_to_flask_and_is_422(app, user):
    auth, _ = user
    wsgi(app.wsgi_app, TASKS, **auth)
    spy = Spy(app)
    status, _, body = wsgi(app.wsgi_app, f"{TASKS}?page=1&page=2", **auth)
    assert (status, spy.calls) == ("422 UNPROCESSABLE ENTITY", 1)
    assert b"repeated" in body


def test_hits_are_timed_by_route_in_the_request_histogram(app, user):
    auth, path = user
    wsgi(app.wsgi_app, path, **auth)
    name = "taskapp_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/api/v1/tasks/<objectid:task_id>", "status": "200"}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    spy = Spy(app)
    wsgi(app.wsgi_app, path, **auth)
    assert spy.calls == 0
    assert (REGISTRY.get_sample_value(name, labels) or 0.0) == before + 1


def test_the_setting_turns_the_fast_path_off(make_app):
    assert fast_path_of(make_app(HTTP_FAST_PATH="0")) is None
    assert fast_path_of(make_app()) is not None


@pytest.mark.parametrize(
    ("limit", "l1"),
    [(0, 10000), (1000, 10000), (0, 0), (1000, 0)],
    ids=[
        "in-process-no-rate-limit",  # memory, checked against the scope version in Redis
        "in-process-rate-limit",  # the rate limit and that version in one round trip
        "redis-only-no-rate-limit",
        "redis-only-rate-limit",  # the rate limit and the lookup in one round trip
    ],
)
def test_a_hit_makes_one_round_trip(make_app, limit, l1, monkeypatch):
    app = make_app(RATE_LIMIT_PER_MINUTE=limit, L1_CACHE_MAX_ITEMS=l1)
    client, auth, path = user_with_task(app)
    for _ in range(2):  # filled; the connection learned the server run's mark (once)
        wsgi(app.wsgi_app, path, **auth)
    with app.app_context():
        redis_client = cache.client
    direct = state_of(app).store.direct  # the request path's own connections
    assert direct is not None
    commands = []
    client_execute, direct_send = redis_client.execute_command, direct._send
    counted = ("FCALL", "GET", "MGET", "BITFIELD", "BITFIELD_RO")  # not the stats' pipeline

    def counting(*args, **options):
        if args[0] in counted:
            commands.append(args[0])
        return client_execute(*args, **options)

    def sending(connection, args):
        if args[0] in counted:
            commands.append(args[0])
        return direct_send(connection, args)

    monkeypatch.setattr(redis_client, "execute_command", counting)
    monkeypatch.setattr(direct, "_send", sending)
    status, headers, _ = wsgi(app.wsgi_app, path, **auth)
    assert (status, dict(headers)["X-Cache"]) == ("200 OK", "HIT")
    assert len(commands) == 1, commands


def http_lookups() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "taskapp_cache_requests_total", {"layer": "http", "result": result}
        )
        or 0.0
        for result in ("hit", "miss")
    )


@pytest.mark.parametrize("l1", [10000, 0], ids=["in-process", "redis-only"])
def test_a_request_over_the_limit_is_not_counted_as_a_lookup_and_keeps_no_lock(make_app, l1):
    app = make_app(RATE_LIMIT_PER_MINUTE=2, L1_CACHE_MAX_ITEMS=l1)
    client = app.test_client()
    _, auth = account(client)
    wsgi(app.wsgi_app, TASKS, **auth)
    wsgi(app.wsgi_app, TASKS, **auth)
    before = http_lookups()
    for path in (TASKS, f"{TASKS}?page=2"):  # a cached answer, and one never looked up
        status, _, _ = wsgi(app.wsgi_app, path, **auth)
        assert status == "429 TOO MANY REQUESTS"
    assert http_lookups() == before
    with app.app_context():
        assert not list(cache.client.scan_iter(match=cache.keys.prefix + "*lock*"))
