"""Guarantees across real processes: one fill, a killed lock holder, stale fills, memory layers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from taskapp.cache import NO_VALUE
from tests.cache_helpers import bare_app, running, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(*args: str) -> subprocess.Popen:
    """Start ``python -m tests.cache_child ARGS`` with JSON events on its stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cache_child", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints its threads' stacks
        stdin=subprocess.PIPE,  # a line on it releases a child held in its fetch
        stdout=subprocess.PIPE,
        text=True,
    )


def release(process: subprocess.Popen) -> None:
    """Let a child held in its fetch go on."""
    process.stdin.write("go\n")
    process.stdin.flush()


def next_event(process: subprocess.Popen, timeout: float = 30.0) -> dict:
    """The child's next event. A child silent for ``timeout`` seconds fails the test with the
    stacks of its threads in the captured stderr, instead of hanging until pytest's timeout."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        process.send_signal(signal.SIGABRT)
        process.wait(10)
        pytest.fail(f"{process.args[3:5]} sent no event for {timeout:.0f} s (stacks: stderr)")
    assert lines[0], f"child exited with {process.wait(5)}"
    return json.loads(lines[0])


def test_one_fill_for_many_threads_in_many_processes(redis_url, key_prefix):
    processes = [child("stampede", redis_url, key_prefix, "5", "6") for _ in range(4)]
    events = []
    for process in processes:
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        events += [json.loads(line) for line in out.splitlines()]
    assert [e["value"] for e in events] == ["v"] * 24
    assert redis.Redis.from_url(redis_url).get(key_prefix + "fetches") == b"1"


def test_a_lock_holder_killed_mid_fill_is_replaced_within_the_lock_ttl(redis_url, key_prefix):
    holder = child("hold-lock", redis_url, key_prefix, "1.0")
    try:
        assert next_event(holder)["event"] == "fetching"
        holder.kill()
        holder.wait(5)
        killed_at = time.monotonic()
        app, cache = bare_app(redis_url, key_prefix, CACHE_LOCK_TTL=1.0)
        with running(app, cache):
            calls = []
            assert cache.get_or_set("k", lambda: calls.append(1) or "v", ttl=30) == "v"
            waited = time.monotonic() - killed_at
    finally:
        holder.kill()
    assert calls == [1]
    assert waited < 1.0 + 0.5  # the lock's TTL, plus a retry slice


def test_a_slow_fill_in_another_process_never_outlives_a_write(redis_url, key_prefix):
    source = redis.Redis.from_url(redis_url)
    source.set(key_prefix + "source", "old")
    filler = child("slow-fill", redis_url, key_prefix)
    read = next_event(filler)
    assert read == {"t": read["t"], "event": "read", "value": "old"}
    app, cache = bare_app(redis_url, key_prefix)
    with running(app, cache):
        source.set(key_prefix + "source", "new")  # the write ...
        cache.invalidate_tags("t")  # ... and its invalidation, while the child still fetches
        release(filler)
        assert next_event(filler)["value"] == "old"
        filler.wait(5)
        assert cache.get("k") is NO_VALUE
        fresh = cache.get_or_set("k", lambda: source.get(key_prefix + "source").decode(), 30, ["t"])
        assert fresh == "new"


@pytest.mark.parametrize("change", ["invalidate", "overwrite"])
def test_a_change_reaches_another_process_memory_at_its_next_read(redis_url, key_prefix, change):
    """Another process's memory entry is checked against its scope version at each read (outside
    a request, every read asks Redis), so the change shows at its next read: well within the
    memory layer's lifetime (5 s), whatever the machine's load (reads are a millisecond apart;
    a loaded machine can leave a process unscheduled for tens of milliseconds)."""
    app, cache = bare_app(redis_url, key_prefix)
    with running(app, cache):
        cache.set("{s}:k", "old", ttl=30, tags=["{s}:t"])
        watcher = child("watch-l1", redis_url, key_prefix)
        try:
            assert next_event(watcher)["value"] == "old"
            invalidated_at = time.time()
            if change == "invalidate":
                cache.invalidate_tags("{s}:t")
            else:
                cache.set("{s}:k", "new", ttl=30, tags=["{s}:t"])
            changed = next_event(watcher)
        finally:
            watcher.kill()
    assert changed["event"] == "changed"
    assert changed["t"] - invalidated_at < 0.5


def test_one_refresher_per_key_across_processes(redis_url, key_prefix):
    # The expired entry stays at hand for 120 s, however long the children take to start (a
    # loaded machine took over 10 s, the default CACHE_STALE_TTL: then each child filled,
    # blocking on a refresh the parent releases only once all were served).
    app, cache = bare_app(redis_url, key_prefix, CACHE_STALE_TTL=120)
    with running(app, cache):
        cache.get_or_set("hot", lambda: "old", ttl=0.05)  # expired by the time a child reads it
    children = [child("refresh-ahead", redis_url, key_prefix) for _ in range(3)]
    raw = redis.Redis.from_url(redis_url)
    try:
        served = [next_event(process) for process in children]
        raw.set(key_prefix + "release", 1)  # every process served it while one refreshes
        for process in children:
            release(process)
            process.wait(15)
    finally:
        for process in children:
            process.kill()
    assert [event["value"] for event in served] == ["old"] * 3  # nobody waited for the refresh
    fetched = [json.loads(f) for f in raw.lrange(key_prefix + "fetched", 0, -1)]
    assert raw.get(key_prefix + "fetches") == b"1", (served, fetched)
    raw.close()


def test_a_refresh_asked_for_an_entry_another_refresher_replaced_reads_nothing(
    redis_url, key_prefix
):
    """What the test above races on, made certain: a reader saw the stale entry and asked for a
    refresh, which runs only after another app (another process) refreshed it. Holding the lock
    then, it finds the entry it was asked for replaced and reads nothing (it read the source a
    second time before)."""
    first, cache = bare_app(redis_url, key_prefix)
    second, other = bare_app(redis_url, key_prefix)
    with running(first, cache), running(second, other):
        cache.get_or_set("hot", lambda: "old", ttl=0.05)
        time.sleep(0.1)  # expired, kept as stale
        state = other._state()
        full_key = state.keys.entry("hot")
        seen = state.region.read(full_key, None)
        assert seen is not None and seen.value == "old"
        assert cache.get_or_set("hot", lambda: "new", ttl=30, refresh_ahead=True) == "old"
        wait_until(lambda: cache.get("hot") == "new")
        fetched = []
        with second.app_context():
            state.region._refresh_in_background(
                full_key, lambda: fetched.append(1) or "newer", 30, [], seen
            )
        wait_until(lambda: not state.region._refreshing)
        assert fetched == []
        assert other.get("hot") == "new"
