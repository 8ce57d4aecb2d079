"""The HTTP response cache: 200 JSON answers of authenticated GETs, per user, served as bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, current_app, g, request

from taskapp.cache import metrics, stats
from taskapp.cache.extension import RedisCache

Identity = Callable[[], str | None]


class ResponseCache:
    """Caches the JSON responses of the views marked with ``mark`` for each authenticated user.

    The lookup runs in ``before_request`` (after authentication and rate limiting, which are
    registered before it), the store in ``after_request``. A response is stored under a lease
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
    ) -> None:
        self.cache = cache
        self.identity = identity
        self.key = key
        self.tags = tags
        self.ttl_setting = ttl_setting

    def init_app(self, app: Flask) -> None:
        """Register the lookup and the store around every request."""
        app.config.setdefault(self.ttl_setting, 30)
        app.before_request(self._lookup)
        app.after_request(self._finish)
        app.teardown_request(self._teardown)

    @staticmethod
    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        """Mark a view whose 200 JSON responses may be cached per user."""
        view._cache_response = True  # type: ignore[attr-defined]
        return view

    def _lookup(self) -> Response | None:
        if request.method != "GET":
            return None
        view = current_app.view_functions.get(request.endpoint or "")
        if not getattr(view, "_cache_response", False):
            return None
        user = self.identity()
        if user is None:
            return None
        query = ""
        if request.query_string:
            query = _canonical_query()
        key = self.key(user, request.method, request.path, query)
        context = g._response_cache = {"user": user, "hit": False, "lease": None}
        if request.cache_control.no_cache or request.cache_control.no_store:
            return None  # the client asked for a fresh answer: neither looked up nor stored
        entry, context["lease"] = self.cache.lookup(key, self.tags(user))
        if entry is not None:
            metrics.HTTP_HIT.inc()
            self.cache.record(stats.HTTP_HIT, "http")
            context["hit"] = True
            return self._respond(entry.raw_value, entry.meta["etag"], "HIT")
        metrics.HTTP_MISS.inc()
        self.cache.record(stats.HTTP_MISS, "http")
        return None

    def _finish(self, response: Response) -> Response:
        context = g.get("_response_cache")
        if context is None or context["hit"] or response.status_code != 200:
            return response
        body = response.get_data()
        etag = _etag(context["user"], body)
        outcome = "MISS" if self.cache.source_was_read() else "HIT"
        lease = context.pop("lease")
        if lease is not None and self._storable(response):
            ttl = current_app.config[self.ttl_setting]
            self.cache.store_leased(lease, body, ttl=ttl, meta={"etag": etag})
        elif lease is not None:
            self.cache.release(lease)
        if response.is_json:
            return self._respond(body, etag, outcome, response)
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        """Release a fill lock no answer was stored under (an error, a non-200), so the callers
        waiting for it retry at once instead of after the lock's TTL."""
        context = g.pop("_response_cache", None)
        lease = context.get("lease") if context is not None else None
        if lease is not None:
            self.cache.release(lease)

    @staticmethod
    def _storable(response: Response) -> bool:
        return response.is_json and not response.cache_control.no_store

    @staticmethod
    def _respond(
        body: bytes, etag: str, outcome: str, response: Response | None = None
    ) -> Response:
        """A 200 (or 304 for a matching If-None-Match) with the cache headers."""
        if response is None:
            response = Response(body, status=200, mimetype="application/json")
            response.headers["Vary"] = "Authorization"
        else:
            response.vary.add("Authorization")
        response.headers["X-Cache"] = outcome
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = "private, no-cache"
        if "If-None-Match" in request.headers and request.if_none_match.contains_raw(etag):
            response.status_code = 304
            response.set_data(b"")
            response.headers.pop("Content-Length", None)
        return response


def _canonical_query() -> str:
    """The query string with its parameters in name order: one entry for any order of them.

    Sorted by name only, so a repeated parameter keeps the order of its values (a view reading
    the first one answers by it), and encoded again, so that no value holding ``&`` or ``=``
    passes for other parameters.
    """
    return urlencode(sorted(request.args.items(multi=True), key=lambda item: item[0]))


def _etag(user: str, body: bytes) -> str:
    """An ETag of the body for one user only (equal bodies of two users never share one)."""
    digest = hashlib.blake2b(body, key=user.encode()[:64], digest_size=16).hexdigest()
    return f'"{digest}"'
