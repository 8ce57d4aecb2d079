"""Versions that cannot come round again: no check is satisfied by state made before Redis lost
it (flushed, restarted empty or from its RDB file, versions evicted or expired).

Each test loses Redis's state between a write and a later read or store, on a redis-server of its
own, and checks that the value from before the write is never answered.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from taskapp.cache import NO_VALUE, context
from tests.cache_helpers import bare_app, running


def lose_state(server, how: str) -> None:
    """Redis loses what it held since the last snapshot (or everything)."""
    if how == "flushall":
        redis_client(server).flushall()
    elif how == "restart-empty":
        server.kill()
        Path(server.dir, "dump.rdb").unlink(missing_ok=True)
        server.start()
    elif how == "restart-from-rdb":
        server.kill()  # SIGKILL: what was written after the last SAVE is lost
        server.start()  # loads dump.rdb: values and versions as they were at the SAVE
    else:
        raise AssertionError(how)


def redis_client(server) -> redis.Redis:
    return redis.Redis(port=server.port)


LOSSES = ["flushall", "restart-empty", "restart-from-rdb"]


@pytest.mark.parametrize("how", LOSSES)
def test_an_entry_invalidated_before_the_loss_is_never_served_after_it(private_redis, how):
    app, ext = bare_app(private_redis.url, "p:")
    with running(app, ext):
        ext.set("{u:1}:k", "old", ttl=60, tags=["{u:1}:t"])
        redis_client(private_redis).save()  # the snapshot holds "old" and its versions
        ext.invalidate_tags("{u:1}:t")  # answered: "old" must never be served again
        lose_state(private_redis, how)
        assert ext.get("{u:1}:k") is NO_VALUE


def start_slow_fill(app, ext):
    """A reader's ``get_or_set`` of ``{u:1}:k`` (tag ``{u:1}:t``) whose fetch has read "old" and
    waits: (its thread, the event that lets the fetch return, the values the reader got)."""
    fetching, release = threading.Event(), threading.Event()
    stored: list = []

    def slow_fetch():
        fetching.set()
        release.wait(10)
        return "old"

    def reader():
        with app.app_context():
            stored.append(ext.get_or_set("{u:1}:k", slow_fetch, ttl=60, tags=["{u:1}:t"]))

    thread = threading.Thread(target=reader)
    thread.start()
    assert fetching.wait(5)
    return thread, release, stored


@pytest.mark.parametrize("how", LOSSES)
def test_a_fill_in_flight_across_a_write_and_a_loss_is_not_stored(private_redis, how):
    """The issue's finding: a slow fill read the source before a write; the write was answered;
    Redis lost its state; the fill then lands. A version that comes round again (a counter
    read as 0 when missing) would let it through."""
    app, ext = bare_app(private_redis.url, "p:")
    with running(app, ext):
        redis_client(private_redis).save()
        thread, release, stored = start_slow_fill(app, ext)
        ext.invalidate_tags("{u:1}:t")  # the write's invalidation, answered
        lose_state(private_redis, how)
        release.set()
        thread.join(10)
        assert stored == ["old"]  # the reader itself may answer what it read
        assert ext.get("{u:1}:k") is NO_VALUE  # but it was not stored for anyone else


@pytest.mark.parametrize("how", LOSSES)
def test_a_memory_entry_is_not_served_after_a_loss(private_redis, how):
    reader_app, reader = bare_app(private_redis.url, "p:")
    writer_app, writer = bare_app(private_redis.url, "p:")  # another process's cache
    with running(reader_app, reader), reader_app.test_request_context():
        writer_ctx = writer_app.app_context()
        reader.set("{u:1}:k", "old", ttl=60, tags=["{u:1}:t"])
        assert reader.get("{u:1}:k") == "old" and len(reader.local) == 1
        redis_client(private_redis).save()
        with writer_ctx:
            writer.set("{u:1}:k", "new", ttl=60, tags=["{u:1}:t"])  # answered
            writer.close()
        lose_state(private_redis, how)
        context.RequestState.current().scopes.clear()  # the next request
        assert reader.get("{u:1}:k") in (NO_VALUE, "new")


def test_a_list_pushed_to_after_the_snapshot_is_rebuilt_after_a_restart(private_redis):
    app, ext = bare_app(private_redis.url, "p:")
    with running(app, ext):
        source = [{"n": 1}]
        assert ext.list_get("{u:1}:feed", 10, lambda: list(source), maxlen=10, ttl=60) == source
        redis_client(private_redis).save()
        source.insert(0, {"n": 2})
        ext.list_push("{u:1}:feed", {"n": 2}, maxlen=10)  # answered after the snapshot
        lose_state(private_redis, "restart-from-rdb")
        assert ext.list_get("{u:1}:feed", 10, lambda: list(source), maxlen=10, ttl=60) == source


def test_an_evicted_version_refuses_the_fill_that_read_it(private_redis):
    """Under maxmemory a version key can be evicted while an entry's fill is in flight; the
    version made anew at the next read is a different value, so the fill is refused."""
    app, ext = bare_app(private_redis.url, "p:")
    with running(app, ext):
        thread, release, _ = start_slow_fill(app, ext)
        ext.invalidate_tags("{u:1}:t")
        client = redis_client(private_redis)
        for key in client.scan_iter(match="p:*v:*"):  # as allkeys-lru would, for these keys
            client.delete(key)
        release.set()
        thread.join(10)
        assert ext.get("{u:1}:k") is NO_VALUE
