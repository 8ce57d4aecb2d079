"""A hit's admission with one BITFIELD (``taskapp/cache/scope_state.py``), on a private
redis-server whose command counts are this test's alone."""

from __future__ import annotations

import time

import pytest
import redis

from taskapp.cache.scope_state import MARK_AT, TOTAL_AT, UNTIL_AT, WINDOW, Window, slot_bits
from taskapp.extensions import cache
from tests.api import account, rate_limits

TASKS = "/api/v1/tasks"


@pytest.fixture
def hits(make_app, private_redis):
    """An app on a private Redis, a user with a task, and a raw client of that Redis."""

    def make(**config):
        app = make_app(REDIS_URL=f"redis://127.0.0.1:{private_redis.port}/0", **config)
        client = app.test_client()
        user_id, auth = account(client)
        status = client.post(TASKS, json={"title": "read often"}, headers=auth).status_code
        assert status == 201
        task = client.get(TASKS, headers=auth).get_json()["items"][0]
        path = f"{TASKS}/{task['id']}"
        raw = redis.Redis(port=private_redis.port)
        with app.app_context():
            state = cache.keys.scope_version(cache.keys.entry(f"{{u:{user_id}}}:x"))
        return client, auth, path, raw, state

    return make


def commands(raw) -> dict[str, int]:
    stats = raw.info("commandstats")
    return {
        name[8:]: value["calls"]
        for name, value in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }


def get(client, path, auth):
    response = client.get(path, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response


@pytest.mark.parametrize("limit", [600, 0], ids=["rate-limit-on", "rate-limit-off"])
def test_a_hit_from_memory_runs_one_bitfield_and_no_function(hits, limit):
    client, auth, path, raw, _ = hits(RATE_LIMIT_PER_MINUTE=limit)
    for _ in range(3):  # filled, kept in memory, the token's verdict learned
        get(client, path, auth)
    raw.config_resetstat()
    for _ in range(20):
        assert get(client, path, auth).headers["X-Cache"] == "HIT"
    assert commands(raw) == {"bitfield" if limit else "bitfield_ro": 20}


def test_a_hit_counts_itself_in_the_users_window(hits):
    client, auth, path, raw, state = hits(RATE_LIMIT_PER_MINUTE=600)
    for _ in range(3):
        get(client, path, auth)
    before = Window.decode(raw.get(state)).total
    remaining = [rate_limits(get(client, path, auth).headers)["user"]["r"] for _ in range(5)]
    assert remaining == [600 - before - n for n in range(1, 6)]
    assert Window.decode(raw.get(state)).total == before + 5


def test_a_hit_takes_the_count_of_a_second_gone_out_of_its_slot(hits):
    client, auth, path, raw, state = hits(RATE_LIMIT_PER_MINUTE=600)
    for _ in range(3):
        get(client, path, auth)
    # The slots of this second and the next two hold counts of seconds 61 s before them.
    total = Window.decode(raw.get(state)).total
    now = raw.time()[0]
    for second in range(now, now + 3):
        stamp_at, count_at = slot_bits(second)
        raw.bitfield(state).set("u32", stamp_at, second - WINDOW).set("u32", count_at, 50).execute()
    raw.bitfield(state).incrby("u32", TOTAL_AT, 150).execute()
    raw.config_resetstat()
    get(client, path, auth)
    assert commands(raw) == {"bitfield": 2}  # the hit's, and the one that took the 50 out
    window = Window.decode(raw.get(state))
    assert [count for stamp, count in window.slots if stamp >= now] == [1]  # its own second's
    assert window.total == total + 150 - 50 + 1


def test_a_hit_renews_the_state_before_it_could_lose_a_count(hits):
    client, auth, path, raw, state = hits(RATE_LIMIT_PER_MINUTE=600)
    for _ in range(3):
        get(client, path, auth)
    raw.pexpire(state, 20_000)
    raw.bitfield(state).set("u32", UNTIL_AT, raw.time()[0] + 20).execute()
    get(client, path, auth)
    assert raw.pttl(state) > 200_000
    assert Window.decode(raw.get(state)).until > raw.time()[0] + 200


def test_a_state_made_by_another_server_run_sends_the_hit_to_the_library(hits):
    """A version from another run (a restore from disk, say) is never honoured: the library
    makes it anew, so the in-process layer's entry is checked against Redis's again."""
    client, auth, path, raw, state = hits(RATE_LIMIT_PER_MINUTE=600)
    for _ in range(3):
        get(client, path, auth)
    mark = Window.decode(raw.get(state)).version[0]
    raw.bitfield(state).set("i64", MARK_AT, mark - 1).execute()
    raw.config_resetstat()
    get(client, path, auth)
    assert commands(raw).get("fcall", 0) >= 1
    made = Window.decode(raw.get(state)).version
    assert made[0] == mark  # made anew by this run
    raw.config_resetstat()
    get(client, path, auth)
    assert commands(raw) == {"bitfield": 1}


def test_a_full_redis_still_admits_hits_through_the_library(hits):
    client, auth, path, raw, state = hits(RATE_LIMIT_PER_MINUTE=600)
    for _ in range(3):
        get(client, path, auth)
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] // 2)  # full: writes refused
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        raw.bitfield(state).incrby("u32", TOTAL_AT, 0).execute()
    before = Window.decode(raw.get(state)).total
    raw.config_resetstat()
    for _ in range(3):
        time.sleep(0.4)  # within and past the pause a refusal for memory starts
        assert get(client, path, auth).headers["X-Cache"] == "HIT"
    stats = raw.info("commandstats")
    assert stats["cmdstat_bitfield"]["rejected_calls"] >= 1  # the hit's, refused for memory
    assert stats["cmdstat_fcall"]["calls"] == 3  # each admitted by the library instead
    assert Window.decode(raw.get(state)).total == before + 3  # each counted once
