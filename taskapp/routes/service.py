"""Operational routes: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import os
from typing import Any, Literal

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel

from taskapp import db, openapi
from taskapp.extensions import cache
from taskapp.openapi import response

bp = Blueprint("service", __name__)


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    """Whether each backend answered."""

    mongodb: bool
    redis: bool


class Readiness(BaseModel):
    """Backend reachability: without MongoDB the app cannot serve; without Redis, it is slower."""

    status: Literal["ready", "degraded", "unavailable"]
    checks: ReadinessChecks


@bp.get("/healthz")
@response(Health)
def healthz() -> dict[str, str]:
    """Liveness of the process.

    Answers without touching MongoDB or Redis.
    """
    return {"status": "ok"}


@bp.get("/readyz")
@response(Readiness, also={503: Readiness})
def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: whether MongoDB and Redis answer.

    503 when MongoDB is unreachable, 200 "degraded" when only Redis is.
    """
    checks = {"mongodb": db.ping(), "redis": cache.ping()}
    if not checks["mongodb"]:
        return {"status": "unavailable", "checks": checks}, 503
    return {"status": "ready" if checks["redis"] else "degraded", "checks": checks}, 200


@bp.get("/metrics")
@response(None, media_type="text/plain")
def metrics() -> Response:
    """Prometheus metrics, summed over every gunicorn worker."""
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
@response(None, media_type="application/json")
def openapi_document() -> dict[str, Any]:
    """This OpenAPI 3.1 document."""
    document = current_app.extensions.get("taskapp.openapi")
    if document is None:  # routes are fixed once serving starts, so build it once per app
        document = current_app.extensions["taskapp.openapi"] = openapi.build(current_app)
    return document


def _registry() -> Any:
    # With PROMETHEUS_MULTIPROC_DIR every worker writes its own files; a fresh registry per
    # scrape sums them (prometheus_client's documented multiprocess pattern).
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY
