"""Response-cache hits answered in front of Flask's dispatch (HTTP_FAST_PATH, on by default).

``FastPath`` wraps ``app.wsgi_app``. For a GET or HEAD of a route marked ``cached_response`` with
a valid token, an allowed rate limit and a cached answer, it answers with the very code the Flask
path runs (the token check, the rate limit, the key, the lookup, the headers and the metrics are
the same functions), without Flask's request context, routing hooks or response object. Anything
else is handed to Flask: other methods and routes, a bad query string, no or an invalid token, a
request over the limit, ``Cache-Control: no-cache``, a miss, Redis unavailable, any error here,
and, when ``CORS_ORIGINS`` is set, a request with an ``Origin`` header (flask-cors answers those,
so CORS headers have one author). What it learned goes with the request in its state
(``RequestState``, in the WSGI environ: the admission call's answer, the lookup and its fill lock,
the user's scope version), so Flask neither counts the request twice nor looks it up twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.datastructures import ImmutableMultiDict, MultiDict, RequestCacheControl
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cache_control_header
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response

from taskapp import http_metrics, ratelimit, tracing
from taskapp.auth import revocation
from taskapp.auth.tokens import access_of
from taskapp.cache import Readers, RequestState, ResponseCache, Verdict
from taskapp.validation import query_problem

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Status lines as werkzeug writes them.
_STATUS = {code: Response(status=code).status for code in (200, 304)}


_NO_ARGS: ImmutableMultiDict[str, str] = ImmutableMultiDict()

#: How many paths the route memo keeps before it starts again (task ids make paths many).
ROUTE_MEMO_SIZE = 4096
_UNKNOWN = object()

#: A matched route the response cache may answer: its rule (the metrics' label), its view and
#: who may read its cached answers.
Route = tuple[str, Callable[..., Any], Readers]


class FastPath:
    """A WSGI layer answering response-cache hits of ``app`` before Flask's dispatch."""

    def __init__(self, app: Flask, responses: ResponseCache, wsgi_app: WsgiApp) -> None:
        self.flask = app
        self.responses = responses
        self.next = wsgi_app
        self.secret: str = app.config["SECRET_KEY"]
        self.limit: int = app.config["RATE_LIMIT_PER_MINUTE"]
        self.cors = bool(app.config["CORS_ORIGINS"])
        self.traced = tracing.provider() is not None
        # taskapp.cors adds Origin to Vary on every response when CORS is configured.
        self.vary = "Authorization, Origin" if self.cors else "Authorization"
        # Routing is a function of the path alone unless hosts or subdomains take part in it.
        self.routes: dict[str, Route | None] | None = (
            None
            if app.config["SERVER_NAME"] or app.url_map.host_matching or app.subdomain_matching
            else {}
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method == "GET" or method == "HEAD":
            try:
                answered = self.answer(environ)
            except Exception:  # a bug here must cost speed, never an answer: Flask answers
                log.exception("response cache fast path failed; handing the request to Flask")
                answered = None
            if answered is not None:
                status, headers, body = answered
                start_response(_STATUS[status], headers)
                return [body] if body and method == "GET" else []
        return self.next(environ, start_response)

    def answer(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The cached answer to this request, or None to hand it to Flask."""
        state = RequestState.of(environ)  # the Flask path's latency includes the time spent here
        if self.cors and "HTTP_ORIGIN" in environ:
            return None
        path_info: str = environ.get("PATH_INFO") or ""
        if not path_info.isascii():
            return None  # werkzeug decodes such a path: Flask answers, with the path it sees
        route = self.route(environ)
        if route is None:
            return None
        rule, view, readers = route
        if self.traced:
            tracing.name_request(environ["REQUEST_METHOD"], rule)
        args: MultiDict[str, str] = _NO_ARGS
        if environ.get("QUERY_STRING"):
            args = self.flask.request_class(environ, populate_request=False).args
            if query_problem(args, view) is not None:
                return None
        access = access_of(environ.get("HTTP_AUTHORIZATION", ""), self.secret)
        if access is None or not readers(access.user_id):
            return None  # Flask answers: the view's own checks (401, 403)
        user = access.user_id
        cache_control = environ.get("HTTP_CACHE_CONTROL")
        if cache_control:
            asked = parse_cache_control_header(cache_control, None, RequestCacheControl)
            if asked.no_cache or asked.no_store:
                return None  # Flask counts it and answers without the response cache
        key = self.key(user, path_info, args)
        # The revocation check, the rate limit and the lookup in one call.
        state.admission, entry, _ = self.responses.lookup_after(
            self.flask, state, user, key, ratelimit.admission(access, self.limit)
        )
        if revocation.verdict_of(state.admission) != Verdict.OK:
            return None  # revoked, unknown or no Redis: Flask decides (401, or MongoDB)
        counted = ratelimit.counted(state)
        if counted is not None and not counted[0]:
            return None  # Flask answers the 429 from this count
        if entry is None:
            return None  # a miss: Flask answers, with this lookup's lease
        status, headers, body = self.responses.answer_hit(entry, environ, self.vary)
        if counted is not None:
            headers += ratelimit.header_items(self.limit, counted[1], counted[2])
        http_metrics.observe(state, environ["REQUEST_METHOD"], rule, status)
        return status, headers, body

    def key(self, user: str, path_info: str, args: Any) -> str:
        """The response cache's key of this request (``ResponseCache.request_key``)."""
        return self.responses.request_key(user, "/" + path_info.lstrip("/"), args)  # request.path

    def route(self, environ: dict[str, Any]) -> Route | None:
        """The route of a GET of this path when its view's answers are cached, else None;
        remembered by path (werkzeug's matching, with the request object it needs, is about a
        fifth of a hit's time in this layer: kept for the bench row without it)."""
        if self.routes is None:
            return self._match(environ)
        path_info = environ.get("PATH_INFO") or ""
        found = self.routes.get(path_info, _UNKNOWN)
        if found is _UNKNOWN:
            found = self._match(environ)
            if len(self.routes) >= ROUTE_MEMO_SIZE:
                self.routes.clear()
            self.routes[path_info] = found
        return found  # type: ignore[return-value]

    def _match(self, environ: dict[str, Any]) -> Route | None:
        app = self.flask
        adapter = app.create_url_adapter(app.request_class(environ, populate_request=False))
        if adapter is None:
            return None
        try:
            rule, _ = adapter.match(method="GET", return_rule=True)
        except (HTTPException, RequestRedirect):
            return None  # Flask answers the 404, 405 or redirect
        view: Callable[..., Any] | None = app.view_functions.get(rule.endpoint)
        readers = self.responses.readers(view)
        return (rule.rule, view, readers) if view is not None and readers is not None else None
