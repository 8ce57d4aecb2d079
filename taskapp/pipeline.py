"""The request pipeline: every layer and hook a request passes through, in one place, in order.

``install(app)``, called once by ``create_app``, puts them around the app. Their order is stated
here and nowhere else: each list below is in the order a request meets its parts, and
``install`` registers them so that Flask runs them in that order (Flask runs ``before_request``
hooks first registered first, and ``after_request`` and ``teardown_request`` hooks last
registered first). No other module registers a hook of the app; a blueprint may have its own
(auth's ``Cache-Control: no-store`` runs before the app's ``after_request`` hooks).

Authentication and revocation have no hook of their own: who a request is (its token's signature
and expiry, then whether the token was revoked) is decided once, by the first part that asks,
and kept with the request: the fast path's admission call, else the user's rate limit's (the
same call: the revocation check, then the limit), else ``auth.identity.current_user_id`` in a
view's ``login_required``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from flask import Flask, Response
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from taskapp import cors, db, errors, http_metrics, ratelimit, request_id, tracing, validation
from taskapp.fastpath import FastPath
from taskapp.responses import response_cache

Hook = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Layer = Callable[[WsgiApp], WsgiApp]


def install(app: Flask) -> None:
    """Put the pipeline around ``app``: its error handlers, its hooks, its WSGI layers."""
    for exception, handler in error_handlers():
        app.register_error_handler(exception, handler)
    for hook in before_request(app):
        app.before_request(hook)
    if app.config["CORS_ORIGINS"]:
        # CORS's headers go onto the final response, after every other after_request hook:
        # registered before them (flask-cors registers its hook itself), so they run last.
        cors.init_app(app)
    for hook in reversed(after_request()):
        app.after_request(hook)
    for hook in reversed(teardown_request()):
        app.teardown_request(hook)
    for layer in reversed(wsgi_layers(app)):
        app.wsgi_app = layer(app.wsgi_app)  # type: ignore[method-assign,assignment]


def wsgi_layers(app: Flask) -> list[Layer]:
    """The WSGI layers around Flask's dispatch, outermost first."""
    layers: list[Layer] = []
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        # First: the client address (the per-address limits, logs) and scheme as the proxies
        # saw them, trusting exactly that many hops of X-Forwarded-For/-Proto and no client's.
        layers.append(partial(ProxyFix, x_for=hops, x_proto=hops))
    # Outside every other layer: every answer gets X-Request-ID (the fast path's hits, errors,
    # 304s alike), and every log line and span of the request its id.
    layers.append(request_id.RequestIds)
    if tracing.provider() is not None:
        layers.append(tracing.middleware)  # a span around each request, the fast path's too
    if app.config["HTTP_FAST_PATH"]:
        # Last before Flask: response-cache hits answered without Flask's request context; any
        # other request goes on to Flask with what this layer learned (its RequestState).
        layers.append(partial(FastPath, app, response_cache))
    return layers


def before_request(app: Flask) -> list[Hook]:
    """Flask's ``before_request`` hooks, in the order they run; one that answers (a preflight,
    a 429, a 422, a cached answer) ends the list, and the ``after_request`` hooks still run."""
    hooks: list[Hook] = []
    if tracing.provider() is not None:
        hooks.append(tracing.name_span)  # first: the span is named by its route, whoever answers
    if app.config["CORS_ORIGINS"]:
        # A preflight is answered 204 before anything checks the request it announces (its
        # token, its limit, its query string: the real request gets its JSON error).
        hooks.append(cors.preflight)
    hooks += [
        # The request's clock, unless the fast path started it.
        http_metrics.start_request,
        # The user's limit, counted in the admission call that also checks the token's
        # revocation (one Redis call, which the fast path may have made already).
        ratelimit.limit_user,
        # Requests without a valid token, per client address: after limit_user, whose admission
        # decided whether the token is valid.
        ratelimit.limit_anonymous,
        # 422 for a query parameter the route does not read, before the response cache keys it.
        validation.check_query,
        # Last: only a request that every check admitted is answered from the cache.
        response_cache.serve_cached,
    ]
    return hooks


def after_request() -> list[Hook]:
    """Flask's ``after_request`` hooks, in the order they run (then CORS's, when CORS_ORIGINS
    is set: flask-cors's headers, then ``Vary: Origin`` and a preflight's methods)."""
    return [
        # The view's 200 stored under its lease and given X-Cache and its ETag (or made a 304).
        response_cache.store_answer,
        # The RateLimit fields of every limit that counted the request (a 429 and a 304 too).
        ratelimit.add_fields,
        # The request's latency by route and its final status.
        http_metrics.finish_request,
    ]


def teardown_request() -> list[Hook]:
    """Flask's ``teardown_request`` hooks, in the order they run (whatever the request's end)."""
    return [
        response_cache.release_leases,  # a fill lock no answer was stored under, given back
        db.leave_gate,  # the MongoDB gate's probe, when this request was it
    ]


def error_handlers() -> list[tuple[type[Exception], Hook]]:
    """Every error as problem details (``errors.py``); Flask picks the handler of the most
    specific class an exception is, so their order carries nothing."""
    return [
        (HTTPException, errors.handle_http_exception),
        (ValidationError, errors.handle_validation_error),
        (ConnectionFailure, db.handle_unavailable),
        (Exception, _unexpected),
    ]


def _unexpected(exc: Exception) -> Response:
    """A MongoDB timeout that is no ConnectionFailure (the server's own time limit, or one that
    mongoengine re-raised as its OperationError) is an outage, not a bug: 503; anything else
    is a bug: 500."""
    if db.unavailable(exc):
        return db.handle_unavailable(exc)
    return errors.handle_unexpected_error(exc)
