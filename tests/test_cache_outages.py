"""Redis hanging (SIGSTOP), dying and coming back: answers keep coming, nothing stale survives."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from taskapp.cache import NO_VALUE, metrics
from tests.cache_helpers import bare_app, running, wait_until


@pytest.fixture
def cache_on(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix, CACHE_BREAKER_COOLDOWN=0.5)
    with running(app, ext):
        yield ext


def back_in_use(cache) -> None:
    """Wait for the breaker's cool-down and its background probe (each read may start it)."""
    wait_until(lambda: cache.get("probe") is NO_VALUE and not cache.degraded, timeout=5)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def test_a_hung_redis_costs_a_few_timeouts_then_nothing(cache_on, private_redis):
    # "k" is in no layer: each call must reach Redis until the breaker opens.
    errors_before = metrics.CACHE_ERRORS._value.get()
    private_redis.pause()
    try:
        durations = []
        for _ in range(40):
            value, seconds = timed(lambda: cache_on.get_or_set("k", lambda: "from source", ttl=30))
            assert value == "from source"
            durations.append(seconds)
    finally:
        private_redis.resume()
    # The first calls wait for the socket timeout; once the breaker opens, calls skip Redis.
    assert sum(durations[:5]) < 3.0
    assert statistics.median(durations) < 0.005
    assert metrics.CACHE_ERRORS._value.get() - errors_before >= 3
    assert cache_on.degraded


def test_the_cache_is_used_again_after_redis_resumes(cache_on, private_redis):
    private_redis.pause()
    try:
        for _ in range(5):
            cache_on.get("k")
    finally:
        private_redis.resume()
    back_in_use(cache_on)
    assert not cache_on.degraded
    calls = []
    cache_on.get_or_set("k", lambda: calls.append(1) or "v", ttl=30)
    assert cache_on.get_or_set("k", lambda: calls.append(1) or "v", ttl=30) == "v"
    assert calls == [1]


def test_an_invalidation_made_during_a_hang_is_replayed_before_reads(cache_on, private_redis):
    cache_on.set("k", "before the write", ttl=30, tags=["t"])
    private_redis.pause()
    try:
        for _ in range(5):
            cache_on.get("other")  # the breaker opens
        assert cache_on.degraded
        cache_on.invalidate_tags("t")  # one try past the breaker times out: held back
    finally:
        private_redis.resume()
    back_in_use(cache_on)
    assert cache_on.get("k") is NO_VALUE


@pytest.mark.parametrize("slow", [0.0, 0.2], ids=["answering", "slow-to-answer"])
def test_a_write_while_the_breaker_is_open_but_redis_is_back_sends_its_invalidation_at_once(
    private_redis, key_prefix, slow
):
    """Redis restarts; another process reaches it first and caches a value read before a write;
    this process, its breaker still open (cool-down), makes the write: the invalidation must
    reach Redis before the write is answered, not wait for this process's probe.

    ``slow``: Redis, back, is that slow to answer the write's first question (paused, as a busy
    server or a loaded host is): the write waits up to a socket timeout for it. Giving up after
    50 ms answered the write with its invalidation held back while the other process served the
    older value."""
    writer_app, writer = bare_app(
        private_redis.url, key_prefix, CACHE_BREAKER_COOLDOWN=30, REDIS_SOCKET_TIMEOUT=1.0
    )
    reader_app, reader = bare_app(private_redis.url, key_prefix)
    with running(writer_app, writer):
        private_redis.kill()
        for _ in range(5):
            writer.get("other")  # the breaker opens; its probe waits 30 s
        assert writer.degraded
        private_redis.start()  # restarted empty
        with reader_app.app_context():
            assert reader.set("{u:1}:k", "read before the write", ttl=30, tags=["{u:1}:t"])
        if slow:
            private_redis.pause()
        resume = threading.Timer(slow, private_redis.resume)
        resume.start()
        try:
            writer.invalidate_tags("{u:1}:t")  # the write's invalidation, then its answer
        finally:
            resume.join()
        with reader_app.app_context():
            assert reader.get("{u:1}:k") is NO_VALUE
            reader.close()
        assert not writer.degraded  # the send proved Redis back: the breaker closed


def test_a_killed_redis_is_served_around_and_used_again_after_restart(cache_on, private_redis):
    private_redis.kill()
    durations = []
    for _ in range(30):
        value, seconds = timed(lambda: cache_on.get_or_set("k", lambda: "source", ttl=30))
        assert value == "source"
        durations.append(seconds)
    assert statistics.median(durations) < 0.005
    private_redis.start()
    back_in_use(cache_on)
    calls = []
    assert cache_on.get_or_set("k", lambda: calls.append(1) or "fresh", ttl=30) == "fresh"
    assert cache_on.get("k") == "fresh"
    assert not cache_on.degraded


def test_set_and_delete_never_raise_while_redis_is_down(cache_on, private_redis):
    private_redis.kill()
    assert cache_on.set("k", 1, ttl=10) is False
    assert cache_on.delete("k") == 0
    assert cache_on.invalidate_tags("t") == 0
    assert cache_on.get("k") is NO_VALUE
    assert cache_on.ping() is False


def test_an_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    cache_on, private_redis, caplog
):
    caplog.set_level("WARNING", logger="taskapp.cache")
    private_redis.kill()
    for _ in range(50):
        cache_on.get_or_set("k", lambda: "source", ttl=30)
    private_redis.start()
    back_in_use(cache_on)
    for _ in range(5):
        cache_on.get("k")
    messages = [r.getMessage() for r in caplog.records if r.name == "taskapp.cache"]
    assert sum("Redis unavailable" in m for m in messages) == 1
    assert sum("Redis reachable again" in m for m in messages) == 1


def test_a_refresh_that_cannot_read_its_versions_gives_up_without_reading_the_source(
    cache_on, private_redis, monkeypatch
):
    """Redis hangs just after a refresher took the fill lock: the refresh cannot store, so it
    reads nothing from the source (and its lock, released or expiring, lets the next reader
    after Redis answers again refresh it, once)."""
    from taskapp.cache.lock import FillLock

    cache_on.get_or_set("hot", lambda: "old", ttl=0.05)
    time.sleep(0.1)  # expired, kept as stale
    hold = FillLock.hold

    def hold_then_hang(self, full_key, token):
        hold(self, full_key, token)
        private_redis.pause()

    monkeypatch.setattr(FillLock, "hold", hold_then_hang)
    fetches = []
    assert cache_on.get_or_set("hot", lambda: fetches.append(1) or "new", 30, [], True) == "old"
    region = cache_on._state().region
    try:
        wait_until(lambda: not region._refreshing, timeout=5)  # the refresh thread is done
    finally:
        private_redis.resume()
    assert fetches == []
    monkeypatch.setattr(FillLock, "hold", hold)
    back_in_use(cache_on)
    wait_until(
        lambda: (
            cache_on.get_or_set("hot", lambda: fetches.append(1) or "new", 30, [], True) == "new"
        ),
        timeout=10,
        interval=0.05,
    )
    assert fetches == [1]
