"""The cache's Redis Functions library (``library.lua``): loaded once per server, called by name.

The library is named after a digest of its file, and so is each of its functions (``request``
is called as ``request_<digest>``): two versions of the app on one Redis (a rolling deploy)
each call their own functions, and neither replaces the other's. A server that does not know
the library (restarted empty, a new node, ``FUNCTION FLUSH``) gets it loaded again by the first
call that misses it; on Redis Cluster it is loaded on every primary.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger("taskapp.cache")

SOURCE = Path(__file__).with_name("library.lua")
_HEADER = "#!lua name=taskapp\n"
_VERSION_LINE = "local VERSION = 'dev'"


class Library:
    """The library's code under the names of this version."""

    def __init__(self, source: str) -> None:
        if not source.startswith(_HEADER) or source.count(_VERSION_LINE) != 1:
            raise ValueError(
                f"{SOURCE.name} must start with {_HEADER.strip()!r} and hold {_VERSION_LINE!r} once"
            )
        self.version = hashlib.sha1(source.encode()).hexdigest()[:12]
        self.name = f"taskapp_{self.version}"
        self.code = f"#!lua name={self.name}\n" + source[len(_HEADER) :].replace(
            _VERSION_LINE, f"local VERSION = '{self.version}'"
        )

    def function(self, name: str) -> str:
        """The server's name of one of the library's functions."""
        return f"{name}_{self.version}"

    def load(self, client: Any) -> None:
        """Load the library where it is missing (every primary of a cluster); raises redis-py's
        errors (``NoPermissionError`` when the user may not run FUNCTION LOAD)."""
        nodes = client.get_primaries() if hasattr(client, "get_primaries") else [None]
        for node in nodes:
            options = {} if node is None else {"target_nodes": node}
            try:
                client.execute_command("FUNCTION", "LOAD", self.code, **options)
                log.info("cache functions loaded (library %s)", self.name)
            except redis.exceptions.ResponseError as exc:
                if "already exists" not in str(exc):
                    raise


LIBRARY = Library(SOURCE.read_text())


def missing(exc: BaseException) -> bool:
    """True for the error of a call to a function the server does not know."""
    return isinstance(exc, redis.exceptions.ResponseError) and "Function not found" in str(exc)


def call(
    execute: Callable[..., Any],
    load: Callable[[], None],
    name: str,
    keys: list[str],
    args: list[Any],
) -> Any:
    """FCALL a function of the library through ``execute`` (a client's or a connection's);
    when the server does not know it, ``load`` the library and call once more."""
    function = LIBRARY.function(name)
    try:
        return execute("FCALL", function, len(keys), *keys, *args)
    except redis.exceptions.ResponseError as exc:
        if not missing(exc):
            raise
    log.warning("cache functions missing on Redis (restarted empty or flushed): loading them")
    load()
    return execute("FCALL", function, len(keys), *keys, *args)
