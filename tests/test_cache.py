"""The cache extension on a bare Flask app: real Redis, and the embedded memory:// backend."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from taskapp.cache import NO_VALUE
from taskapp.cache.entry import stored_payload
from tests.cache_helpers import bare_app, running


@pytest.fixture
def cache(backend, redis_url, key_prefix):
    url = redis_url if backend == "real" else "memory://"
    app, ext = bare_app(url, key_prefix)
    with running(app, ext):
        yield ext


@pytest.fixture
def in_thread(cache):
    """Run a function in a new thread with its own context of the test's app."""
    from flask import current_app

    app = current_app._get_current_object()

    def start(fn, *args):
        def target():
            with app.app_context():
                fn(*args)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    return start


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_get_of_a_missing_key_is_no_value(cache):
    assert cache.get("nothing") is NO_VALUE


def test_set_then_get_returns_an_equal_value(cache):
    value = {"a": [1, 2, {"b": "é"}], "n": None}
    assert cache.set("k", value, ttl=10)
    assert cache.get("k") == value


def test_a_cached_none_is_a_hit(cache):
    calls = []
    cache.set("none", None, ttl=10)
    assert cache.get("none") is None
    assert cache.get_or_set("none", lambda: calls.append(1), ttl=10) is None
    assert calls == []


def test_delete_removes_the_entry(cache):
    cache.set("k", 1, ttl=10)
    assert cache.delete("k") == 1
    assert cache.get("k") is NO_VALUE


def test_values_expire_after_their_ttl(cache):
    cache.set("short", "v", ttl=0.3)
    assert cache.get("short") == "v"
    time.sleep(0.45)
    assert cache.get("short") is NO_VALUE


def test_get_or_set_fetches_once_then_hits(cache):
    calls = []

    def fetch():
        calls.append(1)
        return {"n": len(calls)}

    assert cache.get_or_set("g", fetch, ttl=10) == {"n": 1}
    assert cache.get_or_set("g", fetch, ttl=10) == {"n": 1}
    assert calls == [1]


def test_ttl_may_depend_on_the_value(cache):
    cache.get_or_set("missing", lambda: None, ttl=lambda v: 0.2 if v is None else 60)
    assert cache.get("missing") is None
    time.sleep(0.35)
    assert cache.get("missing") is NO_VALUE


def test_invalidate_tags_removes_every_tagged_entry_and_only_those(cache):
    cache.set("a", 1, ttl=10, tags=["t1"])
    cache.set("b", 2, ttl=10, tags=["t1", "t2"])
    cache.set("c", 3, ttl=10, tags=["t2"])
    cache.set("d", 4, ttl=10)
    assert cache.invalidate_tags("t1") == 1
    assert [cache.get(k) for k in "abcd"] == [NO_VALUE, NO_VALUE, 3, 4]


def test_an_invalidation_during_a_fill_keeps_the_fill_out_of_the_cache(cache, in_thread):
    started, invalidated = threading.Event(), threading.Event()
    results = []

    def slow_fetch():
        started.set()
        invalidated.wait(5)  # the source was read before the write; the fill lands after it
        return "old"

    filler = in_thread(lambda: results.append(cache.get_or_set("k", slow_fetch, 10, ["t"])))
    assert started.wait(2)
    cache.invalidate_tags("t")
    invalidated.set()
    filler.join()
    assert results == ["old"]  # the caller that raced the write still gets an answer
    assert cache.get("k") is NO_VALUE  # but nobody after the invalidation reads it


def test_a_delete_during_a_fill_keeps_the_fill_out_of_the_cache(cache, in_thread):
    started, deleted = threading.Event(), threading.Event()

    def slow_fetch():
        started.set()
        deleted.wait(5)  # the source was read before the delete; the fill lands after it
        return "old"

    filler = in_thread(cache.get_or_set, "k", slow_fetch, 10)
    assert started.wait(2)
    cache.delete("k")
    deleted.set()
    filler.join()
    assert cache.get("k") is NO_VALUE


