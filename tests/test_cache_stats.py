"""Shared cache statistics: in-process recording, flushing into a Redis hash, key families."""

from __future__ import annotations

import os
import threading
import time

import pytest
import redis

from taskapp.cache import stats


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.parametrize(
    "key, family",
    [
        ("{u:abc}:task:123", "task"),
        ("{u:abc}:http:ff", "http"),
        ("{u:abc}:tasks:1:10:any", "tasks"),
        ("{u:abc}:stats", "stats"),
        ("lock:{u:abc}:task:1", "lock"),
        ("tag:{u:abc}:collection", "tag"),
        ("v:{taskapp:plain}", "v"),
        ("login:email:ff", "login"),
        ("plain", "plain"),
        ("{u:abc}", "other"),
    ],
)
def test_family_is_the_first_segment_outside_hash_tags(key, family):
    assert stats.family(key) == family


def test_escape_glob_matches_the_text_literally():
    assert stats.escape_glob("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


def test_flush_sums_the_counts_of_every_recorder(client, key_prefix):
    hash_key = key_prefix + "stats"
    first, second = stats.StatsRecorder(), stats.StatsRecorder()
    for _ in range(3):
        first.record(stats.REDIS_HIT, "task")
    second.record(stats.REDIS_HIT, "task")
    second.record(stats.ERROR)
    assert first.flush(client, hash_key) == 1
    assert second.flush(client, hash_key) == 2
    assert first.pending() == {} and second.pending() == {}
    counts = stats.read(client, hash_key)
    assert counts == {"redis.hit": {"task": 4}, "error": {"": 1}}
    assert stats.total(counts, stats.REDIS_HIT) == 4
    assert stats.families(counts) == ["task"]


def test_record_is_thread_safe():
    recorder = stats.StatsRecorder()

    def hammer():
        for _ in range(5000):
            recorder.record(stats.L1_HIT, "task")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert recorder.pending() == {(stats.L1_HIT, "task"): 40000}


def test_counts_survive_a_failed_flush(key_prefix):
    recorder = stats.StatsRecorder()
    recorder.record(stats.REDIS_MISS, "task")
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        recorder.flush(dead, key_prefix + "stats")
    assert recorder.pending() == {(stats.REDIS_MISS, "task"): 1}


def test_flush_due_after_the_interval():
    recorder = stats.StatsRecorder()
    assert not recorder.flush_due(60)
    assert recorder.flush_due(0)


def test_gauges_of_silent_processes_are_skipped_and_pruned(client, key_prefix):
    hash_key = key_prefix + "stats"
    stats.StatsRecorder().flush(client, hash_key, {stats.L1_SIZE: 12})
    client.hset(hash_key, "g|l1.size|gone:1", f"99 {time.time() - 3600:.0f}")
    gauges = stats.read_gauges(client, hash_key)
    assert list(gauges[stats.L1_SIZE].values()) == [12.0]
    assert stats.prune_gauges(client, hash_key) == 1
    assert not client.hexists(hash_key, "g|l1.size|gone:1")
    assert stats.read(client, hash_key) == {}  # gauges are not counts


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_no_pending_counts():
    recorder = stats.StatsRecorder()
    recorder.record(stats.HTTP_HIT, "http")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what it would flush, then leave at once
        os.write(write_end, str(len(recorder.pending())).encode())
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 16) == b"0"
    os.waitpid(pid, 0)
    os.close(read_end)
    assert recorder.pending() == {(stats.HTTP_HIT, "http"): 1}


def test_keys_by_family_counts_only_the_prefix(client, key_prefix):
    client.set(key_prefix + "{u:a}:task:1", b"x")
    client.set(key_prefix + "{u:a}:task:2", b"x")
    client.set(key_prefix + "tag:{u:a}:collection", b"x")
    assert stats.KeysByFamily(client, key_prefix).count() == {"task": 2, "tag": 1}


def test_hit_ratio():
    assert stats.hit_ratio(3, 1) == 0.75
    assert stats.hit_ratio(0, 0) is None
