"""What one request learned on its way: one object, carried in the request's WSGI environ.

A request may begin in a WSGI layer in front of Flask (the response cache's fast path) and be
handed on to Flask's dispatch; whatever the first layer learned (the request's admission call,
its lookup and fill lock, the scope versions Redis returned) is in this object, so Flask neither
asks Redis again nor counts the request twice. The layer in front passes it explicitly; code on
Flask's path finds it with ``RequestState.current()``.
"""

from __future__ import annotations

import time
from typing import Any

from flask import has_request_context, request

#: ``RequestState.admission`` before the request made its admission call.
NOT_ASKED: Any = object()


class RequestState:
    """The cache's state of one request (``of(environ)``: made by the first layer that asks).

    - ``started``: when the request reached the app (``time.perf_counter()``), for its latency;
      None once it was observed;
    - ``admission``: the answer (``admission.Answer``) of the checks a request passes in Redis
      before it reads the cache (``admission.Admission``), None when Redis could not be asked,
      ``NOT_ASKED`` before;
    - ``looked_up``: a response-cache lookup a layer in front of Flask made and handed on:
      (key, entry, lease);
    - ``scopes``: the scope versions Redis returned (scope key -> version), which check the
      in-process layer's entries for the rest of the request;
    - ``source_read``: the request read the source of truth (its answer is an ``X-Cache: MISS``);
    - ``source_time``: seconds the request spent waiting on the source of truth: its own reads
      and writes (as the app counts them) and other callers' fills it waited for; a request
      waits for fills only while this is under CACHE_FILL_TIMEOUT.
    """

    __slots__ = ("started", "admission", "looked_up", "scopes", "source_read", "source_time")

    #: The environ key holding a request's state.
    KEY = "taskapp.request"

    def __init__(self) -> None:
        self.started: float | None = time.perf_counter()
        self.admission: Any = NOT_ASKED
        self.looked_up: tuple[str, Any, Any] | None = None
        self.scopes: dict[str, bytes] = {}
        self.source_read = False
        self.source_time = 0.0

    def take_looked_up(self) -> tuple[str, Any, Any] | None:
        """The lookup handed on by a layer in front of Flask, once (it is used or released)."""
        earlier, self.looked_up = self.looked_up, None
        return earlier

    @classmethod
    def of(cls, environ: dict[str, Any]) -> RequestState:
        """The state of the request of ``environ``, made when no layer made it yet."""
        state: RequestState | None = environ.get(cls.KEY)
        if state is None:
            state = environ[cls.KEY] = cls()
        return state

    @classmethod
    def current(cls) -> RequestState | None:
        """The state of the request Flask is dispatching; None outside a request (then every
        in-process read asks Redis: nothing bounds how long such code runs)."""
        return cls.of(request.environ) if has_request_context() else None


def mark_source_read() -> None:
    """Note that this request read the source of truth (its response is an ``X-Cache: MISS``)."""
    state = RequestState.current()
    if state is not None:
        state.source_read = True


def source_was_read() -> bool:
    """True when this request read the source of truth."""
    state = RequestState.current()
    return state is not None and state.source_read
