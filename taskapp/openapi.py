"""The OpenAPI 3.1 document, generated from the app's routes and the same pydantic schemas.

Views carry their facts as annotations (``annotate``): the request decorators record the body and
query schemas, ``login_required`` records the bearer security, and ``response`` records the
success schema, its headers and the route's own error statuses. ``build`` walks the URL map, so a
route cannot be missing from the document, and adds what every route of a kind can answer (a 422
for an unknown query parameter everywhere, a 429 and a 503 under ``/api/``, ...).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Flask
from pydantic import BaseModel

from taskapp.errors import PROBLEM_JSON, Problem

View = Callable[..., Any]

OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
_SCHEMAS = "#/components/schemas/{model}"
_HEADERS = "#/components/headers/{name}"
_PARAMETERS = "#/components/parameters/{name}"
_STATUS_TEXT = {
    304: "Not modified: the ETag in If-None-Match is current",
    400: "The request body cannot be parsed: not JSON, not a JSON object, or nested too deeply",
    401: "No bearer token, or one that is expired, revoked or not valid",
    403: "Not allowed for this user",
    404: "Not found",
    409: "Conflict with existing data",
    412: "If-Match names no current ETag of the task: nothing was changed",
    413: "Request body too large",
    415: "The request body must be application/json",
    422: "A field of the body or a query parameter is invalid, unknown or repeated: each is "
    "listed in errors",
    429: "Rate limited; see Retry-After",
    503: "MongoDB (or the write-behind queue) is unavailable; retry after Retry-After",
}
#: The fields of every response a rate limit counted (every response under /api/).
_RATE_LIMIT_HEADERS = ("RateLimit", "RateLimit-Policy")
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
    "RateLimit-Policy": {
        "description": "The rate limits that counted this request (IETF "
        'draft-ietf-httpapi-ratelimit-headers), one item each: `"user";q=600;w=60` allows '
        "q requests in any window of w seconds. `user`: each user's requests; `anonymous`: "
        "requests without a valid token, per client address; `login-email` and "
        "`login-address`: login attempts; `register`: registrations per address.",
        "schema": {"type": "string"},
        "example": '"user";q=600;w=60',
    },
    "RateLimit": {
        "description": "What is left of each limit in RateLimit-Policy: "
        '`"user";r=599;t=61` says r requests remain and, within t seconds (whole, rounded up), '
        "every request counted so far has left the window (on a 429: a request is allowed again "
        "after t seconds).",
        "schema": {"type": "string"},
        "example": '"user";r=599;t=61',
    },
    "X-Request-ID": {
        "description": "The id of this request: the X-Request-ID sent, when well-formed, else "
        "one the server made. Log lines of the request carry it.",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: `Bearer`, or `Bearer "
        'error="invalid_token"` when the token sent was refused (expired, revoked, not valid).',
        "schema": {"type": "string"},
    },
}
#: Request headers: the conditions of conditional requests, and the request's id
#: (components.parameters).
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
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Your id of this request, sent back in the response's X-Request-ID and "
        "written in the server's log lines of the request, when it is 1 to 64 letters, digits, "
        "dots, underscores and hyphens; another value is not refused, but replaced by an id the "
        "server makes.",
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


#: The document's description (CommonMark: anything in angle brackets goes in a code span).
DESCRIPTION = (
    "A task API on MongoDB with a Redis cache. Log in for a bearer token "
    "(`POST /api/v1/auth/login`) and send it as `Authorization: Bearer <token>`.\n\n"
    "Errors are RFC 9457 problem details (`application/problem+json`): `type`, `title`, "
    "`status` and `detail`, and for a 422 an `errors` list naming each invalid field (a JSON "
    "Pointer into the body, or a query parameter). 400 is a body that cannot be parsed, 422 "
    "input that is well-formed but invalid.\n\n"
    "Every response under `/api/` reports the rate limits that counted it in the "
    "`RateLimit-Policy` and `RateLimit` fields; a 429 says when to retry in `Retry-After`. "
    "Every response carries `X-Request-ID`."
)


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every route of ``app``."""
    components: dict[str, Any] = {}
    _ref(Problem, components)
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
            "description": DESCRIPTION,
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
    facts["doc"] = inspect.cleandoc(view.__doc__ or "")
    return facts


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def _paragraphs(doc: str) -> list[str]:
    """A docstring's paragraphs, each on one line."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]


def commonmark(doc: str) -> str:
    """A docstring as CommonMark: paragraphs kept, their lines joined, ``x`` as a code span."""
    return "\n\n".join(_RST_LITERAL.sub(r"`\1`", p) for p in _paragraphs(doc))


def summary_and_description(doc: str) -> tuple[str, str]:
    """A docstring as an operation's one-line summary (its first sentence, plain text) and
    description (the rest, CommonMark; "" when there is none)."""
    paragraphs = _paragraphs(doc)
    if not paragraphs:
        return "", ""
    sentences = _SENTENCE_END.split(paragraphs[0], maxsplit=1)
    summary = _RST_LITERAL.sub(r"\1", sentences[0])
    return summary, commonmark("\n\n".join([*sentences[1:], *paragraphs[1:]]))


def _layers(view: View) -> Iterator[View]:
    seen: View | None = view
    while seen is not None:
        yield seen
        seen = getattr(seen, "__wrapped__", None)


def _operation(
    endpoint: str, path: str, method: str, facts: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any]:
    summary, description = summary_and_description(facts["doc"])
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "tags": [endpoint.partition(".")[0]],
        "summary": summary or endpoint,
    }
    if description:
        operation["description"] = description
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
    json_schema = _markdown(schema.model_json_schema(ref_template=_SCHEMAS))
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
    names = (
        (["IfNoneMatch"] if facts.get("cached") else [])
        + (["IfMatch"] if facts.get("if_match") else [])
        + ["RequestId"]
    )
    return [{"$ref": _PARAMETERS.format(name=name)} for name in names]


def _responses(path: str, facts: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    status = facts.get("status", 200)
    # Every answer under /api/ was counted by a rate limit (the user's, or the anonymous one
    # of a request without a valid token); every answer has its request id.
    common = (*(_RATE_LIMIT_HEADERS if path.startswith("/api/") else ()), "X-Request-ID")
    success_headers: tuple[str, ...] = (*facts.get("headers", ()), *common)
    if facts.get("cached"):
        success_headers = ("ETag", "X-Cache", "Cache-Control", *success_headers)
    responses: dict[str, Any] = {str(status): _success(facts, components)}
    _add_headers(responses[str(status)], success_headers)
    for code, schema in facts.get("also", {}).items():
        responses[str(code)] = _body(schema.__doc__ or "", schema, components)
        _add_headers(responses[str(code)], common)
    if facts.get("cached"):
        responses["304"] = {"description": _STATUS_TEXT[304]}
        _add_headers(responses["304"], ("ETag", "X-Cache", "Cache-Control", *common))
    error_content = {PROBLEM_JSON: {"schema": {"$ref": _SCHEMAS.format(model="Problem")}}}
    descriptions = {**_STATUS_TEXT, **facts.get("descriptions", {})}
    for code in sorted(_error_statuses(path, facts)):
        error = {"description": descriptions[code], "content": error_content}
        _add_headers(error, (*_error_headers(code), *common))
        responses[str(code)] = error
    return responses


def _error_headers(code: int) -> tuple[str, ...]:
    if code == 401:
        return ("WWW-Authenticate",)  # Bearer; error="invalid_token" for a refused token
    if code in (429, 503):
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
    summary = summary_and_description(description)[0] or schema.__name__
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


def _markdown(node: Any) -> Any:
    """A JSON schema with its docstring-made descriptions as CommonMark: paragraphs kept,
    lines joined, ``literal`` as a code span."""
    if isinstance(node, list):
        return [_markdown(item) for item in node]
    if not isinstance(node, dict):
        return node
    described = {key: _markdown(value) for key, value in node.items()}
    if isinstance(described.get("description"), str):
        described["description"] = commonmark(described["description"])
    return described


def _ref(schema: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    json_schema = _markdown(schema.model_json_schema(ref_template=_SCHEMAS))
    components.update(json_schema.pop("$defs", {}))
    components[schema.__name__] = json_schema
    return {"$ref": _SCHEMAS.format(model=schema.__name__)}


def _version() -> str:
    try:
        return version("taskapp")
    except PackageNotFoundError:
        return "0.0.0"
