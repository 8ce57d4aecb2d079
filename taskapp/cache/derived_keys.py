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
        """The entry's own version, bumped when it is deleted or overwritten."""
        return self._derived("v", full_key)

    def list_mark(self, full_key: str) -> str:
        """The version a capped list was last made or extended under (see lists.py)."""
        return self._derived("lm", full_key)

    def scope_version(self, full_key: str) -> str:
        """The version of a key's scope (its hash tag, else the key itself), bumped by every
        change of an entry of the scope: the in-process layer's check (see region.py)."""
        open_at = full_key.find("{")
        close_at = full_key.find("}", open_at + 1) if open_at >= 0 else -1
        if close_at > open_at + 1:
            return f"{self.prefix}sv:{full_key[open_at : close_at + 1]}"
        return f"{self.prefix}sv:{{{full_key}}}"

    def tag_version(self, tag: str) -> str:
        """The version of a tag, bumped when it is invalidated (library.lua derives the
        same name in Lua from the tags an entry records)."""
        if "\n" in tag:
            raise ValueError("cache tags cannot contain newlines")
        return f"{self.prefix}tagv:{tag}"

    def strip(self, full_key: str) -> str:
        """The caller's key of a prefixed key."""
        return full_key.removeprefix(self.prefix)
