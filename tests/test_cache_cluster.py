"""The cache on a real 3-master Redis Cluster: hash tags keep every atomic operation in one slot."""

from __future__ import annotations

import threading
import time

import pytest
from redis.crc import key_slot

from taskapp.cache import NO_VALUE
from tests.cache_helpers import bare_app, running, wait_until


@pytest.fixture
def app_cache(redis_cluster, key_prefix):
    app, ext = bare_app(redis_cluster.url, key_prefix, REDIS_CLUSTER=True)
    with running(app, ext):
        yield app, ext
        for key in ext.client.scan_iter(match=key_prefix + "*"):
            ext.client.delete(key)


@pytest.fixture
def cache(app_cache):
    return app_cache[1]


def test_an_entry_its_lock_version_and_tags_share_one_slot(cache):
    keys = cache.keys
    full = keys.entry("{u:1}:task:9")
    slots = {
        key_slot(k.encode())
        for k in (
            full,
            keys.lock(full),
            keys.version(full),
            keys.list_mark(full),
            keys.scope_version(full),
            keys.tag_version("{u:1}:tasks"),
            keys.scope_version(keys.tag_version("{u:1}:tasks")),
        )
    }
    assert len(slots) == 1


def test_set_get_and_invalidate_on_a_cluster(cache):
    for user in range(6):  # users spread over the masters
        cache.set(f"{{u:{user}}}:a", user, ttl=10, tags=[f"{{u:{user}}}:all"])
    assert cache.invalidate_tags("{u:3}:all") == 1
    assert cache.get("{u:3}:a") is NO_VALUE
    assert cache.get("{u:4}:a") == 4


def test_delete_of_keys_in_many_slots(cache):
    names = [f"plain-{i}" for i in range(10)]
    for name in names:
        cache.set(name, 1, ttl=10)
    assert cache.delete(*names) == 10
    assert all(cache.get(name) is NO_VALUE for name in names)


def test_a_tag_in_another_slot_than_its_key_is_refused_with_a_clear_error(cache):
    with pytest.raises(ValueError, match="hash slot"):
        cache.set("{u:1}:k", 1, ttl=10, tags=["{u:2}:all"])


def test_one_fill_and_a_refused_stale_fill_on_a_cluster(app_cache):
    app, cache = app_cache
    source = ["old"]
    calls = []
    started = threading.Event()

    def fetch():
        value = source[0]  # what the database said when the read began
        calls.append(value)
        started.set()
        time.sleep(0.3)
        return value

    def reader():
        with app.app_context():
            cache.get_or_set("{u:1}:k", fetch, ttl=10, tags=["{u:1}:all"])

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    assert started.wait(2)
    source[0] = "new"  # a write, then its invalidation, while the first fill is in flight
    cache.invalidate_tags("{u:1}:all")
    for t in threads:
        t.join()
    # The refused fill wakes the waiters; one of them fills again, from the new data.
    assert calls == ["old", "new"]
    assert cache.get("{u:1}:k") == "new"


def test_memory_layer_is_invalidated_through_cluster_pubsub(cache):
    wait_until(lambda: cache.local.active)
    cache.set("{u:1}:k", "old", ttl=10, tags=["{u:1}:all"])
    # Our own overwrite message may drop the entry once more when it comes back: read until kept.
    wait_until(lambda: cache.get("{u:1}:k") == "old" and len(cache.local) == 1)
    cache.invalidate_tags("{u:1}:all")
    assert cache.get("{u:1}:k") is NO_VALUE


def test_write_through_and_lists_on_a_cluster(cache):
    lease = cache.write_lease("{u:1}:t")
    assert cache.write_through(
        "{u:1}:t", {"v": 1}, lease, ttl=10, tags=["{u:1}:t"], invalidate=["{u:1}:all"]
    )
    assert cache.get("{u:1}:t") == {"v": 1}
    assert cache.list_get("{u:1}:feed", 5, lambda: [1, 2], maxlen=5, ttl=10) == [1, 2]
    cache.list_push("{u:1}:feed", 0, maxlen=5)
    assert cache.list_get("{u:1}:feed", 5, list, maxlen=5, ttl=10) == [0, 1, 2]


def test_held_locks_on_every_master_are_renewed_past_their_ttl(redis_cluster, key_prefix):
    app, ext = bare_app(redis_cluster.url, key_prefix, REDIS_CLUSTER=True, CACHE_LOCK_TTL=0.3)
    with running(app, ext):
        lock = ext._state().lock
        full_keys = [ext.keys.entry(f"{{u:{user}}}:k") for user in range(6)]  # every master
        tokens = [lock.acquire(full_key) for full_key in full_keys]
        assert all(tokens)
        time.sleep(0.7)  # over twice the TTL: alive only if renewed
        owners = [ext.client.get(ext.keys.lock(full_key)) for full_key in full_keys]
        assert owners == [token.encode() for token in tokens]
        for full_key, token in zip(full_keys, tokens, strict=True):
            lock.release(full_key, token)
