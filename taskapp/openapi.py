"""The OpenAPI 3.1 document, generated from the app's routes and the same pydantic schemas.

Views carry their facts as annotations (``annotate``): the request decorators record the body and
query schemas, ``login_required`` records the bearer security, and ``response`` records the
success schema and the route's own error statuses. ``build`` walks the URL map, so a route cannot
be missing from the document.
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
_STATUS_TEXT = {
    304: "Not modified: the ETag in If-None-Match is current",
    400: "Malformed request",
    401: "Missing, expired or invalid bearer token",
    403: "Not allowed for this user",
    404: "Not found",
    409: "Conflict with existing data",
    413: "Request body too large",
    415: "The request body must be application/json",
    422: "Invalid field or parameter",
    429: "Rate limited; see Retry-After",
}


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
) -> Callable[[View], View]:
    """Document a view's success response, its own error statuses and other documented bodies."""

    def decorator(view: View) -> View:
        annotate(
            view,
            response=schema,
            status=status,
            errors=errors,
            cached=cached,
            media_type=media_type,
            also=also or {},
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
        "info": {"title": "taskapp", "version": _version()},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
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
    summary, _, description = facts["doc"].partition("\n")
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "tags": [endpoint.partition(".")[0]],
        "summary": summary.strip() or endpoint,
    }
    if description.strip():
        operation["description"] = description.strip()
    parameters = _path_parameters(path) + _query_parameters(facts.get("query"))
    if parameters:
        operation["parameters"] = parameters
    if facts.get("body") is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(facts["body"], components)}},
        }
    if facts.get("auth"):
        operation["security"] = [{"bearerAuth": []}]
    operation["responses"] = _responses(path, facts, components)
    return operation


def _path_parameters(path: str) -> list[dict[str, Any]]:
    # Every path parameter of this API is an ObjectId (the ``objectid`` URL converter).
    names = re.findall(r"{([^{}]+)}", path)
    schema = {"type": "string", "pattern": OBJECT_ID_PATTERN}
    return [{"name": n, "in": "path", "required": True, "schema": schema} for n in names]


def _query_parameters(schema: type[BaseModel] | None) -> list[dict[str, Any]]:
    if schema is None:
        return []
    json_schema = schema.model_json_schema()
    required = set(json_schema.get("required", ()))
    parameters = []
    for name, prop in json_schema["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _responses(path: str, facts: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    status = facts.get("status", 200)
    responses: dict[str, Any] = {str(status): _success(facts, components)}
    for code, schema in facts.get("also", {}).items():
        responses[str(code)] = _body(schema.__doc__ or "", schema, components)
    if facts.get("cached"):
        responses["304"] = {"description": _STATUS_TEXT[304]}
    error_content = {
        "application/json": {"schema": {"$ref": _SCHEMAS.format(model="ErrorResponse")}}
    }
    for code in sorted(_error_statuses(path, facts)):
        responses[str(code)] = {"description": _STATUS_TEXT[code], "content": error_content}
    return responses


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
        codes |= {400, 413, 415, facts.get("body_status", 422)}
    if facts.get("query") is not None:
        codes.add(422)
    if path.startswith("/api/"):
        codes.add(429)  # every API request counts against a rate limit
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
