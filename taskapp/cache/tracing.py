"""Traces of the cache (OpenTelemetry): a span for each Redis call, and the cache's decisions
on the span of the request that made them.

Off until the app gives it a tracer (``enable_tracing``); while off, each hook costs its caller one
check of ``tracer``, and OpenTelemetry is not even imported.
"""

from __future__ import annotations

import sys
from typing import Any

from taskapp.cache.client import Unavailable

#: The tracer spans are made with; None while tracing is off (the only thing hot paths check).
tracer: Any = None

#: The attribute of the request's span listing the cache's decisions in order: ``http.hit``,
#: ``redis.miss``, ``l1.hit`` ... (``stats`` events), ``lock_wait``, ``fill``,
#: ``refused_stale_fill`` (a fill whose versions changed meanwhile: not stored) and
#: ``breaker_open`` (a call refused while Redis is deemed down).
DECISIONS = "taskapp.cache.decisions"
#: The attribute of a Redis call's span sent while the breaker was open (refused unless probing).
BREAKER_OPEN = "taskapp.cache.breaker_open"
#: At most this many decisions are kept per span (a page of many lookups stays readable).
MAX_DECISIONS = 64


def enable_tracing(new_tracer: Any) -> None:
    """Trace the cache with ``new_tracer`` (an OpenTelemetry Tracer)."""
    global tracer
    tracer = new_tracer


def disable_tracing() -> None:
    """Stop tracing the cache."""
    global tracer
    tracer = None


def note(decision: str) -> None:
    """Add ``decision`` to the span of the request being served (nothing outside one)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    earlier = (getattr(span, "attributes", None) or {}).get(DECISIONS, ())
    if len(earlier) < MAX_DECISIONS:
        span.set_attribute(DECISIONS, (*earlier, decision))


def redis_span(op: str, breaker_open: bool) -> Any:
    """A started client span for one Redis call of cache operation ``op`` (through the breaker,
    which was open when ``breaker_open``); end it with ``end``."""
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {"db.system.name": "redis", "db.operation.name": op}
    if breaker_open:
        attributes[BREAKER_OPEN] = True
    return tracer.start_span(f"redis {op}", kind=SpanKind.CLIENT, attributes=attributes)


def end(span: Any) -> None:
    """End a Redis call's span, in a ``finally``: a call that raised is marked failed (and one
    refused by the open breaker noted on the request's span as ``breaker_open``)."""
    from opentelemetry.trace import StatusCode

    failure = sys.exc_info()[1]
    if failure is not None:
        span.set_status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}")
        attributes = getattr(span, "attributes", None) or {}  # none on a span not sampled
        if isinstance(failure, Unavailable) and attributes.get(BREAKER_OPEN):
            note("breaker_open")
    span.end()