def test_many_threads_missing_one_key_run_one_fetch(cache, in_thread):
    calls = []
    filled_at = []
    returned_at = []
    barrier = threading.Barrier(16)

    def fetch():
        calls.append(1)
        time.sleep(0.2)
        filled_at.append(time.monotonic())
        return "value"

    def worker():
        barrier.wait()
        if cache.get_or_set("hot", fetch, 10) == "value":
            returned_at.append(time.monotonic())

    threads = [in_thread(worker) for _ in range(16)]
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(returned_at) == 16
    # Waiters are woken by the fill, not by a fixed poll: all are back well within 50 ms of it.
    assert max(returned_at) - filled_at[0] < 0.05


def test_an_entry_records_the_versions_of_its_tags(cache):
    cache.set("k", "v", ttl=10, tags=["t"])
    version = cache.client.get(cache.keys.tag_version("t"))
    stored = cache.client.get(cache.keys.entry("k"))
    # The stamp (the scope version: this tag is not in the key's scope, so none), the own
    # version, then one line per tag.
    stamp, _, tag_line = stored.split(b"\n")[:3]
    assert stamp == b"" and version and tag_line == version + b" t"
    assert 9000 < cache.client.pttl(cache.keys.tag_version("t"))  # outlives the entry


def test_an_invalidation_costs_the_same_however_many_entries_a_tag_holds(private_redis):
    """A tag's invalidation is a version bump: with 5,000 entries under a tag, Redis spends
    about as long on it as with one (deleting each entry held Redis in proportion)."""
    app, ext = bare_app(private_redis.url, "p:")
    with running(app, ext):
        ext.set("one", 1, ttl=30, tags=["small"])
        for i in range(5000):
            ext.set(f"many{i}", i, ttl=30, tags=["large"])
        small, large = _server_usec(ext, "small"), _server_usec(ext, "large")
        assert ext.get("one") is NO_VALUE and ext.get("many4999") is NO_VALUE
    assert large < 5 * small + 100, (small, large)


def _server_usec(ext, tag: str) -> int:
    """Microseconds Redis spent running scripts for one ``invalidate_tags(tag)``."""

    def usec() -> int:
        return ext.client.info("commandstats").get("cmdstat_fcall", {}).get("usec", 0)

    before = usec()
    ext.invalidate_tags(tag)
    return usec() - before


def test_capped_lists_are_rebuilt_from_the_source_and_pushed_to(cache):
    source = [{"n": 2}, {"n": 1}]
    assert cache.list_get("feed", 10, lambda: list(source), maxlen=3, ttl=10) == source
    cache.list_push("feed", {"n": 3}, maxlen=3)
    cache.list_push("feed", {"n": 4}, maxlen=3)
    assert cache.list_get("feed", 10, lambda: pytest.fail("hit expected"), maxlen=3, ttl=10) == [
        {"n": 4},
        {"n": 3},
        {"n": 2},
    ]


def test_a_push_during_a_list_rebuild_keeps_the_rebuild_out(cache):
    def slow_source():
        cache.list_push("feed", {"n": 2}, maxlen=10)  # a change lands while we read the source
        return [{"n": 1}]

    assert cache.list_get("feed", 10, slow_source, maxlen=10, ttl=10) == [{"n": 1}]
    assert cache.client.exists(cache.keys.entry("feed")) == 0


def test_keys_carry_the_prefix(cache, key_prefix):
    cache.set("k", 1, ttl=10, tags=["t"])
    assert cache.client.exists(key_prefix + "k") == 1
    assert cache.client.exists(key_prefix + "tagv:t") == 1


def test_values_are_stored_as_json_never_pickle(cache, key_prefix):
    cache.set("k", {"x": 1}, ttl=10)
    raw = stored_payload(cache.client.get(key_prefix + "k"))
    header, _, body = raw.partition(b"\n")
    assert body == b'{"x":1}'
    assert header.startswith(b"{")


