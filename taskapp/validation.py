"""Request parsing: JSON bodies and query strings validated by pydantic schemas, passed to views."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from taskapp.errors import Invalid, invalid
from taskapp.openapi import annotate

M = TypeVar("M", bound=BaseModel)
View = Callable[..., Any]

#: A parameter every route accepts and ignores: a client's cache-buster (``?_=1700000000``, as
#: jQuery's ``cache: false`` sends). The response cache leaves it out of its keys.
CACHE_BUSTER = "_"


def init_app(app: Flask) -> None:
    """Check every request's query string by one rule (before the response cache looks it up)."""
    app.before_request(check_query)


def check_query() -> None:
    """One rule for the query string of every route: each parameter at most once, and only the
    parameters the route reads (its ``arguments`` schema) or the cache-buster; 422 otherwise.

    Refusing a repeated parameter keeps every reader of the query (the view, the response
    cache's key) on the same single value.
    """
    if not request.query_string or request.method == "OPTIONS":
        return  # an OPTIONS answer (a CORS preflight) runs no view: its query is not read
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return  # no route matched: the routing error answers
    problem = query_problem(request.args, view)
    if problem is not None:
        name, message = problem
        raise Invalid(f"parameter '{name}': {message}", [{"parameter": name, "detail": message}])


def query_problem(args: Any, view: Any) -> tuple[str, str] | None:
    """The first parameter of query ``args`` that ``view`` refuses (see ``check_query``) and
    why, else None."""
    accepted: frozenset[str] = getattr(view, "_query_parameters", frozenset())
    for name in args:
        if len(args.getlist(name)) > 1:
            return name, "repeated; send it once"
        if name != CACHE_BUSTER and name not in accepted:
            return name, "not accepted by this route"
    return None


def body(schema: type[BaseModel]) -> Callable[[View], View]:
    """Validate the JSON body against ``schema``; the view receives the model as ``body``.

    One rule on every route: another content type answers 415, a body that cannot be parsed
    (not JSON, not an object, nested too deeply) 400, and a parsed body that breaks the schema
    422 (RFC 9110 section 15.5.21: the content is understood, its instructions cannot be
    processed).
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs["body"] = parse_body(schema)
            return view(*args, **kwargs)

        annotate(wrapper, body=schema)
        return wrapper

    return decorator


def arguments(schema: type[BaseModel]) -> Callable[[View], View]:
    """Validate the query string against ``schema``; the view receives the model as ``query``."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs["query"] = parse_query(schema)
            return view(*args, **kwargs)

        wrapper._query_parameters = frozenset(  # type: ignore[attr-defined]
            field.alias or name for name, field in schema.model_fields.items()
        )
        annotate(wrapper, query=schema)
        return wrapper

    return decorator


def parse_body(schema: type[M]) -> M:
    """The request's JSON object as ``schema``, or an HTTP error (400, 413, 415 or 422)."""
    if not request.is_json:
        raise UnsupportedMediaType()  # in our words (errors.own_words), not Werkzeug's
    try:
        _refuse_cut_stream()
        data = request.get_json()  # raises 413 when too large
    except BadRequest:
        raise BadRequest("the request body is not valid JSON") from None
    except RecursionError:  # json's decoder recurses per level: a deep body is hostile, not a bug
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def _refuse_cut_stream() -> None:
    """413 for a streamed body (chunked, no Content-Length) that reaches MAX_CONTENT_LENGTH.

    Werkzeug stops reading such a body at the limit without an error; what it read is cut
    short, and must not be answered as malformed JSON (400) or, worse, parsed.
    """
    limit = request.max_content_length
    if limit is None or request.content_length is not None:
        return  # a declared length over the limit is refused by Werkzeug itself
    if len(request.get_data(cache=True)) >= limit:
        raise RequestEntityTooLarge()


def parse_query(schema: type[M]) -> M:
    """The query string as ``schema`` (without the cache-buster), or 422."""
    values = request.args.to_dict()
    values.pop(CACHE_BUSTER, None)
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        raise invalid(exc, "query") from None
