"""The in-process layer: a read that raced an invalidation is not kept; off while its channel is lost."""

from __future__ import annotations

from taskapp.cache.l1 import LocalCache
from tests.cache_helpers import bare_app, running, wait_until


def test_a_read_that_raced_an_invalidation_is_not_kept():
    l1 = LocalCache(max_items=10, ttl=5)
    l1.connected = True
    generation = l1.generation  # a reader notes it, then reads Redis ...
    l1.discard(["k"])  # ... an invalidation of k arrives while that read is in flight ...
    l1.put("k", "old", generation, b"1")  # ... and the old value it read comes back
    assert l1.get("k", "sv") is None
    l1.put("k", "new", l1.generation, b"2")  # a read that began after it is kept
    assert l1.get("k", "sv") == ("new", b"2", None)


def test_an_entry_comes_with_the_last_version_announced_for_its_scope():
    l1 = LocalCache(max_items=10, ttl=5)
    l1.connected = True
    l1.put("k", "v", l1.generation, b"2")
    assert l1.get("k", "sv") == ("v", b"2", None)  # nothing announced since the layer began
    l1.announce({"sv": b"3", "other": b"9"})
    assert l1.get("k", "sv") == ("v", b"2", b"3")  # the caller sees the entry is behind
    l1.clear()  # a lost channel forgets entries and announcements together
    l1.put("k", "v", l1.generation, b"3")
    assert l1.get("k", "sv") == ("v", b"3", None)


def test_announcements_are_bounded_and_forgotten_with_the_entries():
    l1 = LocalCache(max_items=10, ttl=5)  # keeps at most 1000 announced scopes
    l1.connected = True
    l1.put("k", "v", l1.generation, b"1")
    generation = l1.generation
    l1.announce({f"sv{i}": b"1" for i in range(1001)})
    assert l1.get("k", "sv0") is None and len(l1) == 0
    assert l1.generation > generation  # a read in flight is not kept either


def test_the_layer_is_dropped_and_off_while_its_channel_is_lost(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix)
    with running(app, ext):
        wait_until(lambda: ext.local.active)  # subscribed
        ext.set("k", "v", ttl=30)  # its own invalidation message drops it from memory, then
        wait_until(lambda: ext.get("k") == "v" and len(ext.local) == 1)  # a read keeps it
        private_redis.pause()  # the channel goes silent: invalidations could be missed
        try:
            wait_until(lambda: not ext.local.active, timeout=5)
            assert len(ext.local) == 0
        finally:
            private_redis.resume()
        wait_until(lambda: ext.local.active, timeout=5)  # back once subscribed again
