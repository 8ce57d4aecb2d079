"""Write-behind on a Redis Stream: ordered, at-least-once, idempotent, surviving a killed flusher."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
import redis

from taskapp.cache.writebehind import (
    MAX_ATTEMPTS,
    VERSION_MARK_TTL_MS,
    SourceUnavailable,
    WriteBehindQueue,
)
from tests.cache_helpers import wait_until
from tests.test_cache_processes import child, next_event


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def write_behind(raw, key_prefix):
    return WriteBehindQueue(raw, key_prefix, flush_ms=100, claim_idle_ms=300)


def test_a_change_is_pending_until_flushed_then_applied(write_behind):
    source = {}
    write_behind.ensure_group()
    state = write_behind.stage("o1", "o1", {"title": "a", "version": 3}, {"title": "b"})
    assert state == {"title": "b", "version": 4}
    assert write_behind.pending("o1") == state
    assert write_behind.flush_once(lambda i, s: source.__setitem__(i, s), "c1", block_ms=10) == 1
    assert source == {"o1": {"title": "b", "version": 4}}
    assert write_behind.pending("o1") is None
    assert write_behind.client.xlen(write_behind.stream) == 0


def test_concurrent_changes_of_one_object_are_merged_not_lost(write_behind):
    write_behind.ensure_group()

    def change(field):
        write_behind.stage("o", "o", {"a": 0, "b": 0, "version": 0}, {field: 1})

    threads = [threading.Thread(target=change, args=(f,)) for f in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert write_behind.pending("o") == {"a": 1, "b": 1, "version": 2}


def test_a_batch_applies_only_the_newest_state_of_each_object(write_behind):
    applied = []
    write_behind.ensure_group()
    for n in range(5):
        write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": n})
    write_behind.flush_once(lambda i, s: applied.append(s), "c1", block_ms=10)
    assert applied == [{"n": 4, "version": 5}]


def test_every_change_reaches_the_database_after_a_flusher_is_killed(
    write_behind, redis_url, key_prefix, tmp_path
):
    path = tmp_path / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE objs (id TEXT PRIMARY KEY, version INTEGER, state TEXT)")
    write_behind.ensure_group()
    expected = {}
    for round_ in range(8):
        for i in range(10):
            expected[f"o{i}"] = write_behind.stage(
                f"o{i}", f"o{i}", {"n": -1, "version": 0}, {"n": round_, f"f{round_}": i}
            )
    first = child("flusher", redis_url, key_prefix, "5", str(path), "1")
    try:
        assert next_event(first)["event"] == "applied"
        first.kill()  # SIGKILL in the middle of its batch: nothing of that batch is acknowledged
        first.wait(5)
    finally:
        first.kill()
    assert write_behind.client.xpending(write_behind.stream, write_behind.group)["pending"] > 0
    second = child("flusher", redis_url, key_prefix, "5", str(path), "2")
    try:
        wait_until(lambda: write_behind.client.xlen(write_behind.stream) == 0, timeout=15)
    finally:
        second.kill()
    with sqlite3.connect(path) as db:
        rows = {i: json.loads(s) for i, s in db.execute("SELECT id, state FROM objs")}
    assert rows == expected
    assert all(write_behind.pending(f"o{i}") is None for i in range(10))


def test_a_change_read_before_a_flush_is_refused_so_it_is_read_again(write_behind):
    write_behind.ensure_group()
    base = {"a": 0, "b": 0, "version": 1}  # what a second writer read
    write_behind.stage("o", "o", base, {"a": 1})
    write_behind.flush_once(lambda i, s: None, "c1", block_ms=10)  # applied: pending dropped
    assert write_behind.stage("o", "o", base, {"b": 1}) is None  # its view predates version 2
    fresh = {"a": 1, "b": 0, "version": 2}
    assert write_behind.stage("o", "o", fresh, {"b": 1}) == {"a": 1, "b": 1, "version": 3}


@pytest.mark.parametrize("lease_ms", [300, 1000], ids=["lease-as-claim-idle", "lease-longer"])
def test_the_flusher_survives_an_unavailable_source_and_counts_its_restarts(
    raw, key_prefix, caplog, lease_ms
):
    """After the source's outage the object's lease runs out by itself; the entry, claimed
    again meanwhile, finds the lease still held: that is no batch going through (a second
    "restarting" line was logged when the lease outlived the claim)."""
    from tests.api import metric

    write_behind = WriteBehindQueue(
        raw, key_prefix, flush_ms=100, claim_idle_ms=300, apply_lease_ms=lease_ms
    )
    write_behind.ensure_group()
    write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1})
    applied, outages = [], [SourceUnavailable("primary down"), SourceUnavailable("still down")]

    def apply(object_id, state):
        if outages:
            raise outages.pop(0)
        applied.append(state)

    before = metric("taskapp_write_behind_restarts_total")
    stop = threading.Event()
    flusher = threading.Thread(target=write_behind.run, args=(apply, stop, "c1"))
    flusher.start()
    try:
        wait_until(lambda: write_behind.client.xlen(write_behind.stream) == 0, timeout=10)
    finally:
        stop.set()
        flusher.join(5)
    assert applied == [{"n": 1, "version": 1}]
    assert metric("taskapp_write_behind_restarts_total") - before == 2
    began = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert len(began) == 1  # one line per failure episode, not one per attempt
    assert write_behind.client.xlen(write_behind.dead_letters) == 0  # an outage counts no try


def test_a_change_that_keeps_failing_goes_to_the_dead_letters_without_holding_up_its_batch(
    write_behind,
):
    from tests.api import metric

    write_behind.ensure_group()
    write_behind.claim_idle_ms = 0  # retry the failed change at once (XAUTOCLAIM)
    for name in ("good1", "bad", "good2"):
        write_behind.stage(name, name, {"n": 0, "version": 0}, {"n": 1})
    applied, tries = [], []

    def apply(object_id, state):
        if object_id == "bad":  # a document the source refuses every time
            tries.append(state["version"])
            raise ValueError("document refused")
        applied.append(object_id)

    before = metric("taskapp_write_behind_dead_letters_total")
    assert write_behind.flush_once(apply, "c1", block_ms=10) == 3
    assert applied == ["good1", "good2"]  # the others of its batch went through at once
    assert write_behind.pending("good1") is None and write_behind.pending("bad") is not None
    write_behind.stage("good1", "good1", {"n": 1, "version": 1}, {"n": 2})  # still flows
    for _ in range(MAX_ATTEMPTS + 2):
        write_behind.flush_once(apply, "c1", block_ms=10)
    assert applied == ["good1", "good2", "good1"]
    assert len(tries) == MAX_ATTEMPTS  # a bounded number of tries, then no more
    assert write_behind.client.xlen(write_behind.stream) == 0
    assert write_behind.pending("bad") is None  # readers see what the source has
    assert metric("taskapp_write_behind_dead_letters_total") - before == 1
    status = write_behind.status()
    assert status["pending"] == 0
    assert status["dead_letters"] == 1
    (dead,) = status["newest_dead_letters"]
    assert dead["fields"]["id"] == "bad"
    assert dead["fields"]["attempts"] == str(MAX_ATTEMPTS)
    assert dead["fields"]["error"] == "ValueError: document refused"
    assert json.loads(dead["fields"]["state"]) == {"n": 1, "version": 1}


def test_an_unreadable_entry_goes_to_the_dead_letters_at_once(write_behind):
    write_behind.ensure_group()
    write_behind.client.xadd(write_behind.stream, {"id": "o", "state": "{not json"})
    write_behind.stage("p", "p", {"n": 0, "version": 0}, {"n": 1})
    applied = []
    assert write_behind.flush_once(lambda i, s: applied.append(i), "c1", block_ms=10) == 2
    assert applied == ["p"]
    assert write_behind.client.xlen(write_behind.stream) == 0
    (dead,) = write_behind.status()["newest_dead_letters"]
    assert dead["fields"]["error"].startswith("unreadable entry")


def test_status_forgets_dead_consumers_and_has_no_oldest_pending_when_none_is(write_behind):
    from tests.cache_helpers import wait_until

    client = write_behind.client
    write_behind.ensure_group()
    write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1})
    client.xreadgroup(write_behind.group, "busy", {write_behind.stream: ">"}, count=1)
    client.xgroup_createconsumer(write_behind.stream, write_behind.group, "gone")
    write_behind.dead_consumer_ms = 50

    def idle(name):
        consumers = client.xinfo_consumers(write_behind.stream, write_behind.group)
        return next(c["idle"] for c in consumers if c["name"].decode() == name)

    wait_until(lambda: idle("gone") > 50 and idle("busy") > 50)
    status = write_behind.status()
    assert [c["name"] for c in status["consumers"]] == ["busy"]  # it still holds a change
    assert status["oldest_pending_ms"] is not None
    write_behind.claim_idle_ms = 0  # "busy" is taken for dead: its change is claimed, applied
    assert write_behind.flush_once(lambda i, s: None, "busy", block_ms=10) == 1
    status = write_behind.status()
    assert status["pending"] == 0
    assert status["oldest_pending_ms"] is None


def test_each_objects_changes_are_applied_in_the_order_they_were_staged(write_behind):
    write_behind.ensure_group()
    applied: dict[str, list[int]] = {}
    source: dict[str, dict] = {}  # what each object is, as a reader would find it
    for round_ in range(6):
        for step in range(2):  # two changes of each object in each batch, interleaved
            for i in range(round_ % 3 + 1):  # batches of one to three objects
                base = source.get(f"o{i}", {"n": 0, "version": 0})
                change = {"n": round_, "step": step}
                source[f"o{i}"] = write_behind.stage(f"o{i}", f"o{i}", base, change)
        write_behind.flush_once(
            lambda i, s: applied.setdefault(i, []).append(s["version"]), "c1", block_ms=10
        )
    assert {i: versions[-1] for i, versions in applied.items()} == {
        i: state["version"] for i, state in source.items()
    }
    assert all(versions == sorted(set(versions)) for versions in applied.values())


def test_an_object_has_one_entry_queued_however_many_changes_it_has(write_behind):
    write_behind.ensure_group()
    for n in range(5):
        write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": n})
    write_behind.stage("p", "p", {"n": 0, "version": 0}, {"n": 1})
    assert write_behind.client.xlen(write_behind.stream) == 2


def test_a_change_staged_during_an_apply_is_applied_on_the_next_round(write_behind):
    write_behind.ensure_group()
    write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1})
    applied = []

    def apply(object_id, state):
        applied.append(state["version"])
        if len(applied) == 1:  # a change arrives while the first state is being applied
            write_behind.stage("o", "o", state, {"n": 2})

    assert write_behind.flush_once(apply, "c1", block_ms=10) == 1
    assert write_behind.pending("o") == {"n": 2, "version": 2}  # not dropped: newer than applied
    assert write_behind.client.xlen(write_behind.stream) == 1  # queued again
    assert write_behind.flush_once(apply, "c1", block_ms=10) == 1
    assert applied == [1, 2]
    assert write_behind.pending("o") is None
    assert write_behind.client.xlen(write_behind.stream) == 0


def test_two_flushers_never_apply_one_object_at_once(write_behind, raw, key_prefix):
    """Flusher A is slow to apply; flusher B takes A for dead (claim idle 0) and claims its
    entry: B must leave the object alone while A holds it, and A's settling (a change came
    meanwhile) queues the newer state, which B then applies."""
    other = WriteBehindQueue(raw, key_prefix, flush_ms=100, claim_idle_ms=0, apply_lease_ms=10_000)
    write_behind.ensure_group()
    write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1})
    inside, leave = threading.Event(), threading.Event()
    applying, most, applied = [0], [0], []
    lock = threading.Lock()

    def apply(object_id, state):
        with lock:
            applying[0] += 1
            most[0] = max(most[0], applying[0])
        if not inside.is_set():
            inside.set()
            assert leave.wait(10)
        applied.append(state["version"])
        with lock:
            applying[0] -= 1

    slow = threading.Thread(target=write_behind.flush_once, args=(apply, "a"), daemon=True)
    slow.start()
    assert inside.wait(10)
    write_behind.stage("o", "o", {"n": 1, "version": 1}, {"n": 2})  # merged, nothing queued
    assert other.flush_once(apply, "b", block_ms=10) == 1  # A's entry, claimed: left alone
    assert applied == []
    leave.set()
    slow.join(10)
    assert applied == [1]
    wait_until(lambda: other.flush_once(apply, "b", block_ms=10) and applied == [1, 2])
    assert most[0] == 1
    assert write_behind.pending("o") is None
    assert write_behind.client.xlen(write_behind.stream) == 0


def test_an_object_whose_flusher_died_mid_apply_is_applied_once_its_lease_runs_out(raw, key_prefix):
    dead = WriteBehindQueue(raw, key_prefix, flush_ms=100, claim_idle_ms=0, apply_lease_ms=300)
    dead.ensure_group()
    dead.stage("o", "o", {"n": 0, "version": 0}, {"n": 1})
    dead.client.xreadgroup(dead.group, "dead", {dead.stream: ">"}, count=1)
    assert dead._take(keys=[dead.pending_key("o"), dead.lease_key("o")], args=["gone", 300])
    applied = []  # "dead" took the lease and the entry, and died before it applied anything
    assert dead.flush_once(lambda i, s: applied.append(s), "live", block_ms=10) == 1
    assert applied == []  # held by the dead flusher's lease
    wait_until(
        lambda: dead.flush_once(lambda i, s: applied.append(s), "live", block_ms=10) and applied
    )
    assert applied == [{"n": 1, "version": 1}]
    assert dead.pending("o") is None
    assert dead.client.exists(dead.lease_key("o")) == 0


def test_a_change_over_a_view_read_longer_ago_than_the_marker_lives_is_refused(write_behind):
    write_behind.ensure_group()
    now = int(time.time() * 1000)
    old = now - VERSION_MARK_TTL_MS - 1000  # its marker may have expired since
    assert write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1}, read_at_ms=old) is None
    assert write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": 1}, read_at_ms=now)
    # With a pending state the caller's view is not used: nothing to refuse.
    assert write_behind.stage("o", "o", {"n": 0, "version": 0}, {"m": 1}, read_at_ms=old) == {
        "n": 1,
        "m": 1,
        "version": 2,
    }


def test_a_newer_change_of_a_dead_lettered_object_gets_tries_of_its_own(write_behind):
    write_behind.ensure_group()
    write_behind.claim_idle_ms = 0  # retry the failed change at once (XAUTOCLAIM)
    write_behind.stage("o", "o", {"n": 0, "version": 0}, {"n": "bad"})
    applied = []

    def apply(object_id, state):
        if state["n"] == "bad":
            if len(tried) == MAX_ATTEMPTS - 1:  # a good change comes during the last try
                write_behind.stage("o", "o", state, {"n": 2})
            tried.append(state["version"])
            raise ValueError("document refused")
        applied.append(state)

    tried = []
    for _ in range(MAX_ATTEMPTS):
        write_behind.flush_once(apply, "c1", block_ms=10)
    assert len(tried) == MAX_ATTEMPTS
    assert write_behind.client.xlen(write_behind.dead_letters) == 1
    write_behind.flush_once(apply, "c1", block_ms=10)
    assert applied == [{"n": 2, "version": 2}]
    assert write_behind.pending("o") is None
    assert write_behind.client.xlen(write_behind.stream) == 0


def test_a_redis_that_may_evict_any_key_is_volatile(durable_redis, key_prefix):
    client = redis.Redis(port=durable_redis.port)
    try:
        assert (
            WriteBehindQueue(client, key_prefix, flush_ms=100, claim_idle_ms=300).volatile() is None
        )
        client.config_set("maxmemory-policy", "allkeys-lru")
        queue = WriteBehindQueue(client, key_prefix, flush_ms=100, claim_idle_ms=300)
        assert queue.volatile() == "maxmemory-policy allkeys-lru"
        client.config_set("maxmemory-policy", "volatile-lru")  # never evicts the queue
        assert (
            WriteBehindQueue(client, key_prefix, flush_ms=100, claim_idle_ms=300).volatile() is None
        )
    finally:
        client.close()
