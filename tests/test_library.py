"""The cache's Redis Functions library (``taskapp/cache/library.lua``) on a real redis-server."""

from __future__ import annotations

import pytest
import redis

from taskapp.cache import functions
from taskapp.cache.admission import Admission, Answer, Verdict
from taskapp.cache.scope_state import TOTAL_AT, WINDOW, Window, hit_command, slot_bits

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


def window(client, key) -> Window:
    return Window.decode(client.get(key))


def put_slot(client, key, second: int, count: int) -> None:
    """Write a count for ``second`` into a window as the library would have (slot and total)."""
    stamp_at, count_at = slot_bits(second)
    client.bitfield(key).set("u32", stamp_at, second).set("u32", count_at, count).incrby(
        "u32", TOTAL_AT, count
    ).execute()


def test_a_request_runs_its_steps_in_order_each_on_its_own_keys(fcall, key_prefix):
    answer = request(fcall, key_prefix, "LLS", ["{a}:w1", "{a}:w2", "sv:{a}"], [5, "", 1, ""])
    assert answer.admitted and (answer.limited.allowed, answer.limited.requests) == (True, 1)
    client = fcall.client
    mark, count = window(client, key_prefix + "sv:{a}").version  # made now, in the scope state
    assert answer.read == b"%d.%d" % (mark, count) and mark > 0
    assert window(client, key_prefix + "{a}:w1").total == 1
    assert window(client, key_prefix + "{a}:w2").total == 1


def test_a_refused_check_stops_the_request_before_anything_else_runs(fcall, key_prefix):
    request(fcall, key_prefix, "L", ["{a}:w"], [1, ""])
    answer = request(fcall, key_prefix, "LLS", ["{a}:w", "{a}:other", "sv:{a}"], [1, "", 5, ""])
    assert not answer.admitted and answer.limited.allowed is False and answer.read is None
    client = fcall.client
    assert not client.exists(key_prefix + "{a}:other") and not client.exists(key_prefix + "sv:{a}")


def test_a_revocation_check_is_unknown_until_the_hash_is_built_by_this_server_run(
    fcall, key_prefix
):
    key = "{u:1}:revoked"
    assert request(fcall, key_prefix, "R", [key], ["s:one", 3]).verdict == Verdict.UNKNOWN
    build = fcall("revocation_begin", [key], [key_prefix, VERSION_TTL, 900_000, "b1"])
    recorded = [key, "sv:{u:1}"]
    args = [key_prefix, VERSION_TTL, 900_000, build, 3, "0", "s:gone"]
    assert fcall("revocation_record", recorded, args) == 1
    assert request(fcall, key_prefix, "R", [key], ["s:one", 3]).verdict == Verdict.OK
    for session, generation in (("s:gone", 3), ("s:one", 2)):
        answer = request(fcall, key_prefix, "RS", [key, "sv:{u:1}"], [session, generation])
        assert (answer.admitted, answer.verdict, answer.read) == (False, Verdict.REVOKED, None)


def test_every_revocation_bumps_the_subjects_scope_version(fcall, key_prefix):
    """A process that remembers a token's verdict under the scope version asks again."""
    key, scope = "{u:2}:revoked", "sv:{u:2}"
    before = request(fcall, key_prefix, "S", [scope], []).read
    fcall("revocation_record", [key, scope], [key_prefix, VERSION_TTL, 900_000, "", "", "0", "s:x"])
    assert request(fcall, key_prefix, "S", [scope], []).read != before


# Rate limits: one count per second, the last 61 whole seconds


def test_a_limit_allows_n_requests_then_refuses_without_counting_the_refused(fcall, key_prefix):
    answers = [request(fcall, key_prefix, "L", ["w"], [3, ""]).limited for _ in range(5)]
    assert [(a.allowed, a.requests) for a in answers] == [
        (True, 1), (True, 2), (True, 3), (False, 3), (False, 3),
    ]  # fmt: skip
    assert all(59_000 < a.reset_ms <= 61_000 for a in answers)  # the oldest leaves within 61 s
    state = window(fcall.client, key_prefix + "w")
    assert state.total == 3 == state.counted(server_second(fcall.client))


