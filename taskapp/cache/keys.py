"""The keys the cache derives from a caller's key or tag (entries, locks, versions, tag sets).

Every derived key keeps the hash tag of what it derives from, so on Redis Cluster an entry, its
lock, its version and the tag sets of its tags share one slot when the caller's key and tags share
a hash tag (``{u:42}:task:1`` with tag ``{u:42}:tasks``). A key without a hash tag gets one made
of the whole key, which hashes to the same slot as the plain key.
"""

from __future__ import annotations

import re

#: A ``{hash tag}`` segment of a key (what Redis Cluster hashes instead of the whole key).
HASH_TAG = re.compile(r"\{[^{}]+\}")


class Keys:
    """Builds the prefixed keys of one app."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.fill_channel = f"{prefix}ch:fill"
        self.invalidation_channel = f"{prefix}ch:inv"
        self.scope_channel = f"{prefix}ch:sv"  # scripts.SCOPE derives the same name in Lua
        self.sync_channel = f"{prefix}ch:sync"
        self.members = f"{prefix}members"
        self.stats = f"{prefix}stats"

    def entry(self, key: str) -> str:
        """The Redis key of a cached value."""
        if "\n" in key:
            raise ValueError("cache keys cannot contain newlines")
        return self.prefix + key

    def _derived(self, kind: str, full_key: str) -> str:
        """``prefix kind:key`` for an entry's prefixed key: the caller's key once (not the prefix
        twice) when it has a hash tag, else the whole prefixed key as the hash tag, so the
        derived key hashes to the entry's slot either way."""
        if HASH_TAG.search(full_key):
            return f"{self.prefix}{kind}:{self.strip(full_key)}"
        return f"{self.prefix}{kind}:{{{full_key}}}"

    def lock(self, full_key: str) -> str:
        """The fill lock of an entry."""
        return self._derived("lock", full_key)

    def version(self, full_key: str) -> str:
        """The entry's own version, bumped when it is deleted."""
        return self._derived("v", full_key)

    def write_version(self, full_key: str) -> str:
        """The version of the last write stored by write-through."""
        return self._derived("wv", full_key)

    def scope_version(self, full_key: str) -> str:
        """The version of an entry's scope (its hash tag, else the key itself), bumped by every
        change of an entry of the scope; scripts.SCOPE derives the same name in Lua."""
        open_at = full_key.find("{")
        close_at = full_key.find("}", open_at + 1) if open_at >= 0 else -1
        if close_at > open_at + 1:
            return f"{self.prefix}sv:{full_key[open_at : close_at + 1]}"
        return f"{self.prefix}sv:{{{full_key}}}"

    def ack(self, sync_id: str) -> str:
        """The list the members push their ids to when they have applied a change (coherence)."""
        return f"{self.prefix}ack:{sync_id}"

    def tag_set(self, tag: str) -> str:
        """The sorted set of the entries a tag holds, scored by their expiry."""
        return f"{self.prefix}tag:{tag}"

    def tag_version(self, tag: str) -> str:
        """The version of a tag, bumped when it is invalidated."""
        return f"{self.prefix}tagv:{tag}"

    def strip(self, full_key: str) -> str:
        """The caller's key of a prefixed key."""
        return full_key.removeprefix(self.prefix)
