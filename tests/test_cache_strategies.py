"""Read-through, refresh-ahead and write-through in the cache extension, with their race checks."""

from __future__ import annotations

import threading
import time

import pytest

from taskapp.cache import NO_VALUE
from tests.cache_helpers import bare_app, running, wait_until


@pytest.fixture
def app_cache(backend, redis_url, key_prefix):
    url = redis_url if backend == "real" else "memory://"
    app, ext = bare_app(url, key_prefix, CACHE_STALE_TTL=5)
    with running(app, ext):
        yield app, ext


@pytest.fixture
def cache(app_cache):
    return app_cache[1]


def test_read_through_calls_the_registered_loader_once(cache):
    calls = []
    cache.register_loader("square", lambda n: calls.append(n) or n * n)
    assert cache.load("square", "sq:3", 3, ttl=10) == 9
    assert cache.load("square", "sq:3", 3, ttl=10) == 9
    assert calls == [3]


def test_read_through_without_a_loader_names_the_family(cache):
    with pytest.raises(LookupError, match="nothing"):
        cache.load("nothing", "k")


def test_read_through_loads_are_refused_after_a_racing_invalidation(app_cache):
    app, cache = app_cache
    started, invalidated = threading.Event(), threading.Event()

    def slow(n):
        started.set()
        invalidated.wait(5)  # read before the invalidation, stored after it
        return n

    cache.register_loader("slow", slow)

    def reader():
        with app.app_context():
            cache.load("slow", "k", 1, ttl=10, tags=["t"])

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(2)
    cache.invalidate_tags("t")
    invalidated.set()
    thread.join()
    assert cache.get("k") is NO_VALUE


def test_refresh_ahead_refreshes_a_hot_key_before_it_expires(cache):
    version = [0]

    def fetch():
        version[0] += 1
        time.sleep(0.5)  # twice the slowest read seen on a busy 2-core machine (0.17 s)
        return version[0]

    assert cache.get_or_set("hot", fetch, ttl=1.0, refresh_ahead=True) == 1
    slowest = 0.0
    seen = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        seen.add(cache.get_or_set("hot", fetch, ttl=1.0, refresh_ahead=True))
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.005)
    assert len(seen) >= 3  # refreshed in the background more than once
    assert slowest < 0.25  # and no reader ever waited for the 500 ms fetch


def test_refresh_ahead_serves_an_expired_entry_while_refreshing(cache):
    cache.get_or_set("k", lambda: "old", ttl=0.2, refresh_ahead=True)
    time.sleep(0.3)
    started = time.perf_counter()
    assert (
        cache.get_or_set("k", lambda: time.sleep(0.2) or "new", ttl=10, refresh_ahead=True) == "old"
    )
    assert time.perf_counter() - started < 0.1
    wait_until(lambda: cache.get("k") == "new")


def test_write_through_stores_the_new_value_and_invalidates_the_rest(cache):
    cache.set("item", {"v": 1}, ttl=10, tags=["item"])
    cache.set("list", [1], ttl=10, tags=["all"])
    lease = cache.write_lease("item")  # before the write to the source
    assert cache.write_through(
        "item", {"v": 2}, lease, ttl=10, tags=["item"], invalidate=["item", "all"]
    )
    assert cache.get("item") == {"v": 2}
    assert cache.get("list") is NO_VALUE


def test_overlapping_write_throughs_never_leave_an_older_value(cache):
    """Two writers lease, write the source and reach Redis in either order: the one that comes
    second cannot tell whose write the source applied last, so it drops the entry."""
    first, second = cache.write_lease("item"), cache.write_lease("item")
    assert cache.write_through("item", "written second", second, ttl=10)
    assert not cache.write_through("item", "written first", first, ttl=10)
    assert cache.get("item") is NO_VALUE  # the next reader fills it from the source


def test_a_write_through_lease_read_before_redis_lost_its_state_stores_nothing(cache):
    lease = cache.write_lease("item")
    for key in cache.client.scan_iter(match=cache.keys.prefix + "*"):
        cache.client.delete(key)  # a flush (only this test's keys)
    assert not cache.write_through("item", "written", lease, ttl=10)
    assert cache.get("item") is NO_VALUE


def test_write_through_refuses_a_fill_that_read_before_the_write(app_cache):
    app, cache = app_cache
    started, written = threading.Event(), threading.Event()

    def slow_fetch():
        started.set()
        written.wait(5)  # read before the write, stored after it
        return "before the write"

    def reader():
        with app.app_context():
            cache.get_or_set("item", slow_fetch, ttl=10, tags=["item"])

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(2)
    lease = cache.write_lease("item")
    cache.write_through("item", "written", lease, ttl=10, tags=["item"], invalidate=["item"])
    written.set()
    thread.join()
    assert cache.get("item") == "written"
