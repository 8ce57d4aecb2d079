"""The HTTP response cache: 200 JSON answers of authenticated GETs, per user, served as bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, current_app, g, request
from werkzeug.http import parse_etags, unquote_etag

from taskapp.cache.admission import Admission, Answer
from taskapp.cache.context import RequestState
from taskapp.cache.entry import Entry
from taskapp.cache.extension import RedisCache
from taskapp.cache.region import Lease, refused

Identity = Callable[[], str | None]
#: Who may read a view's cached answers: a check of the request's identity, made every time.
Readers = Callable[[str], bool]
View = Callable[..., Any]


class ResponseCache:
    """Caches the JSON responses of the views marked with ``mark`` for each authenticated user.

    The lookup runs in ``before_request`` (``serve_cached``: after authentication and rate
    limiting, which run before it), the store in ``after_request`` (``store_answer``) and the
    release of an unused fill lock in ``teardown_request`` (``release_leases``); ``init_app``
    registers the three, or an app that states the order of its hooks registers them itself.
    A response is stored under a lease
    taken before the view ran, so a write that lands while the view reads cannot leave an old
    response behind. Requests without a valid identity are never looked up nor stored: their
    view answers 401 even when the same URL is cached for someone else.
    """

    def __init__(
        self,
        cache: RedisCache,
        *,
        identity: Identity,
        key: Callable[[str, str, str, str], str],
        tags: Callable[[str], Iterable[str]],
        ttl_setting: str = "HTTP_CACHE_TTL",
        ignored_parameters: Iterable[str] = (),
    ) -> None:
        self.cache = cache
        self.identity = identity
        self.key = key
        self.tags = tags
        self.ttl_setting = ttl_setting
        self.ignored_parameters = frozenset(ignored_parameters)

    def init_app(self, app: Flask) -> None:
        """Register the lookup and the store around every request."""
        app.config.setdefault(self.ttl_setting, 30)
        app.before_request(self.serve_cached)
        app.after_request(self.store_answer)
        app.teardown_request(self.release_leases)

    @staticmethod
    def mark(*, readers: Readers) -> Callable[[View], View]:
        """Mark a view whose 200 JSON responses may be cached per user.

        ``readers(identity)`` says who may read them. It is checked before any cached answer is
        served, on every path (a cached answer never runs the view's own decorators), so a view
        cannot be cached without declaring who may read it, and a revoked permission holds from
        the next request. Never cache the permission itself: it is asked every time.
        """

        def decorate(view: View) -> View:
            view._cache_readers = readers  # type: ignore[attr-defined]
            return view

        return decorate

    @staticmethod
    def readers(view: Callable[..., Any] | None) -> Readers | None:
        """Who may read ``view``'s cached answers (``mark``), or None when it is not cached."""
        return getattr(view, "_cache_readers", None)

    def request_key(self, user: str, path: str, args: Any) -> str:
        """The cache key of a GET (or HEAD) of ``path`` with query ``args`` by ``user``."""
        return self.key(user, "GET", path, self._query(args))

    def lookup(
        self, request_state: RequestState, user: str, key: str
    ) -> tuple[Entry | None, Lease | None]:
        """The cached entry of ``key``, else a lease to fill it; counted as an http hit or miss.

        Once per request: a layer in front of Flask that looked up and then handed the request
        on left its answer (and the fill lock it took) in the request's state, used here.
        """
        earlier = request_state.take_looked_up()
        if earlier is not None and earlier[0] == key:
            return earlier[1], earlier[2]
        if earlier is not None:
            self._release(earlier[2])
        return self.cache.lookup(key, self.tags(user), layer=LAYER)

    def lookup_after(
        self, app: Flask, request_state: RequestState, user: str, key: str, admission: Admission
    ) -> tuple[Answer | None, Entry | None, Lease | None]:
        """For a layer in front of ``app``'s dispatch: the request's ``admission`` and then the
        lookup, in one call: (its answer, entry, lease). When a check refuses, the lookup is
        neither made nor counted; see ``RedisCache.lookup_after``. A miss's lease goes with the
        request to Flask's path."""
        answer, entry, lease = self.cache.lookup_after(
            admission, key, self.tags(user), layer=LAYER, request=request_state, app=app
        )
        if entry is None and not refused(answer):  # looked up (or Redis is down): not again
            request_state.looked_up = (key, entry, lease)
        return answer, entry, lease

    def serve_cached(self) -> Response | None:
        """``before_request``: answer a marked view's GET or HEAD from the cache when its user
        may read it and an answer is cached; else note the lease the view's answer is stored
        under (``store_answer``)."""
        if request.method not in ("GET", "HEAD"):  # HEAD: a GET's answer without its body
            return None
        readers = self.readers(current_app.view_functions.get(request.endpoint or ""))
        if readers is None:
            return None
        user = self.identity()
        if user is None or not readers(user):
            return None  # the view answers (its own checks: 401, 403), and nothing is stored
        key = self.request_key(user, request.path, request.args)
        context = g._response_cache = {"user": user, "hit": False, "lease": None}
        if request.cache_control.no_cache or request.cache_control.no_store:
            return None  # the client asked for a fresh answer: neither looked up nor stored
        entry, context["lease"] = self.lookup(RequestState.of(request.environ), user, key)
        if entry is not None:
            context["hit"] = True
            status, headers, body = self.answer_hit(entry, request.environ)
            return Response(body, status, headers)
        return None

    def _query(self, args: Any) -> str:
        """The query string as the key sees it: parameters sorted by name (any order, one entry),
        the values of a repeated one in the order sent (a view reading the first value and a view
        reading them all are both told apart), escaped (a value holding ``&`` or ``=`` cannot
        pose as other parameters), and without the ignored ones (a cache-buster)."""
        if not args:
            return ""
        return urlencode(
            [
                (name, value)
                for name in sorted(args)
                if name not in self.ignored_parameters
                for value in args.getlist(name)
            ]
        )

    @staticmethod
    def answer_hit(
        entry: Entry, environ: dict[str, Any], vary: str = "Authorization"
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A cached entry's answer to the request of ``environ`` as (status, headers, body): the
        very answer of both the Flask path and a WSGI layer in front of it (see ``answer``)."""
        return answer(entry.raw_value, entry.meta["etag"], "HIT", environ.get(IF_NONE_MATCH), vary)

    def store_answer(self, response: Response) -> Response:
        """``after_request``: store the view's 200 JSON answer under the lease taken before it
        ran, and give it the cache headers (a 304 for a matching If-None-Match)."""
        context = g.get("_response_cache")
        if context is None or context["hit"] or response.status_code != 200:
            return response
        body = response.get_data()
        tag = etag(context["user"], body)
        outcome = "MISS" if self.cache.source_was_read() else "HIT"
        lease = context.pop("lease")
        if lease is not None and self._storable(response):
            ttl = current_app.config[self.ttl_setting]
            self.cache.store_leased(lease, body, ttl=ttl, meta={"etag": tag})
        elif lease is not None:
            self.cache.release(lease)
        if response.is_json:
            return self._respond(body, tag, outcome, response)
        return response

    def release_leases(self, exc: BaseException | None) -> None:
        """``teardown_request``: release a fill lock no answer was stored under (an error, a
        non-200, or a lookup of a layer in front that Flask never reached), so the callers
        waiting for it retry at once instead of after the lock's TTL."""
        context = g.pop("_response_cache", None)
        self._release(context.get("lease") if context is not None else None)
        earlier = RequestState.of(request.environ).take_looked_up()
        self._release(earlier[2] if earlier is not None else None)

    def _release(self, lease: Lease | None) -> None:
        if lease is not None:
            self.cache.release(lease)

    @staticmethod
    def _storable(response: Response) -> bool:
        return response.is_json and not response.cache_control.no_store

    @staticmethod
    def _respond(body: bytes, etag: str, outcome: str, response: Response) -> Response:
        """The view's 200 (or a 304 for a matching If-None-Match) with the cache headers."""
        response.vary.add("Authorization")
        response.headers["X-Cache"] = outcome
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = CACHE_CONTROL
        if not_modified(request.environ.get(IF_NONE_MATCH), etag):
            response.status_code = 304
            response.set_data(b"")
            response.headers.pop("Content-Length", None)
        return response


#: The layer the response cache's lookups are counted in (taskapp_cache_requests_total).
LAYER = "http"

IF_NONE_MATCH = "HTTP_IF_NONE_MATCH"
CACHE_CONTROL = "private, no-cache"


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """True when an If-None-Match header value matches ``etag``.

    Weak comparison (RFC 9110 13.1.2): W/"x" matches "x", as a proxy that compresses the body
    (nginx's gzip) turns the ETag weak; "*" matches any.
    """
    return bool(if_none_match) and parse_etags(if_none_match).contains_weak(unquote_etag(etag)[0])


def answer(
    body: bytes, etag: str, outcome: str, if_none_match: str | None, vary: str = "Authorization"
) -> tuple[int, list[tuple[str, str]], bytes]:
    """A cached answer as (status, headers, body): a 200 JSON, or a 304 without the body's
    headers for a matching If-None-Match (what werkzeug sends for a 304). HEAD gets the same
    headers; the server leaves out the body. Both the Flask path and a WSGI layer in front of
    it answer a hit with exactly this."""
    headers = [
        ("Vary", vary),
        ("X-Cache", outcome),
        ("ETag", etag),
        ("Cache-Control", CACHE_CONTROL),
    ]
    if not_modified(if_none_match, etag):
        return 304, headers, b""
    return (
        200,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
        body,
    )


def etag(user: str, body: bytes) -> str:
    """An ETag of the body for one user only (equal bodies of two users never share one)."""
    digest = hashlib.blake2b(body, key=user.encode()[:64], digest_size=16).hexdigest()
    return f'"{digest}"'
