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
