"""One place that turns every error into RFC 9457 problem details (``application/problem+json``);
``taskapp.pipeline`` registers its handlers (and ``db.handle_unavailable``, MongoDB's 503).

A problem's ``type`` is the section of the RFC that defines its status (as ASP.NET Core's
ProblemDetails do): a page a person can read, and the same URI for every problem of a status.
``title`` is the status's name, ``detail`` says what went wrong with this request in our words
(never Werkzeug's defaults), and a 422 lists each invalid field in ``errors``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal

from flask import Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from werkzeug.exceptions import (
    HTTPException,
    NotFound,
    Unauthorized,
    UnprocessableEntity,
)
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Headers of the exception's own response that the problem body replaces.
_BODY_HEADERS = {"content-type", "content-length"}

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_SOME_ID = "0" * 24

_RFC9110 = "https://www.rfc-editor.org/rfc/rfc9110#section-"
_RFC6585 = "https://www.rfc-editor.org/rfc/rfc6585#section-"
#: The ``type`` of each status: where HTTP defines it. Another status is ``about:blank``.
TYPES: dict[int, str] = {
    **{
        status: f"{_RFC9110}15.5.{n}"
        for n, status in enumerate(range(400, 418), start=1)  # 400 is 15.5.1 ... 417 15.5.18
    },
    421: f"{_RFC9110}15.5.20",
    422: f"{_RFC9110}15.5.21",
    426: f"{_RFC9110}15.5.22",
    428: f"{_RFC6585}3",
    429: f"{_RFC6585}4",
    431: f"{_RFC6585}5",
    **{status: f"{_RFC9110}15.6.{n}" for n, status in enumerate(range(500, 506), start=1)},
}
#: Titles where RFC 9110 renamed a status that Werkzeug still calls by its old name.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}

#: Our words for the statuses Werkzeug raises with its own default text.
_OWN_WORDS = {
    400: "the request cannot be understood",
    401: "a valid bearer token is required",
    403: "this user may not do this",
    404: "there is nothing at this URL (the API is under /api/v1)",
    405: "this URL does not accept this method; the Allow header lists those it does",
    406: "this API answers JSON only",
    408: "the request took too long to arrive",
    413: "the request body is too large",
    414: "the URL is too long",
    415: "the request body must be JSON, sent with Content-Type: application/json",
    429: "too many requests; retry after the seconds in Retry-After",
    431: "the request headers are too large",
    500: "an unexpected error occurred on the server; it was logged",
    503: "the service is unavailable; retry after the seconds in Retry-After",
}

#: The WWW-Authenticate of a 401: the scheme to use, and whether a presented token was refused
#: (RFC 6750 section 3).
BEARER = "Bearer"
BEARER_INVALID_TOKEN = 'Bearer error="invalid_token"'


def _no_null_defaults(schema: dict[str, Any]) -> None:
    """An optional member is left out of a problem, never sent as null: no ``default: null``."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class InvalidField(BaseModel):
    """One invalid part of the request: where it is and what is wrong with it."""

    model_config = ConfigDict(json_schema_extra=_no_null_defaults)

    pointer: str | SkipJsonSchema[None] = Field(
        default=None,
        description="JSON Pointer (RFC 6901) to the invalid member of the request body, such as "
        '"/title"; "" for the body as a whole.',
    )
    parameter: str | SkipJsonSchema[None] = Field(
        default=None, description="The invalid query parameter."
    )
    detail: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    model_config = ConfigDict(json_schema_extra=_no_null_defaults)

    type: str = Field(
        description="A URI of the kind of problem: the section of the RFC that defines its status.",
        json_schema_extra={"format": "uri-reference"},
    )
    title: str = Field(description="The name of the status, the same for every problem of a type.")
    status: int = Field(description="The HTTP status code of the response.")
    detail: str = Field(description="What went wrong with this request.")
    errors: list[InvalidField] | SkipJsonSchema[None] = Field(
        default=None,
        description="Each invalid field of the body or query string (422 only).",
    )


class Invalid(UnprocessableEntity):
    """A 422 that lists each invalid field (``errors``: dicts of ``InvalidField``)."""

    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.errors = errors


class TokenRefused(Unauthorized):
    """A 401 for a presented token that was refused: expired, revoked, malformed or of an
    account that is gone (``WWW-Authenticate: Bearer error="invalid_token"``)."""


def problem_body(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> bytes:
    """The JSON of a problem with ``status`` (and, for a 422, its invalid ``errors``)."""
    document: dict[str, Any] = {
        "type": TYPES.get(status, "about:blank"),
        "title": title(status),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        document["errors"] = errors
    return json.dumps(document, separators=(",", ":")).encode()


def title(status: int) -> str:
    """The name of ``status`` (RFC 9110's, where it renamed one)."""
    return _TITLES.get(status) or HTTP_STATUS_CODES.get(status, "Error")


def problem(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    """A problem-details response with ``status``."""
    return Response(problem_body(status, detail, errors), status, mimetype=PROBLEM_JSON)


def own_words(exc: HTTPException) -> str:
    """The exception's text, or ours where it carries Werkzeug's default one."""
    description = exc.description or ""
    if not description or description == type(exc).description:
        return _OWN_WORDS.get(exc.code or 500, title(exc.code or 500).lower())
    return description


def handle_http_exception(exc: HTTPException) -> Response | HTTPException:
    """Any werkzeug/Flask HTTP error as problem details, keeping its headers (Allow,
    Retry-After, ...); every 401 says how to authenticate (WWW-Authenticate)."""
    if exc.code is None or exc.code < 400:
        return exc  # a routing redirect (e.g. a missing trailing slash) stays a redirect
    if isinstance(exc, NotFound) and request.url_rule is None:
        message = _malformed_id_message()
        if message is not None:
            return problem(404, message)
    return problem_of(exc)


def problem_of(exc: HTTPException) -> Response:
    """``exc`` as problem details, with its headers (and a 401's WWW-Authenticate)."""
    response = problem(exc.code or 500, own_words(exc), getattr(exc, "errors", None))
    # get_response() also covers an exception raised with a ready response (abort(response)).
    for name, value in exc.get_response().headers.items():
        if name.lower() not in _BODY_HEADERS:
            response.headers.add(name, value)
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = (
            BEARER_INVALID_TOKEN if isinstance(exc, TokenRefused) else BEARER
        )
    return response


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


def handle_validation_error(exc: ValidationError) -> Response:
    """A pydantic error that escaped the view's own parsing: 422 naming the fields."""
    return problem_of(invalid(exc))


def handle_unexpected_error(exc: Exception) -> Response:
    """A bug: log the traceback, answer 500 without leaking any detail."""
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return problem(500, _OWN_WORDS[500])


def invalid(exc: ValidationError, where: Literal["body", "query"] = "body") -> Invalid:
    """A 422 for pydantic's errors in the request body or its query string: the message of
    ``validation_message`` as its detail, and each invalid field in its ``errors``."""
    what = "field" if where == "body" else "parameter"
    errors = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if where == "body":
            errors.append({"pointer": json_pointer(error["loc"]), "detail": message})
        else:
            errors.append(
                {"parameter": str(error["loc"][0]) if error["loc"] else "", "detail": message}
            )
    return Invalid(validation_message(exc, what), errors)


def json_pointer(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a JSON Pointer (RFC 6901): ``("tags", 0)`` -> ``/tags/0``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in location)


def validation_message(exc: ValidationError, what: str = "field") -> str:
    """Pydantic errors as one line: ``field 'title': String should have at least 1 character``."""
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{what} '{location}': {message}" if location else message)
    return "; ".join(parts)
