"""Flask-Caching's decorators on the extension: same Redis, JSON instead of pickle, behind the breaker."""

from __future__ import annotations

import time

import pytest

from tests.cache_helpers import bare_app, running


@pytest.fixture
def decorated(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix, CACHE_DEFAULT_TIMEOUT=30)
    calls = []

    @app.get("/report")
    @ext.cached(timeout=30)
    def report():
        calls.append("view")
        return {"n": len(calls)}

    @ext.memoize(timeout=30)
    def square(n):
        calls.append(n)
        return {"square": n * n}

    with running(app, ext):
        yield app, ext, calls, square


def test_cached_views_are_answered_from_redis(decorated):
    app, _, calls, _ = decorated
    client = app.test_client()
    assert client.get("/report").get_json() == {"n": 1}
    assert client.get("/report").get_json() == {"n": 1}
    assert calls == ["view"]


def test_memoized_functions_are_stored_as_json_under_the_prefix(decorated, key_prefix):
    _, ext, calls, square = decorated
    assert square(4) == {"square": 16}
    assert square(4) == {"square": 16}
    assert calls == [4]
    stored = [ext.client.get(k) for k in ext.client.scan_iter(match=key_prefix + "fc:*")]
    values = [v for v in stored if v and v.startswith(b"{")]
    assert b'{"square":16}' in values
    assert not any(v.startswith(b"!") for v in stored if v)  # cachelib's pickle marker


def test_a_pickled_entry_is_a_miss_never_unpickled(decorated, key_prefix):
    import pickle

    app, ext, calls, _ = decorated
    client = app.test_client()
    client.get("/report")
    (key,) = [k for k in ext.client.scan_iter(match=key_prefix + "fc:*view*")]
    ext.client.set(key, b"!" + pickle.dumps({"n": "from a pickle"}))
    assert client.get("/report").get_json() == {"n": 2}  # recomputed, not unpickled


def test_decorated_views_keep_answering_quickly_when_redis_is_dead(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix)

    @app.get("/report")
    @ext.cached(timeout=30)
    def report():
        return {"ok": True}

    with running(app, ext):
        client = app.test_client()
        private_redis.kill()
        durations = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/report").get_json() == {"ok": True}
            durations.append(time.perf_counter() - started)
    assert sorted(durations)[10] < 0.01


def test_memoize_caches_outside_an_app_context(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix)
    calls = []

    @ext.memoize(timeout=30)
    def double(n):
        calls.append(n)
        return n * 2

    try:
        assert double(21) == 42
        assert double(21) == 42
        assert calls == [21]
    finally:
        with app.app_context():
            ext.close()


def test_a_refused_command_is_no_outage_and_never_opens_the_breaker(decorated, caplog):
    _, ext, _, _ = decorated
    flask_cache = ext._flask_cache
    flask_cache.set("word", "text")
    for _ in range(5):  # more than CACHE_BREAKER_THRESHOLD
        assert flask_cache.cache.inc("word") is None  # INCR on a string: an error reply, a miss
    assert not ext.degraded
    assert flask_cache.get("word") == "text"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "refused" in r.message]
    assert len(warnings) == 1  # logged once while the same refusal repeats


def test_set_many_goes_through_the_breaker_when_redis_hangs(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix)
    with running(app, ext):
        flask_cache = ext._flask_cache
        assert flask_cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        private_redis.pause()
        try:
            durations = []
            for _ in range(8):
                started = time.perf_counter()
                assert flask_cache.set_many({"a": 3, "b": 4}) == []
                durations.append(time.perf_counter() - started)
        finally:
            private_redis.resume()
    assert max(durations) < 1
    assert max(durations[4:]) < 0.05, durations  # the breaker is open: no Redis wait at all


def test_get_many_and_memoize_answer_misses_quietly_when_redis_is_dead(
    private_redis, key_prefix, caplog
):
    app, ext = bare_app(private_redis.url, key_prefix)
    calls = []

    @ext.memoize(timeout=30)
    def square(n):
        calls.append(n)
        return n * n

    with running(app, ext):
        private_redis.kill()
        assert ext._flask_cache.get_many("a", "b") == [None, None]
        for _ in range(5):
            assert square(3) == 9
    assert calls == [3] * 5
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (lambda: ("created", 201), 201, b"created"),
        (lambda: (b"raw", 202), 202, b"raw"),
        (lambda: b"bytes", 200, b"bytes"),
    ],
)
def test_a_view_answer_json_cannot_give_back_exactly_is_not_cached(
    redis_url, key_prefix, answer, status, body
):
    from flask import Response

    app, ext = bare_app(redis_url, key_prefix)
    calls = []

    @app.get("/answer")
    @ext.cached(timeout=30)
    def view():
        calls.append(1)
        return answer()

    @app.get("/response")
    @ext.cached(timeout=30)
    def response_view():
        calls.append(2)
        return Response("made", status=203)

    with running(app, ext):
        client = app.test_client()
        for _ in range(2):
            response = client.get("/answer")
            assert (response.status_code, response.data) == (status, body)
            response = client.get("/response")
            assert (response.status_code, response.data) == (203, b"made")
    assert calls == [1, 2, 1, 2]  # run every time, never replayed altered


def test_a_memoized_tuple_is_returned_as_a_tuple(decorated):
    _, ext, _, _ = decorated

    @ext.memoize(timeout=30)
    def pair(n):
        return (n, n)

    assert pair(1) == (1, 1)
    assert pair(1) == (1, 1)


@pytest.mark.parametrize(
    "setting",
    [
        {"CACHE_REDIS_URL": "redis://elsewhere:6379/0"},
        {"CACHE_REDIS_HOST": "elsewhere"},
        {"CACHE_OPTIONS": {"socket_timeout": 5}},
    ],
)
def test_flask_caching_connection_settings_are_refused_not_ignored(redis_url, key_prefix, setting):
    with pytest.raises(RuntimeError, match=next(iter(setting))):
        bare_app(redis_url, key_prefix, **setting)


def test_a_serializer_other_than_json_is_refused_at_start_up(redis_url, key_prefix):
    from cachelib.serializers import RedisSerializer  # cachelib's default: pickle

    with pytest.raises(RuntimeError, match="CACHE_SERIALIZER"):
        bare_app(redis_url, key_prefix, CACHE_SERIALIZER=RedisSerializer)


@pytest.mark.parametrize(
    "setting",
    [
        {"CACHE_REDIS_URL": "redis://elsewhere:6379/0"},
        {"CACHE_REDIS_PASSWORD": "secret"},
        {"CACHE_OPTIONS": {"socket_timeout": 5}},
        {"CACHE_ARGS": ["elsewhere"]},
        {"CACHE_SERIALIZER": "cachelib.serializers.RedisSerializer"},
    ],
)
def test_settings_given_to_a_cache_object_are_refused_as_in_the_app_config(
    redis_url, key_prefix, setting
):
    from cachelib.serializers import RedisSerializer
    from flask_caching import Cache

    from taskapp.cache.flask_caching import BACKEND

    if "CACHE_SERIALIZER" in setting:
        setting = {"CACHE_SERIALIZER": RedisSerializer}
    app, ext = bare_app(redis_url, key_prefix)
    try:
        with pytest.raises(RuntimeError, match=next(iter(setting))):
            Cache(app, config={"CACHE_TYPE": BACKEND, **setting})
    finally:
        with app.app_context():
            ext.close()
