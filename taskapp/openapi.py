"""The OpenAPI 3.1 document, generated from the app's routes and the same pydantic schemas.

Views carry their facts as annotations (``annotate``): the request decorators record the body and
query schemas, ``login_required`` records the bearer security, and ``response`` records the
success schema, its headers and the route's own error statuses. ``build`` walks the URL map, so a
route cannot be missing from the document, and adds what every route of a kind can answer (a 422
for an unknown query parameter everywhere, a 429 and a 503 under ``/api/``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Flask
from pydantic import BaseModel

from taskapp.errors import ErrorResponse

View = Callable[..., Any]

OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
_SCHEMAS = "#/components/schemas/{model}"
_HEADERS = "#/components/headers/{name}"
_PARAMETERS = "#/components/parameters/{name}"
_STATUS_TEXT = {
    304: "Not modified: the ETag in If-None-Match is current",
    400: "The request body cannot be parsed: not JSON, not a JSON object, or nested too deeply",
    401: "Missing, expired or invalid bearer token",
    403: "Not allowed for this user",
    404: "Not found",
    409: "Conflict with existing data",
    412: "If-Match names no current ETag of the task: nothing was changed",
    413: "Request body too large",
    415: "The request body must be application/json",
    422: "A field of the body or a query parameter is invalid, unknown or repeated",
    429: "Rate limited; see Retry-After",
    503: "MongoDB (or the write-behind queue) is unavailable; retry after Retry-After",
}
_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
#: Response headers, each described once (components.headers) and referred to by responses.
HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": "The entity tag of this user's representation: send it back in "
        "If-None-Match (a GET answers 304 while it is current) or If-Match (a change is made "
        "only while it is current).",
        "schema": {"type": "string"},
    },
    "X-Cache": {
        "description": "HIT when answered without reading MongoDB (from any cache layer), "
        "MISS otherwise.",
        "schema": {"type": "string", "enum": ["HIT", "MISS"]},
    },
    "Cache-Control": {
        "description": "private, no-cache: a browser revalidates with If-None-Match.",
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "The URL of the created task.",
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in any 60-second window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the current window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "Seconds until the window has room again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {
        "description": "The authentication scheme to use: Bearer.",
        "schema": {"type": "string"},
    },
}
#: Request headers of conditional requests (components.parameters).
PARAMETERS: dict[str, dict[str, Any]] = {
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": 'ETags of representations you hold (weak comparison: W/"..." '
        "matches too; * matches any): answered 304 without a body while one is current.",
        "schema": {"type": "string"},
    },
    "IfMatch": {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": "ETags the task must still have (strong comparison, RFC 9110 "
        'section 13.1.1: a weak W/"..." never matches; * matches any existing task): '
        "otherwise 412 and nothing is changed.",
        "schema": {"type": "string"},
    },
}
#: The tags (one per blueprint), in the order the documentation shows them.
TAGS = [
    {"name": "auth", "description": "Accounts and access tokens."},
    {"name": "tasks", "description": "Your tasks, their statistics and your activity."},
    {"name": "admin", "description": "Accounts and tasks of every user (admin role only)."},
    {"name": "service", "description": "Health, readiness, metrics and this document."},
    {"name": "docs", "description": "Interactive documentation."},
]


def annotate(view: View, **facts: Any) -> None:
    """Record OpenAPI facts about a view (merged along its ``__wrapped__`` chain by ``build``)."""
    view.__dict__["_openapi"] = {**view.__dict__.get("_openapi", {}), **facts}


def response(
    schema: type[BaseModel] | None,
    status: int = 200,
    *,
    errors: tuple[int, ...] = (),
    cached: bool = False,
    media_type: str = "application/json",
    also: dict[int, type[BaseModel]] | None = None,
    headers: tuple[str, ...] = (),
    descriptions: dict[int, str] | None = None,
    if_match: bool = False,
) -> Callable[[View], View]:
    """Document a view's success response (and its ``headers``), its own error statuses (with
    ``descriptions`` where the general text does not fit), other documented bodies, and whether
    it honours If-Match (then it can also answer 412)."""

    def decorator(view: View) -> View:
        annotate(
            view,
            response=schema,
            status=status,
            errors=(*errors, 412) if if_match else errors,
            cached=cached,
            media_type=media_type,
            also=also or {},
            headers=headers,
            descriptions=descriptions or {},
            if_match=if_match,
        )
        return view

    return decorator


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every route of ``app``."""
    components: dict[str, Any] = {}
    _ref(ErrorResponse, components)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # files (the /docs page's assets), not operations
        facts = _facts(app.view_functions[rule.endpoint])
        path = _RULE_ARGUMENT.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = _operation(rule.endpoint, path, method, facts, components)
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskapp",
            "version": _version(),
            "description": "A task API on MongoDB with a Redis cache. Log in for a bearer token "
            "(POST /api/v1/auth/login) and send it as Authorization: Bearer <token>. Errors are "
            'JSON {"error": {"code", "message"}}: 400 for a body that cannot be parsed, 422 for '
            "input that is well-formed but invalid.",
        },
        # Relative to the document: the API is served by the host (and path prefix) serving it.
        "servers": [{"url": "/", "description": "the server of this document"}],
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "headers": HEADERS,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _facts(view: View) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    errors: set[int] = set()
    for layer in _layers(view):
        layer_facts = layer.__dict__.get("_openapi", {})
        errors.update(layer_facts.get("errors", ()))
        facts = {**layer_facts, **facts}  # the outer layer wins, except errors add up
    facts["errors"] = errors
    facts["doc"] = (view.__doc__ or "").strip()
    return facts


