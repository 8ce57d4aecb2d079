"""One place that turns every error into JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import HTTPException, InternalServerError, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

# Headers of the exception's own response that the JSON body replaces.
_BODY_HEADERS = {"content-type", "content-length"}

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_SOME_ID = "0" * 24


class ErrorDetail(BaseModel):
    """The body of every error response, inside ``error``."""

    code: int
    message: str


class ErrorResponse(BaseModel):
    """Every error response."""

    error: ErrorDetail


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(ConnectionFailure, handle_database_unavailable)
    app.register_error_handler(Exception, handle_unexpected_error)


def error_response(code: int, message: str) -> Response:
    """A JSON error response with ``code`` as its status."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = code
    return response


def handle_http_exception(exc: HTTPException) -> Response | HTTPException:
    """Any werkzeug/Flask HTTP error as JSON, keeping its headers (Allow, Retry-After, ...)."""
    if exc.code is None or exc.code < 400:
        return exc  # a routing redirect (e.g. a missing trailing slash) stays a redirect
    if isinstance(exc, NotFound) and request.url_rule is None:
        message = _malformed_id_message()
        if message is not None:
            return error_response(404, message)
    return _json_error(exc)


def _malformed_id_message() -> str | None:
    """For a path that names a route but with a malformed id in it (``/tasks/abc``): say which
    id and what ids look like; None for a path that names no route at all."""
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return None
    segments = request.path.split("/")
    for i, segment in enumerate(segments):
        if not segment or _OBJECT_ID.fullmatch(segment):
            continue
        candidate = "/".join([*segments[:i], _SOME_ID, *segments[i + 1 :]])
        try:
            _, values = adapter.match(candidate, method=request.method)
        except HTTPException:
            continue
        name = next((n for n, v in values.items() if v == _SOME_ID), "id")
        what = name.removesuffix("_id") or "object"
        shown = segment if len(segment) <= 40 else segment[:40] + "..."
        return f"{what} not found: {shown!r} is not a {what} id (24 hexadecimal digits)"
    return None


def _json_error(exc: HTTPException) -> Response:
    response = error_response(exc.code or 500, exc.description or exc.name)
    # get_response() also covers an exception raised with a ready response (abort(response)).
    for name, value in exc.get_response().headers.items():
        if name.lower() not in _BODY_HEADERS:
            response.headers.add(name, value)
    return response


def handle_validation_error(exc: ValidationError) -> Response:
    """A pydantic error that escaped the view's own parsing: 422 naming the fields."""
    return error_response(422, validation_message(exc))


def handle_database_unavailable(exc: Exception) -> Response:
    """MongoDB unreachable or past the request's deadline (MONGODB_TIMEOUT_MS): 503 with
    Retry-After, so clients retry instead of reading a server bug."""
    from taskapp import db

    db.request_unavailable(exc)  # logs once per episode, not once per request
    log.debug("MongoDB unavailable: %s", exc)
    return _json_error(ServiceUnavailable("the database is unavailable; try again", retry_after=1))


def handle_unexpected_error(exc: Exception) -> Response:
    """A bug: log the traceback, answer 500 without leaking any detail.

    A MongoDB timeout that is no ConnectionFailure (the server's own time limit, or one that
    mongoengine re-raised as its OperationError) is an outage, not a bug: 503.
    """
    from taskapp import db

    if db.unavailable(exc):
        return handle_database_unavailable(exc)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, InternalServerError.description)


def validation_message(exc: ValidationError, what: str = "field") -> str:
    """Pydantic errors as one line: ``field 'title': String should have at least 1 character``."""
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{what} '{location}': {message}" if location else message)
    return "; ".join(parts)