def test_seconds_that_left_the_window_are_no_longer_counted(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "w"
    put_slot(client, key, now - 70, 3)  # left the window: its slot is not this second's
    put_slot(client, key, now - 30, 2)
    answer = request(fcall, key_prefix, "L", ["w"], [4, ""]).limited
    assert (answer.allowed, answer.requests) == (True, 3)  # the 2 still in it, and this one
    state = window(client, key)
    assert state.total == 3 and (now - 70, 0) in state.slots  # cleared
    # The oldest counted second leaves the window 61 s after it began.
    assert 30_000 <= answer.reset_ms <= 31_000


def test_a_slot_of_a_second_gone_is_taken_out_when_its_slot_is_reused(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "w"
    put_slot(client, key, now - WINDOW, 7)  # this second's slot, 61 s ago
    answer = request(fcall, key_prefix, "L", ["w"], [100, ""]).limited
    assert (answer.allowed, answer.requests) == (True, 1)
    state = window(client, key)
    assert state.total == 1 and (now, 1) in state.slots


def test_a_refused_request_still_forgets_the_seconds_that_left_the_window(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "w"
    put_slot(client, key, now - 70, 1)
    put_slot(client, key, now - 10, 5)
    assert request(fcall, key_prefix, "L", ["w"], [5, ""]).limited.allowed is False  # 5 in it
    assert window(client, key).total == 5
    assert request(fcall, key_prefix, "L", ["w"], [6, ""]).limited.requests == 6  # not 7


def test_a_request_the_app_counted_is_decided_without_counting_it_again(fcall, key_prefix):
    """The app counted the request with its own BITFIELD (scope_state.hit_command) and found
    a count of a second gone in its slot; the library takes that out, and decides."""
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "sv:{a}"
    put_slot(client, key, now - WINDOW, 4)
    mark, count, kept, old, in_slot, total = client.execute_command(*hit_command(key, now))
    assert (old, in_slot, total) == (now - WINDOW, 5, 5)
    counted = Admission().scope_limit(1).counted(now, in_slot - 1)
    steps, keys, args = counted.call(str, "S", [key], [], scope=key)
    answer = Answer.decode(steps, fcall("request", [k[len(key_prefix) :] for k in keys],
                                        [steps, key_prefix, VERSION_TTL, *args]))  # fmt: skip
    assert answer.admitted and answer.limited.requests == 1
    assert window(client, key).total == 1
    # Over the limit: refused, and its count taken back.
    client.execute_command(*hit_command(key, now))
    counted = Admission().scope_limit(1).counted(now, 0)
    steps, keys, args = counted.call(str, "S", [key], [], scope=key)
    reply = fcall(
        "request", [k[len(key_prefix) :] for k in keys], [steps, key_prefix, VERSION_TTL, *args]
    )
    assert Answer.decode(steps, reply).limited == (
        False,
        1,
        Answer.decode(steps, reply).limited.reset_ms,
    )
    assert window(client, key).total == 1


def test_a_counted_request_whose_token_is_refused_is_taken_out_of_its_window(fcall, key_prefix):
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "sv:{a}"
    client.execute_command(*hit_command(key, now))
    counted = Admission().revocation("{a}:revoked", "one", 1).scope_limit(5).counted(now, 0)
    steps, keys, args = counted.call(lambda k: key_prefix + k, "S", [key], [], scope=key)
    reply = fcall(
        "request", [k[len(key_prefix) :] for k in keys], [steps, key_prefix, VERSION_TTL, *args]
    )
    assert Answer.decode(steps, reply).verdict == Verdict.UNKNOWN  # never built: refused
    assert window(client, key).total == 0


def test_a_window_full_of_busy_seconds_stays_under_2_kb(fcall, key_prefix):
    """A user at the full default rate (600 a minute: 10 every second) for a whole window."""
    client = fcall.client
    now = server_second(client)
    key = key_prefix + "w"
    for second in range(now - 60, now):
        put_slot(client, key, second, 10)
    for _ in range(9):  # this second's requests
        request(fcall, key_prefix, "L", ["w"], [10_000, ""])
    assert window(client, key).total == 609
    assert client.memory_usage(key) <= 2048


def test_a_window_expires_a_little_after_its_newest_second(fcall, key_prefix):
    request(fcall, key_prefix, "L", ["w"], [5, ""])
    assert 61_000 < fcall.client.pttl(key_prefix + "w") <= 62_000


# Versions: unique per change and per server run


def test_a_version_made_before_a_restart_from_disk_is_not_honoured_after_it(private_redis):
    client = redis.Redis(port=private_redis.port)
    call = ("FCALL", functions.LIBRARY.function("request"), 1, "p:sv:{s}", "S", "p:", VERSION_TTL)
    functions.LIBRARY.load(client)
    before = client.execute_command(*call)[1]
    assert client.execute_command(*call)[1] == before  # current while nothing changed
    client.save()
    private_redis.kill()
    private_redis.start()  # from its RDB file: the version key and the library come back
    client = redis.Redis(port=private_redis.port)
    assert client.exists("p:sv:{s}")
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
    assert call("request", ["p:sv:{u}", "p:sv:{u}"], ["LS", *versioned, 10, ""])[0] == 1
    assert call("mark", [], [])[0]
    assert call("invalidate", ["p:tagv:{u}:t", "p:sv:{u}"], versioned) == 1
    assert call("delete", ["p:{u}:e", "p:v:{u}:e", "p:sv:{u}"], versioned) == 0
    assert (
        call("revocation_record", ["{u}:revoked", "p:sv:{u}"], [*versioned, 1000, "", 2, "1"]) == 1
    )
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