def _layers(view: View) -> Iterator[View]:
    seen: View | None = view
    while seen is not None:
        yield seen
        seen = getattr(seen, "__wrapped__", None)


def _operation(
    endpoint: str, path: str, method: str, facts: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any]:
    summary = facts["doc"].partition("\n")[0]
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "tags": [endpoint.partition(".")[0]],
        "summary": summary.strip() or endpoint,
        "description": " ".join(facts["doc"].split()) or endpoint,
    }
    parameters = (
        _path_parameters(path)
        + _query_parameters(facts.get("query"), components)
        + _header_parameters(facts)
    )
    if parameters:
        operation["parameters"] = parameters
    if facts.get("body") is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(facts["body"], components)}},
        }
    # Public operations say so (an empty list), rather than leaving a reader to guess.
    operation["security"] = [{"bearerAuth": []}] if facts.get("auth") else []
    operation["responses"] = _responses(path, facts, components)
    return operation


def _path_parameters(path: str) -> list[dict[str, Any]]:
    # Every path parameter of this API is an ObjectId (the ``objectid`` URL converter).
    names = re.findall(r"{([^{}]+)}", path)
    schema = {"type": "string", "pattern": OBJECT_ID_PATTERN}
    return [{"name": n, "in": "path", "required": True, "schema": schema} for n in names]


