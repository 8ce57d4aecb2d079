"""CORS for browser scripts on the origins of CORS_ORIGINS (flask-cors), on every response.

flask-cors adds its headers in ``after_request``, and Flask runs every ``after_request`` hook on
every response: a view's, an error's, a 304, and a response the HTTP response cache answered
from ``before_request``. ``init_app`` registers them before any other hook (``taskapp.pipeline``),
so they run last and see the final headers; ``preflight`` is the first ``before_request`` hook
after tracing's.
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, request
from flask_cors import CORS

#: Request headers a script may send: the token, JSON bodies, the cache's request directives,
#: the conditions of conditional requests and its own request id.
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "If-Match",
    "Cache-Control",
    "X-Request-ID",
]
#: Response headers a script may read (besides the CORS-safelisted ones).
EXPOSED_HEADERS = [
    "ETag",
    "X-Cache",
    "Location",
    "Retry-After",
    "WWW-Authenticate",
    "RateLimit",
    "RateLimit-Policy",
    "X-Request-ID",
]
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer
ALLOW_METHODS = "Access-Control-Allow-Methods"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_SOME_ID = "0" * 24


def init_app(app: Flask) -> None:
    """Answer the origins of CORS_ORIGINS with CORS headers (``after_request``); with none, send
    no CORS header."""
    origins = app.config["CORS_ORIGINS"]
    if not origins:
        return
    app.after_request(_route_methods_and_vary)  # registered first: runs after flask-cors's hook
    CORS(
        app,
        origins=origins,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE,
        supports_credentials=False,  # bearer tokens, never cookies
        always_send=False,  # no CORS headers for a request without an Origin
        vary_header=False,  # Vary: Origin is added below, on every response, merged into one
    )


def preflight() -> Response | None:
    """``before_request``: answer a preflight 204 before anything checks the request it
    announces.

    The query string (an unknown or repeated parameter) and the path's id (``/tasks/nope``) are
    for the real request to judge: it gets its JSON 422 or 404, which a script can read only if
    its preflight passed. A path that names no route at all is left to the routing 404.
    """
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    methods = _route_methods()
    if not methods:
        return None
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type (never an HTML page)
    response.allow.update(methods)
    return response


def _route_methods() -> set[str]:
    """The methods of the route the request's path names, also when an id in it is malformed."""
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return set()
    methods = set(adapter.allowed_methods())
    segments = request.path.split("/")
    for i, segment in enumerate(segments):
        if methods:
            break
        if segment and not _OBJECT_ID.fullmatch(segment):
            candidate = "/".join([*segments[:i], _SOME_ID, *segments[i + 1 :]])
            methods = set(adapter.allowed_methods(candidate))
    return methods


def _route_methods_and_vary(response: Response) -> Response:
    """Preflights allow the methods of the requested route only; every answer varies by Origin.

    flask-cors allows one fixed list of methods; the route's own are in the ``Allow`` header of
    Flask's automatic OPTIONS answer (none for an unknown path). It names the allowed request
    headers only when the preflight asks for some; one that asks for none is told the whole list.
    ``Vary: Origin`` goes on every response, not only on those to an allowed origin, so that no
    shared cache hands an answer without CORS headers to an allowed origin or one with them to
    another origin.
    """
    if request.method == "OPTIONS" and ALLOW_METHODS in response.headers:
        if response.allow:
            response.headers[ALLOW_METHODS] = ", ".join(sorted(response.allow))
            if "Access-Control-Request-Headers" not in request.headers:
                response.headers[ALLOW_HEADERS] = ", ".join(ALLOWED_HEADERS)
        else:
            del response.headers[ALLOW_METHODS]
    response.vary.add("Origin")
    return response
