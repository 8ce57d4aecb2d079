"""The request path's own Redis connections (``store.Direct``), against a real redis-server."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from taskapp.cache.client import Unavailable
from taskapp.cache.extension import state_of


@pytest.fixture
def store(make_app):
    app = make_app(CACHE_BREAKER_THRESHOLD=100)
    return state_of(app).store


def claim(store, name: str) -> int:
    """Call the library's ``claim`` (SET NX) on a key of this test: 1 the first time, then 0."""
    return store.call("claim", [store.keys.entry(f"{{t}}:{name}")], [60_000])


def test_a_function_runs_on_a_direct_connection_and_is_loaded_when_redis_forgot_it(store):
    assert store.direct is not None
    assert claim(store, "a") == 1
    store.client.function_flush()  # Redis forgets every function (restarted empty, say)
    assert claim(store, "b") == 1
    assert claim(store, "b") == 0


def test_a_connection_killed_while_idle_is_replaced_before_the_call_is_sent(store):
    claim(store, "a")
    killed = store.client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    errors = store.breaker._failures
    assert claim(store, "b") == 1
    assert store.get(store.keys.entry("{t}:none")) is None
    assert store.breaker._failures == errors


def test_a_call_whose_connection_drops_under_it_is_not_sent_again(store):
    """A function such as a rate limit's count must not run twice: a connection that drops
    after the call was written fails the call (the server may have run it)."""
    claim(store, "warm")
    claim(store, "warm")  # on a connection of its own reader (the first one connected)
    connection = store.direct._idle[-1]
    sent = []

    class Dropping:
        """The connection's socket, dropped once a command was written: the reply is lost."""

        def __init__(self, sock):
            self.sock = sock

        def sendall(self, data):
            sent.append(data)
            return self.sock.sendall(data)

        def recv_into(self, buffer, *args):
            self.sock.recv_into(buffer, *args)  # the reply comes, and is lost with the line
            return 0

        def __getattr__(self, name):
            return getattr(self.sock, name)

    connection._sock = Dropping(connection._sock)
    with pytest.raises(Unavailable):
        claim(store, "once")
    assert len(sent) == 1
    assert connection._sock is None  # dropped: never read from again
    assert claim(store, "once") == 0  # the one send was run by Redis


def test_a_connection_idle_past_the_health_check_interval_is_pinged_first(make_app, private_redis):
    """The calls of a connection in use skip redis-py's layers; one whose health check is due
    goes through them, which ping it (and connect anew if it does not answer). On a Redis of
    its own, PINGs being counted server-wide; the app's other connections ping only after 10
    idle seconds."""
    store = state_of(make_app(REDIS_URL=private_redis.url)).store
    claim(store, "warm")
    claim(store, "warm")

    def pings() -> int:
        stats = store.client.info("commandstats").get("cmdstat_ping", {})
        return stats.get("calls", 0)

    before = pings()
    claim(store, "a")
    assert pings() == before
    (connection,) = store.direct._made
    assert connection.health_check_interval > 0
    connection.next_health_check = time.monotonic() - 1  # idle past the interval
    assert claim(store, "b") == 1
    assert pings() == before + 1
    assert connection.next_health_check > time.monotonic()  # renewed by the call
    claim(store, "c")
    assert pings() == before + 1


def test_a_function_error_is_a_command_error_and_the_connection_stays_usable(store):
    key = store.keys.entry("{t}:direct")
    store.client.set(key, "not a hash")
    with pytest.raises(Unavailable):
        store.call("request", [key], ["L", *store.versioned(), 10])  # HMGET on a string
    assert not store.breaker.is_open
    assert claim(store, "c") == 1


def test_threads_take_connections_of_their_own_and_give_them_back(store):
    barrier = threading.Barrier(8)
    results: list[object] = []

    def call(n: int) -> None:
        barrier.wait()
        for i in range(50):
            results.append(claim(store, f"{n}-{i}") == 1)

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
    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_THRESHOLD=2, REDIS_SOCKET_TIMEOUT=0.3)
    store = state_of(app).store
    claim(store, "a")
    claim(store, "a")  # the second call runs on the socket the first one connected
    private_redis.pause()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                claim(store, "b")
            assert 0.25 < time.monotonic() - started < 2.0  # the timeout ran out, once
            assert isinstance(raised.value.__cause__, redis.TimeoutError)
        assert store.breaker.is_open
    finally:
        private_redis.resume()


def test_closing_the_store_closes_its_direct_connections(make_app):
    state = state_of(make_app())
    store = state.store
    claim(store, "a")
    connections = list(store.direct._made)
    assert connections and all(c._sock is not None for c in connections)
    state.close()
    assert all(c._sock is None for c in connections)
    assert isinstance(store.client, redis.Redis)
