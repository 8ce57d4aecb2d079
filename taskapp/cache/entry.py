"""The stored form of a cached value: a JSON header line, then the value's JSON."""

from __future__ import annotations

import json
import time
from typing import Any


class _NoValue:
    """The type of ``NO_VALUE``: a miss, distinct from a cached ``None``."""

    _instance: _NoValue | None = None

    def __new__(cls) -> _NoValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __bool__(self) -> bool:
        return False


NO_VALUE: Any = _NoValue()


def dumps(value: Any) -> bytes:
    """JSON of a value (never pickle: nothing read back from Redis can run code)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def stored_payload(stored: bytes) -> bytes:
    """The entry's bytes of a value as Redis stores it: after the versions it was stored under
    (see library.lua) and the empty line that ends them. For tools that read Redis
    directly; the library checks the versions before it returns an entry."""
    return stored.partition(b"\n\n")[2]


class Entry:
    """A decoded cache entry: the value's JSON bytes and what the cache knows about it."""

    __slots__ = ("expires_at", "fetch_seconds", "meta", "raw_value", "tags")

    def __init__(
        self,
        raw_value: bytes,
        expires_at: float,
        tags: list[str],
        fetch_seconds: float = 0.0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.raw_value = raw_value
        self.expires_at = expires_at  # wall-clock epoch seconds: entries outlive one process
        self.tags = tags
        self.fetch_seconds = fetch_seconds
        self.meta = meta or {}

    @property
    def value(self) -> Any:
        """The value, decoded afresh for each caller (callers may mutate what they get)."""
        return json.loads(self.raw_value)

    def is_fresh(self, now: float | None = None) -> bool:
        """True until the entry's time to live has passed (it may stay a while as stale)."""
        return (now if now is not None else time.time()) < self.expires_at

    def encode(self) -> bytes:
        """The bytes stored in Redis."""
        header = {"x": round(self.expires_at, 3), "t": self.tags, "d": round(self.fetch_seconds, 4)}
        if self.meta:
            header["m"] = self.meta
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.raw_value

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        """Parse stored bytes; raises ValueError when they are not an entry of this cache."""
        header_bytes, sep, raw_value = raw.partition(b"\n")
        if not sep:
            raise ValueError("not a cache entry")
        header = json.loads(header_bytes)
        return cls(raw_value, header["x"], header["t"], header.get("d", 0.0), header.get("m"))