def _query_parameters(
    schema: type[BaseModel] | None, components: dict[str, Any]
) -> list[dict[str, Any]]:
    if schema is None:
        return []
    json_schema = schema.model_json_schema(ref_template=_SCHEMAS)
    components.update(json_schema.pop("$defs", {}))
    required = set(json_schema.get("required", ()))
    parameters = []
    for name, prop in json_schema["properties"].items():
        prop = _not_null(prop)
        parameter = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        parameter["schema"] = prop
        parameters.append(parameter)
    return parameters


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without its ``null`` option: a query string has no null, and
    ``?priority=null`` is the text "null" (422); an optional parameter is simply not sent."""
    options = [option for option in prop.get("anyOf", ()) if option != {"type": "null"}]
    if "anyOf" not in prop or len(options) != 1:
        return dict(prop)
    merged = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    if merged.get("default", "") is None:
        del merged["default"]
    return merged


def _header_parameters(facts: dict[str, Any]) -> list[dict[str, Any]]:
    names = (["IfNoneMatch"] if facts.get("cached") else []) + (
        ["IfMatch"] if facts.get("if_match") else []
    )
    return [{"$ref": _PARAMETERS.format(name=name)} for name in names]


def _responses(path: str, facts: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    status = facts.get("status", 200)
    # Answers to a counted (authenticated) request carry its rate-limit state.
    counted = _RATE_LIMIT_HEADERS if facts.get("auth") else ()
    success_headers: tuple[str, ...] = (*facts.get("headers", ()), *counted)
    if facts.get("cached"):
        success_headers = ("ETag", "X-Cache", "Cache-Control", *success_headers)
    responses: dict[str, Any] = {str(status): _success(facts, components)}
    _add_headers(responses[str(status)], success_headers)
    for code, schema in facts.get("also", {}).items():
        responses[str(code)] = _body(schema.__doc__ or "", schema, components)
    if facts.get("cached"):
        responses["304"] = {"description": _STATUS_TEXT[304]}
        _add_headers(responses["304"], ("ETag", "X-Cache", "Cache-Control", *counted))
    error_content = {
        "application/json": {"schema": {"$ref": _SCHEMAS.format(model="ErrorResponse")}}
    }
    descriptions = {**_STATUS_TEXT, **facts.get("descriptions", {})}
    for code in sorted(_error_statuses(path, facts)):
        error = {"description": descriptions[code], "content": error_content}
        _add_headers(error, _error_headers(code, facts))
        responses[str(code)] = error
    return responses


def _error_headers(code: int, facts: dict[str, Any]) -> tuple[str, ...]:
    if code == 401 and facts.get("auth"):
        return ("WWW-Authenticate",)  # a missing or refused token, not wrong credentials
    if code == 429:
        return ("Retry-After", *_RATE_LIMIT_HEADERS)
    if code == 503:
        return ("Retry-After",)
    return ()


def _add_headers(response_object: dict[str, Any], names: tuple[str, ...]) -> None:
    if names:
        response_object["headers"] = {
            name: {"$ref": _HEADERS.format(name=name)} for name in dict.fromkeys(names)
        }


def _success(facts: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    schema = facts.get("response")
    if facts.get("status") == 204:
        return {"description": "Success, no content"}
    if schema is None:
        media_type = facts.get("media_type", "application/json")
        body_type = "object" if media_type == "application/json" else "string"
        return {"description": "Success", "content": {media_type: {"schema": {"type": body_type}}}}
    return _body(schema.__doc__ or "Success", schema, components)


def _body(description: str, schema: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    summary = description.strip().splitlines()[0] if description.strip() else schema.__name__
    return {
        "description": summary,
        "content": {"application/json": {"schema": _ref(schema, components)}},
    }


def _error_statuses(path: str, facts: dict[str, Any]) -> set[int]:
    codes = set(facts.get("errors", ()))
    if facts.get("auth"):
        codes.add(401)
    if "{" in path:
        codes.add(404)
    if facts.get("body") is not None:
        codes |= {400, 413, 415}
    codes.add(422)  # every route refuses a query parameter it does not read, or a repeated one
    if path.startswith("/api/"):
        codes.add(429)  # every API request counts against a rate limit
        codes.add(503)  # every API route reads MongoDB (or, on a hit, might have had to)
    return codes


def _ref(schema: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    json_schema = schema.model_json_schema(ref_template=_SCHEMAS)
    components.update(json_schema.pop("$defs", {}))
    components[schema.__name__] = json_schema
    return {"$ref": _SCHEMAS.format(model=schema.__name__)}


def _version() -> str:
    try:
        return version("taskapp")
    except PackageNotFoundError:
        return "0.0.0"
