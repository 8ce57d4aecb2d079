"""The cache's Redis Functions library (``taskapp/cache/library.lua``) on a real redis-server."""

from __future__ import annotations

import pytest
import redis

from taskapp.cache import functions
from taskapp.cache.admission import Answer, Verdict

VERSION_TTL = 60_000


@pytest.fixture
def fcall(redis_url, key_prefix):
    """Call a function of the library on this test's keys (loaded where missing)."""
    client = redis.Redis.from_url(redis_url)

    def call(name: str, keys: list[str], args: list) -> object:
        return functions.call(
            client.execute_command,
            lambda: functions.LIBRARY.load(client),
            name,
            [key_prefix + k for k in keys],
            args,
        )

    call.client = client  # type: ignore[attr-defined]
    yield call
    client.close()


def request(fcall, key_prefix, steps: str, keys: list[str], args: list) -> Answer:
    reply = fcall("request", keys, [steps, key_prefix, VERSION_TTL, *args])
    return Answer.decode(steps, reply)


def server_second(client) -> int:
    return client.time()[0]


# request: checks, then a read


def test_a_request_runs_its_steps_in_order_each_on_its_own_keys(fcall, key_prefix):
    answer = request(fcall, key_prefix, "LLS", ["{a}:w1", "{a}:w2", "{a}:sv"], [5, 1])
    assert answer.admitted and (answer.limited.allowed, answer.limited.requests) == (True, 1)
    client = fcall.client
    assert answer.read == client.get(key_prefix + "{a}:sv")  # the version, made now
    assert client.hget(key_prefix + "{a}:w1", "n") == b"1"
    assert client.hget(key_prefix + "{a}:w2", "n") == b"1"


def test_a_refused_check_stops_the_request_before_anything_else_runs(fcall, key_prefix):
    request(fcall, key_prefix, "L", ["{a}:w"], [1])
    answer = request(fcall, key_prefix, "LLS", ["{a}:w", "{a}:other", "{a}:sv"], [1, 5])
    assert not answer.admitted and answer.limited.allowed is False and answer.read is None
    client = fcall.client
    assert not client.exists(key_prefix + "{a}:other") and not client.exists(key_prefix + "{a}:sv")


def test_a_revocation_check_is_unknown_until_the_hash_is_built_by_this_server_run(
    fcall, key_prefix
):
    key = "{u:1}:revoked"
    assert request(fcall, key_prefix, "R", [key], ["s:one", 3]).verdict == Verdict.UNKNOWN
    build = fcall("revocation_begin", [key], [key_prefix, VERSION_TTL, 900_000, "b1"])
    assert (
        fcall(
            "revocation_record", [key], [key_prefix, VERSION_TTL, 900_000, build, 3, "0", "s:gone"]
        )
        == 1
    )
    assert request(fcall, key_prefix, "R", [key], ["s:one", 3]).verdict == Verdict.OK
    for session, generation in (("s:gone", 3), ("s:one", 2)):
        answer = request(fcall, key_prefix, "RS", [key, "{u:1}:sv"], [session, generation])
        assert (answer.admitted, answer.verdict, answer.read) == (False, Verdict.REVOKED, None)


# Rate limits: one count per second, the last 61 whole seconds


def test_a_limit_allows_n_requests_then_refuses_without_counting_the_refused(fcall, key_prefix):
    answers = [request(fcall, key_prefix, "L", ["w"], [3]).limited for _ in range(5)]
    assert [(a.allowed, a.requests) for a in answers] == [
        (True, 1), (True, 2), (True, 3), (False, 3), (False, 3),
    ]  # fmt: skip
    assert all(60_000 < a.reset_ms <= 61_000 for a in answers)  # the oldest leaves within 61 s


