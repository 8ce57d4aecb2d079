"""The app's HTTP response cache (the cache extension's ResponseCache with taskapp's keys and
auth; its hooks and its fast path are placed by ``taskapp.pipeline``), and the empty answer of a
success without content."""

from __future__ import annotations

from flask import Response

from taskapp import keys
from taskapp.auth.identity import current_user_id
from taskapp.cache import ResponseCache
from taskapp.extensions import cache
from taskapp.validation import CACHE_BUSTER

response_cache = ResponseCache(
    cache,
    identity=current_user_id,
    key=keys.response,
    tags=lambda user_id: [keys.responses_tag(user_id)],
    ignored_parameters=(CACHE_BUSTER,),
)

#: ``@cached_response(readers=...)``: a view whose 200 JSON responses are cached per user, and
#: who may read them (checked before any cached answer, on both paths).
cached_response = response_cache.mark


def no_content() -> Response:
    """A 204: no body, so no Content-Type either (RFC 9110 section 8.3)."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def signed_in(user_id: str) -> bool:
    """Any user with a valid token: the answers are keyed by that user and hold only their own
    data (a foreign id is a 404 of the view, cached for that user alone)."""
    return True
