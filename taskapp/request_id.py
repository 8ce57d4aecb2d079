"""The request id: the client's ``X-Request-ID`` when well-formed, else one made here; sent back
on every response and carried by every log line of the request (``taskapp.logs``).

``RequestIds`` is the outermost layer of the app (behind ProxyFix only), so every answer gets
the header: the fast path's hits, Flask's views, errors, 204s and 304s alike.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

HEADER = "X-Request-ID"
#: Where a request's id is kept in its WSGI environ.
ENVIRON_KEY = "taskapp.request_id"
#: A well-formed request id: 1 to 64 letters, digits, dots, underscores and hyphens (a UUID,
#: nginx's $request_id, a trace id): nothing a log line would have to escape. Another value is
#: replaced by one made here, never echoed.
WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The id of the request this thread is serving ("-" outside a request), for log lines.
CURRENT: ContextVar[str] = ContextVar("taskapp_request_id", default="-")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


_prefix = ""  # random, per process: ids are unique across workers and hosts
_counter = itertools.count()


def _reseed() -> None:
    """A new prefix and counter (at import, and in a forked child: never the parent's ids)."""
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new() -> str:
    """A new request id: this process's random prefix (16 hexadecimal digits) and a count
    (8 or more): unique without a system call per request."""
    return f"{_prefix}{next(_counter):08x}"


def of(environ: dict[str, Any]) -> str:
    """The id of ``environ``'s request: the client's own when well-formed, else a new one."""
    found: str | None = environ.get(ENVIRON_KEY)
    if found is None:
        sent = environ.get("HTTP_X_REQUEST_ID")
        found = environ[ENVIRON_KEY] = (
            sent if sent is not None and WELL_FORMED.fullmatch(sent) else new()
        )
    return found


class RequestIds:
    """A WSGI layer giving each request its id: in the environ, in ``CURRENT`` while the app
    runs, and in the response's ``X-Request-ID``."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request_id = of(environ)

        def start_with_id(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*headers, (HEADER, request_id)], *exc_info)

        token = CURRENT.set(request_id)
        try:
            return self.app(environ, start_with_id)
        finally:
            CURRENT.reset(token)
