"""OpenTelemetry traces, when the operator asks for them with the standard ``OTEL_*`` variables.

One span per request (``opentelemetry-instrumentation-wsgi``'s middleware, around the fast
path too, so a hit has its span), named by its route, with the cache's decisions as its
attributes (``taskapp.cache.enable_tracing``); a child span for each Redis call (``Store.run``,
which every call of the cache crosses, the fast path's own included) and each MongoDB command
(``opentelemetry-instrumentation-pymongo``'s listener, which ``create_app`` gives the app's
client). ``taskapp.pipeline`` places the span's layer and the hook naming it.

Without those variables nothing is set up and nothing is imported: the hot paths check one
attribute. Under gunicorn each worker starts its own tracer provider after the fork
(``post_fork`` in gunicorn.conf.py), so each has its own exporter thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from flask import request

from taskapp import request_id
from taskapp.cache import disable_tracing, enable_tracing
from taskapp.config import ConfigError

#: The name spans and the service are given when OTEL_SERVICE_NAME does not say otherwise.
SERVICE = "taskapp"

_provider: Any = None  # this process's TracerProvider while tracing is on


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the OTEL_* variables ask for traces: an exporter other than ``none``, or an
    OTLP endpoint; never with ``OTEL_SDK_DISABLED=true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def start(provider: Any = None) -> Any:
    """Trace this process's requests into ``provider`` (by default one made from the OTEL_*
    variables): the provider, or None when nothing asks for traces. Apps created from then on
    are traced."""
    global _provider
    if provider is None:
        if not requested():
            return None
        provider = from_environment()
    _provider = provider
    enable_tracing(provider.get_tracer(SERVICE))
    return provider


def stop() -> None:
    """Stop tracing in this process (apps created before stay wrapped, and record nothing)."""
    global _provider
    _provider = None
    disable_tracing()


def provider() -> Any:
    """This process's tracer provider, None while tracing is off."""
    return _provider


def from_environment() -> Any:
    """A TracerProvider as the OTEL_* variables describe it: the exporters of
    OTEL_TRACES_EXPORTER (``otlp`` over HTTP by default, ``console`` for a look), the service
    name and resource of OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, the sampler of
    OTEL_TRACES_SAMPLER; the batch and exporter variables are read by the SDK itself."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    traced = TracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (n.strip() for n in names.split(",") if n.strip()):
        exporter = _exporter(name)
        # The console is for a look: each span at once. Others are sent in batches.
        processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
        traced.add_span_processor(processor(exporter))
    return traced


def _exporter(name: str) -> Any:
    """The span exporter an OTEL_TRACES_EXPORTER name stands for (an installed entry point)."""
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ConfigError(
            f"setting OTEL_TRACES_EXPORTER names {name!r}, which is not installed "
            "(console and otlp over HTTP are)"
        )
    return next(iter(found)).load()()


def mongodb_listeners() -> list[Any]:
    """The pymongo command listeners giving each MongoDB command a span (none while off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.pymongo import CommandTracer

    return [CommandTracer(_provider.get_tracer(SERVICE))]


def name_span() -> None:
    """``before_request``: name the request's span by its route (Flask's path; the fast path
    names its own)."""
    if request.url_rule is not None:
        name_request(request.method, request.url_rule.rule)


def middleware(wsgi_app: Any) -> Any:
    """``wsgi_app`` in a span of its own for every request (the fast path's too)."""
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        wsgi_app, request_hook=_with_request_id, tracer_provider=_provider
    )


def name_request(method: str, route: str) -> None:
    """Name the current request's span by its route (``GET /api/v1/tasks/<objectid:task_id>``)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


def _with_request_id(span: Any, environ: dict[str, Any]) -> None:
    if span.is_recording():
        span.set_attribute("taskapp.request_id", request_id.of(environ))
