"""L1_CACHE_COHERENCE=acked: memory hits without a round trip, as strict as asking Redis.

Two apps on one Redis and one prefix stand for two processes: each has its own listener, lease
and member id. Their channels are slowed or stopped to show that no answered write is followed by
an older answer from memory, whatever the channel does.
"""

from __future__ import annotations

import threading
import time

import pytest

from taskapp.cache.coherence import LEASE
from taskapp.cache.extension import state_of
from tests.cache_helpers import bare_app, wait_until

KEY = "{u:1}:task:1"


@pytest.fixture
def pair(redis_url, key_prefix):
    """Two apps (two "processes") sharing Redis and the prefix, both with acked coherence."""
    made = [bare_app(redis_url, key_prefix, L1_CACHE_COHERENCE="acked") for _ in range(2)]
    yield made
    for app, ext in made:
        with app.app_context():
            ext.close()


def trusted(app) -> bool:
    state = state_of(app)
    return state.l1.active and state.coherence.trusted()


def holds_v1(pair) -> None:
    """The first app writes v1; the second, trusted, reads it and keeps it in memory."""
    (a, cache_a), (b, cache_b) = pair
    with a.app_context():
        cache_a.set(KEY, "v1", ttl=60)
    with b.app_context():
        wait_until(lambda: trusted(b))
        assert cache_b.get(KEY) == "v1"


def redis_calls(app, monkeypatch) -> list[tuple]:
    """Every command ``app``'s cache sends from now on, by any of its connections."""
    store = state_of(app).store
    calls: list[tuple] = []
    for owner, name in ((store.direct, "execute"), (store.client, "execute_command")):
        original = getattr(owner, name)

        def counting(*args, _original=original, **options):
            calls.append(args)
            return _original(*args, **options)

        monkeypatch.setattr(owner, name, counting)
    return calls


def slow_channel(app, monkeypatch, hold: threading.Event | None = None, delay: float = 0.0):
    """Make ``app``'s listener handle each message ``delay`` late, or not before ``hold`` is set."""
    notifier = state_of(app).notifier
    handle = notifier._handle

    def late(channel, data):
        if hold is not None:
            hold.wait(10)
        time.sleep(delay)
        handle(channel, data)

    monkeypatch.setattr(notifier, "_handle", late)


def test_a_memory_hit_asks_redis_nothing(pair, monkeypatch):
    (a, cache_a), (b, cache_b) = pair
    with a.app_context():
        cache_a.set(KEY, "v1", ttl=60)
    with b.app_context():
        wait_until(lambda: trusted(b))
        assert cache_b.get(KEY) == "v1"  # from Redis, kept in memory
        calls = redis_calls(b, monkeypatch)
        assert cache_b.get(KEY) == "v1"
    assert calls == []


def test_a_write_is_answered_only_once_every_process_applied_it(pair, monkeypatch):
    (a, cache_a), (b, cache_b) = pair
    holds_v1(pair)
    slow_channel(b, monkeypatch, delay=0.15)  # b learns of every change 150 ms late
    for value in ("v2", "v3", "v4"):
        started = time.monotonic()
        with a.app_context():
            cache_a.set(KEY, value, ttl=60)
        waited = time.monotonic() - started
        with b.app_context():
            assert cache_b.get(KEY) == value  # never the older value b still held
            assert cache_b.get(KEY) == value
        assert waited >= 0.15  # the write waited for b


def test_a_process_whose_channel_stops_is_waited_for_one_lease_at_most(pair, monkeypatch):
    (a, cache_a), (b, cache_b) = pair
    holds_v1(pair)
    hold = threading.Event()
    slow_channel(b, monkeypatch, hold=hold)  # b's listener hangs on its next message
    try:
        started = time.monotonic()
        with a.app_context():
            cache_a.set(KEY, "v2", ttl=60)
        answered = time.monotonic()
        # answered once b stopped trusting its memory, not when b came back
        assert answered - started < LEASE + 0.5
        assert state_of(b).coherence._lease_until <= answered
        assert not trusted(b)
        with b.app_context():
            assert cache_b.get(KEY) == "v2"  # memory is checked against Redis meanwhile
    finally:
        hold.set()
    with b.app_context():
        wait_until(lambda: trusted(b))  # the lease comes back with the channel
        assert cache_b.get(KEY) == "v2"


def test_a_process_that_left_is_not_waited_for(pair):
    (a, cache_a), (b, cache_b) = pair
    with b.app_context():
        wait_until(lambda: trusted(b))
        cache_b.close()  # its listener stops and leaves the members
    started = time.monotonic()
    with a.app_context():
        cache_a.set(KEY, "v1", ttl=60)
    assert time.monotonic() - started < LEASE / 2


def test_a_write_from_a_process_on_the_version_setting_is_waited_for_too(
    redis_url, key_prefix, monkeypatch
):
    reader = bare_app(redis_url, key_prefix, L1_CACHE_COHERENCE="acked")
    writer = bare_app(redis_url, key_prefix)  # the default: version
    try:
        (b, cache_b), (a, cache_a) = reader, writer
        holds_v1([writer, reader])
        slow_channel(b, monkeypatch, delay=0.15)
        with a.app_context():
            cache_a.set(KEY, "v2", ttl=60)
        with b.app_context():
            assert cache_b.get(KEY) == "v2"
    finally:
        for app, ext in (reader, writer):
            with app.app_context():
                ext.close()


def test_acked_coherence_refuses_redis_cluster(redis_url, key_prefix):
    with pytest.raises(RuntimeError, match="L1_CACHE_COHERENCE"):
        bare_app(redis_url, key_prefix, L1_CACHE_COHERENCE="acked", REDIS_CLUSTER=True)