def test_an_expired_entry_is_served_while_one_caller_refreshes_it(cache, in_thread):
    cache.get_or_set("k", lambda: "old", ttl=0.2)
    time.sleep(0.3)  # expired, still within CACHE_STALE_TTL
    refreshing, served = threading.Event(), threading.Event()

    def slow_refresh():
        refreshing.set()
        served.wait(5)  # the refresh is still running while the other caller is served
        return "new"

    refresher = in_thread(cache.get_or_set, "k", slow_refresh, 10)
    assert refreshing.wait(2)
    started = time.perf_counter()
    assert cache.get_or_set("k", lambda: pytest.fail("a second fetch"), ttl=10) == "old"
    assert time.perf_counter() - started < 0.1  # served at once, not after the refresh
    served.set()
    refresher.join()
    assert cache.get("k") == "new"


def test_an_expired_entry_is_gone_after_the_stale_bound(backend, redis_url, key_prefix):
    url = redis_url if backend == "real" else "memory://"
    app, ext = bare_app(url, key_prefix, CACHE_STALE_TTL=0.2)
    with running(app, ext):
        ext.get_or_set("k", lambda: "old", ttl=0.2)
        time.sleep(0.5)
        assert ext.client.exists(ext.keys.entry("k")) == 0
        assert ext.get_or_set("k", lambda: "new", ttl=10) == "new"


def test_a_waiter_gives_up_after_cache_fill_timeout_and_fetches_itself(
    backend, redis_url, key_prefix
):
    """A holder that hangs (its lock lives CACHE_LOCK_TTL, 30 s here) costs a waiter at most
    CACHE_FILL_TIMEOUT, however often it looks at the lock again (CACHE_LOCK_WAIT)."""
    url = redis_url if backend == "real" else "memory://"
    app, ext = bare_app(
        url, key_prefix, CACHE_LOCK_TTL=30, CACHE_LOCK_WAIT=0.1, CACHE_FILL_TIMEOUT=0.6
    )
    with running(app, ext):
        full_key = ext.keys.entry("k")
        ext.client.set(ext.keys.lock(full_key), "a hung holder", px=30_000)
        started = time.monotonic()
        assert ext.get_or_set("k", lambda: "fetched", ttl=10) == "fetched"
        waited = time.monotonic() - started
    assert 0.6 <= waited < 1.8


def test_a_fill_slower_than_the_lock_wait_and_ttl_is_still_one_fetch(
    backend, redis_url, key_prefix
):
    """The holder renews its lock while it fetches, so the waiter keeps waiting for its fill
    (it looks at the lock every 0.1 s; the lock would expire after 0.6 s without renewal, twice
    over during the fetch; renewed every 0.2 s, it survives a renewal 0.4 s late, as a busy
    machine made one with 0.3 s)."""
    url = redis_url if backend == "real" else "memory://"
    app, ext = bare_app(url, key_prefix, CACHE_LOCK_TTL=0.6, CACHE_LOCK_WAIT=0.1)
    fetches: list[str] = []
    fetching = threading.Event()

    def slow_fetch(name: str):
        def fetch():
            fetches.append(name)
            fetching.set()
            time.sleep(1.2)
            return name

        return fetch

    with running(app, ext):

        def holder():
            with app.app_context():
                assert ext.get_or_set("k", slow_fetch("holder"), ttl=10) == "holder"

        thread = threading.Thread(target=holder)
        thread.start()
        assert fetching.wait(5)
        assert ext.get_or_set("k", slow_fetch("waiter"), ttl=10) == "holder"
        thread.join(5)
    assert fetches == ["holder"]


def test_renewal_never_extends_a_lock_that_passed_to_another_caller(redis_url, key_prefix, raw):
    app, ext = bare_app(redis_url, key_prefix, CACHE_LOCK_TTL=0.3)
    with running(app, ext):
        lock = ext._state().lock
        full_key = ext.keys.entry("k")
        token = lock.acquire(full_key)
        assert token
        time.sleep(0.5)  # renewed past its 0.3 s TTL while held
        assert raw.get(ext.keys.lock(full_key)) == token.encode()
        raw.set(ext.keys.lock(full_key), "another caller", px=200)  # as after an expiry
        time.sleep(0.4)  # a renewal of the old token would have made it live past 0.2 s
        assert raw.get(ext.keys.lock(full_key)) is None
        lock.release(full_key, token)
