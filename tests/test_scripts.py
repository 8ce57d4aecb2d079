"""``scripts.chain``: scripts composed as code, run by a real redis-server in one call."""

from __future__ import annotations

import os

import pytest
import redis

from taskapp.auth.revocation import CHECK
from taskapp.cache import scripts
from taskapp.ratelimit import SLIDING_WINDOW

ANSWER = "return {1, KEYS[1], ARGV[1], #KEYS, #ARGV}"  # what a script sees of its call
REFUSE = "return {0, 'refused'}"


@pytest.fixture
def run(redis_url, key_prefix):
    client = redis.Redis.from_url(redis_url)

    def run(call: scripts.Call):
        source, keys, args = call
        return client.eval(source, len(keys), *(key_prefix + k for k in keys), *args)

    yield run
    client.close()


def versioned(*args):
    return ["p:", os.urandom(8).hex(), 60_000, *args]


def test_each_script_sees_only_its_own_keys_and_arguments(run, key_prefix):
    answer = run(scripts.chain((ANSWER, ["a", "b"], ["x"]), (ANSWER, ["c"], ["y", "z"])))
    assert answer == [
        1,
        [1, f"{key_prefix}a".encode(), b"x", 2, 1],
        [1, f"{key_prefix}c".encode(), b"y", 1, 2],
    ]


def test_a_chain_stops_at_the_first_script_that_refuses(run, key_prefix):
    answer = run(scripts.chain((ANSWER, ["a"], ["x"]), (REFUSE, [], []), (ANSWER, ["b"], ["y"])))
    assert answer == [0, [1, f"{key_prefix}a".encode(), b"x", 1, 1], [0, b"refused"]]


def test_a_chain_is_a_script_and_chains_again(run):
    inner = scripts.chain((ANSWER, ["a"], ["x"]), (REFUSE, [], []))
    answer = run(scripts.chain(inner, (ANSWER, ["b"], ["y"])))
    assert answer[0] == 0 and answer[1][0] == 0 and len(answer) == 2  # the refusal went up
    passing = scripts.chain((ANSWER, ["a"], ["x"]))
    assert run(scripts.chain(passing, (ANSWER, ["b"], ["y"])))[0] == 1


def test_versioned_scripts_share_one_set_of_version_arguments(run, key_prefix):
    """Two scripts that start with VERSIONS get the same prefix, nonce and ttl as their
    ARGV[1 .. 3] and their own arguments after them; the arguments are sent once."""
    sees = scripts.VERSIONS + "return {ARGV[1], ARGV[3], ARGV[4], #ARGV, current(KEYS[1])}"
    source, keys, args = scripts.chain(
        (sees, ["v1"], versioned("own")), (SLIDING_WINDOW, ["w"], [60_000, 5, "n"])
    )
    assert args.count("p:") == 1
    answer = run((source, keys, args))
    assert answer[1][:4] == [b"p:", b"60000", b"own", 4]
    assert answer[1][4] == run((scripts.SCOPE_READ, ["v1"], versioned()))  # made by the chain
    assert answer[2][:2] == [1, 1]


def test_preludes_run_once_however_many_scripts_use_them():
    """The run id is asked once per call (INFO server costs about 10 µs of Redis time)."""
    check = (CHECK, ["{u:1}:revoked"], ["sid", 0])
    lookup = (scripts.SCOPE_READ, ["{u:1}:sv"], versioned())
    source, _, _ = scripts.chain(scripts.chain(check, (SLIDING_WINDOW, ["w"], [1, 2, 3])), lookup)
    assert source.count("'INFO'") == 1
    assert source.count("local function current(") == 1
