"""The request path's own Redis connections (``store.Direct``), against a real redis-server."""

from __future__ import annotations

import threading

import pytest
import redis

from taskapp.cache.client import Unavailable
from taskapp.cache.extension import state_of


@pytest.fixture
def store(make_app):
    app = make_app(CACHE_BREAKER_THRESHOLD=100)
    return state_of(app).store


ECHO = "return {KEYS[1], ARGV[1]}"


def test_a_script_runs_on_a_direct_connection_and_is_loaded_when_redis_forgot_it(store):
    key = store.keys.entry("{t}:direct")
    assert store.direct is not None
    assert store.call(ECHO, [key], ["a"]) == [key.encode(), b"a"]
    store.client.script_flush()  # Redis forgets every script (a restart, a failover)
    assert store.call(ECHO, [key], ["b"]) == [key.encode(), b"b"]


def test_a_connection_killed_under_the_cache_is_replaced_without_an_error(store):
    key = store.keys.entry("{t}:direct")
    store.call(ECHO, [key], ["a"])
    killed = store.client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    errors = store.breaker._failures
    assert store.call(ECHO, [key], ["b"]) == [key.encode(), b"b"]
    assert store.get(key) is None
    assert store.breaker._failures == errors


def test_a_script_error_is_a_command_error_and_the_connection_stays_usable(store):
    key = store.keys.entry("{t}:direct")
    store.client.set(key, "not a number")
    with pytest.raises(Unavailable):
        store.call("return redis.call('INCR', KEYS[1])", [key], [])
    assert not store.breaker.is_open
    assert store.call(ECHO, [key], ["c"]) == [key.encode(), b"c"]


def test_threads_take_connections_of_their_own_and_give_them_back(store):
    key = store.keys.entry("{t}:direct")
    barrier = threading.Barrier(8)
    results: list[object] = []

    def call(n: int) -> None:
        barrier.wait()
        for _ in range(50):
            results.append(store.call(ECHO, [key], [str(n)]) == [key.encode(), str(n).encode()])

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 400  # no thread ever read another's reply
    direct = store.direct
    assert 1 <= len(direct._made) <= 8
    assert sorted(map(id, direct._idle)) == sorted(map(id, direct._made))


def test_a_hung_server_times_out_and_counts_towards_the_breaker(make_app, private_redis):
    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_THRESHOLD=2)
    store = state_of(app).store
    key = store.keys.entry("{t}:direct")
    store.call(ECHO, [key], ["a"])
    private_redis.pause()
    try:
        for _ in range(2):
            with pytest.raises(Unavailable):
                store.call(ECHO, [key], ["b"])
        assert store.breaker.is_open
    finally:
        private_redis.resume()


def test_closing_the_store_closes_its_direct_connections(make_app):
    state = state_of(make_app())
    store = state.store
    store.call(ECHO, [store.keys.entry("{t}:direct")], ["a"])
    connections = list(store.direct._made)
    assert connections and all(c._sock is not None for c in connections)
    state.close()
    assert all(c._sock is None for c in connections)
    assert isinstance(store.client, redis.Redis)