def test_seconds_that_left_the_window_are_no_longer_counted(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    window = key_prefix + "w"
    client.hset(window, mapping={"n": 5, "f": now - 70, now - 70: 3, now - 30: 2})
    answer = request(fcall, key_prefix, "L", ["w"], [4]).limited
    assert (answer.allowed, answer.requests) == (True, 3)  # the 2 still in it, and this one
    state = client.hgetall(window)
    assert str(now - 70).encode() not in state
    assert int(state[b"f"]) == now - 30 and int(state[b"n"]) == 3
    # The oldest counted second leaves the window 61 s after it began.
    assert 30_000 <= answer.reset_ms <= 31_000


def test_a_refused_request_still_forgets_the_seconds_that_left_the_window(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    window = key_prefix + "w"
    client.hset(window, mapping={"n": 6, "f": now - 70, now - 70: 1, now - 10: 5})
    assert request(fcall, key_prefix, "L", ["w"], [5]).limited.allowed is False  # 5 still in it
    assert int(client.hget(window, "n")) == 5 and int(client.hget(window, "f")) == now - 10
    assert request(fcall, key_prefix, "L", ["w"], [6]).limited.requests == 6  # not 7


def test_a_window_full_of_busy_seconds_stays_under_2_kb(fcall, key_prefix):
    """A user at the full default rate (600 a minute: 10 every second) for a whole window."""
    client = fcall.client
    now = server_second(client)
    window = key_prefix + "w"
    busy = {now - s: 10 for s in range(1, 61)}
    client.hset(window, mapping={"n": 600, "f": now - 60, **busy})
    for _ in range(9):  # this second's requests
        request(fcall, key_prefix, "L", ["w"], [10_000])
    assert int(client.hget(window, "n")) == 609
    assert client.memory_usage(window) <= 2048
    assert client.object("encoding", window) == b"listpack"


def test_a_window_expires_a_little_after_its_newest_second(fcall, key_prefix):
    request(fcall, key_prefix, "L", ["w"], [5])
    assert 61_000 < fcall.client.pttl(key_prefix + "w") <= 62_000


# Versions: unique per change and per server run


def test_a_version_made_before_a_restart_from_disk_is_not_honoured_after_it(private_redis):
    client = redis.Redis(port=private_redis.port)
    call = ("FCALL", functions.LIBRARY.function("request"), 1, "{s}:sv", "S", "p:", VERSION_TTL)
    functions.LIBRARY.load(client)
    before = client.execute_command(*call)[1]
    assert client.execute_command(*call)[1] == before  # current while nothing changed
    client.save()
    private_redis.kill()
    private_redis.start()  # from its RDB file: the version key and the library come back
    client = redis.Redis(port=private_redis.port)
    assert client.get("{s}:sv") == before
    after = client.execute_command(*call)[1]
    assert after != before  # another server run: made anew
    client.close()


# A full Redis (maxmemory under noeviction)


def test_a_full_redis_runs_the_small_writes_and_refuses_to_store_values(private_redis):
    client = redis.Redis(port=private_redis.port)
    functions.LIBRARY.load(client)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 64 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for n in range(10_000):
            client.set(f"ballast:{n}", "x" * 1024)

    def call(name, keys, args):
        return client.execute_command(
            "FCALL", functions.LIBRARY.function(name), len(keys), *keys, *args
        )

    versioned = ["p:", VERSION_TTL]
    assert call("request", ["{u}:rl", "{u}:sv"], ["LS", *versioned, 10])[0] == 1
    assert call("invalidate", ["p:tagv:{u}:t", "p:sv:{u}"], versioned) == 1
    assert call("delete", ["p:{u}:e", "p:v:{u}:e", "p:sv:{u}"], versioned) == 0
    assert call("revocation_record", ["{u}:revoked"], [*versioned, 1000, "", 2, "1"]) == 1
    assert call("claim", ["{u}:claimed"], [1000]) == 1
    assert call("release", ["p:lock:{u}:e"], ["token", "p:ch", "p:{u}:e"]) == 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        call(
            "fill",
            ["p:{u}:e", "p:lock:{u}:e", "p:sv:{u}", "p:v:{u}:e"],
            [*versioned, "{}", 1000, "", "", "", 0],
        )
    client.close()


# Loading


def test_two_versions_of_the_library_load_side_by_side(redis_url, key_prefix):
    client = redis.Redis.from_url(redis_url)
    functions.LIBRARY.load(client)
    other = functions.Library(functions.SOURCE.read_text() + "\n-- another version\n")
    assert other.version != functions.LIBRARY.version
    other.load(client)
    functions.LIBRARY.load(client)  # already there: nothing replaced
    for library in (functions.LIBRARY, other):
        name = library.function("claim")
        claim = f"{key_prefix}{{lib}}:claim:{library.version}"
        assert client.execute_command("FCALL", name, 1, claim, 1000) == 1
    client.function_delete(other.name)
    client.close()
