"""The in-process layer: served only while the scope version it was read under is Redis's."""

from __future__ import annotations

from taskapp.cache import NO_VALUE, context
from tests.cache_helpers import bare_app, running


def _memory_hit(ext, key: str) -> bool:
    """Whether ``get(key)`` in a new request would be answered by this process's memory."""
    state = ext._state()
    full_key = state.keys.entry(key)
    request = context.RequestState.current()
    request.scopes.clear()
    return state.region._from_memory(full_key, request) is not None


def test_an_entry_read_from_redis_is_kept_and_served_from_memory(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix)
    with running(app, ext), app.test_request_context():
        ext.set("{s}:k", "v", ttl=30, tags=["{s}:t"])
        assert ext.get("{s}:k") == "v"
        assert _memory_hit(ext, "{s}:k")
        ext.set("k", "v", ttl=30)  # no hash tag: the key is its own scope
        assert ext.get("k") == "v"
        assert _memory_hit(ext, "k")


def test_a_change_in_another_process_is_seen_at_the_next_request(redis_url, key_prefix):
    reader, reader_ext = bare_app(redis_url, key_prefix)
    writer, writer_ext = bare_app(redis_url, key_prefix)  # another app: its own memory layer
    with running(reader, reader_ext), reader.test_request_context():
        reader_ext.set("{s}:k", "old", ttl=30, tags=["{s}:t"])
        assert reader_ext.get("{s}:k") == "old" and _memory_hit(reader_ext, "{s}:k")
        with writer.app_context():
            writer_ext.invalidate_tags("{s}:t")
            writer_ext.close()
        assert not _memory_hit(reader_ext, "{s}:k")
        assert reader_ext.get("{s}:k") is NO_VALUE


def test_an_entry_is_not_served_from_memory_after_redis_lost_its_versions(redis_url, key_prefix):
    """A FLUSHALL (or a restart, an eviction) loses the scope version; the next one made is a
    new value, never the one the memory entry was read under (a counter would start again at the
    same number)."""
    app, ext = bare_app(redis_url, key_prefix)
    with running(app, ext), app.test_request_context():
        ext.set("{s}:k", "v", ttl=30)
        assert ext.get("{s}:k") == "v" and _memory_hit(ext, "{s}:k")
        client = ext.client
        for key in client.scan_iter(match=key_prefix + "*"):
            client.delete(key)  # only this test's keys: the session's Redis is shared
        assert not _memory_hit(ext, "{s}:k")


def test_an_entry_with_a_tag_outside_its_scope_is_served_from_redis_only(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix)
    with running(app, ext), app.test_request_context():
        ext.set("{a}:k", "v", ttl=30, tags=["{b}:t"])  # invalidating {b}:t bumps {b}, not {a}
        assert ext.get("{a}:k") == "v"
        assert not _memory_hit(ext, "{a}:k")
        ext.invalidate_tags("{b}:t")
        assert ext.get("{a}:k") is NO_VALUE
