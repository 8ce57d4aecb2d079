"""Revoked tokens: decided in MongoDB, checked on every request inside the Redis call it makes
anyway.

MongoDB is the source of truth: a login is a ``Session`` (revoked on logout or when its refresh
token is reused), and a user has a ``token_generation`` (raised by a password change); a deleted
user has no document. Each user has one Redis hash, ``{u:<id>}:revoked``, in the user's hash slot:

- ``built``: the run mark of the Redis server run that built the hash from MongoDB (see
  ``taskapp/cache/library.lua``: a mark that a restart or a failover resets). A missing hash
  (Redis restarted empty, flushed, evicted or expired), or one built by another server run
  (restored from an RDB or AOF file without the revocations made after it was written, or a
  replica promoted without them), therefore never reads as "nothing revoked": the check says
  ``Verdict.UNKNOWN`` and the Flask path rebuilds the hash from MongoDB, then checks again;
- ``gen``: the user's token generation; tokens of an older one are refused;
- ``gone``: the account was deleted;
- ``s:<session id>``: a revoked login.

Revocations write MongoDB first, then add to the hash. Writes only ever add (a generation only
grows), so a rebuild racing a revocation cannot undo it. The hash lives ACCESS_TOKEN_TTL from its
first write and is then rebuilt: a revoked login only matters while its access tokens live (its
refresh token is checked against MongoDB), and a hash that missed a revocation (its Redis write
failed while Redis kept its data) is wrong at most that long.

The check is the first step of a request's admission (``ratelimit.admission``: the check, then
the user's rate limit), which runs in the one Redis call the request makes anyway, in front of
the response cache's lookup on the fast path (the library's ``request`` function). It refuses
as a rate limit refuses, so a revoked token's request counts nowhere. While Redis is
unavailable every authenticated request is checked against MongoDB instead (docs/tokens.md,
"While Redis is down").
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import timedelta

from bson import ObjectId
from flask import current_app

from taskapp import db, keys
from taskapp.auth.tokens import CLOCK_MARGIN_S, Access
from taskapp.cache import NOT_ASKED, Admission, Answer, RequestState, Verdict
from taskapp.extensions import cache
from taskapp.models import Session, User, utcnow

__all__ = ["admitted", "check", "verdict_of"]

log = logging.getLogger(__name__)


def check(access: Access) -> Admission:
    """The revocation check of ``access``."""
    return Admission().revocation(
        keys.revocation(access.user_id), access.session_id, access.generation
    )


def verdict_of(answer: Answer | None) -> int | None:
    """The verdict in the answer of an admission that begins with ``check`` (a request's,
    ``ratelimit.admission``): a ``Verdict``, or None (Redis unavailable)."""
    return None if answer is None else answer.verdict


def admitted(request: RequestState, access: Access) -> bool:
    """True when ``access`` was not revoked: the verdict of the admission this request already
    made, else of one call now; a missing hash is rebuilt from MongoDB; without Redis, MongoDB
    decides."""

    def ask() -> int | None:
        request.admission = cache.admit(check(access))
        return verdict_of(request.admission)

    verdict = ask() if request.admission is NOT_ASKED else verdict_of(request.admission)
    if verdict == Verdict.UNKNOWN:
        rebuild(access.user_id)
        verdict = ask()
    if verdict == Verdict.UNKNOWN or verdict is None:
        # Redis lost the hash again or cannot be asked: the source of truth decides.
        return _admitted_by_mongodb(access)
    return verdict == Verdict.OK


def _admitted_by_mongodb(access: Access) -> bool:
    """The check of ``access`` against MongoDB: one read of its session, which a logout or a
    reused refresh token revokes, a password change revokes with all others of the user, and an
    account deletion deletes (a login that raced either revokes its own: ``start_session``)."""
    session = db.read(
        lambda: Session.objects(id=ObjectId(access.session_id)).only("user", "revoked").first()
    )
    return session is not None and str(session.user) == access.user_id and not session.revoked


def rebuild(user_id: str) -> None:
    """Build the user's revocation hash from MongoDB (a missing hash refuses nothing until then).

    The hash is marked before MongoDB is read and written only if it still carries that mark, so
    a revocation recorded meanwhile is either in what was read or added to the same hash.
    """
    key = keys.revocation(user_id)
    build = cache.call("revocation_begin", [key], cache.versioned(_ttl_ms(), os.urandom(8).hex()))
    if build is None:
        return
    oid = ObjectId(user_id)
    user = db.read(lambda: User.objects(id=oid).only("token_generation").first())
    since = utcnow() - timedelta(seconds=current_app.config["ACCESS_TOKEN_TTL"])
    revoked = db.read(
        lambda: [str(s.id) for s in Session.objects(user=oid, revoked_at__gt=since).only("id")]
    )
    generation = None if user is None else user.token_generation
    _record(user_id, build=build, generation=generation, gone=user is None, sessions=revoked)


def claim_refresh(user_id: str, refresh_id: str, expires_at: int) -> bool | None:
    """True for the first presentation of a refresh token, False for a later one, None when
    Redis cannot say. With MongoDB's conditional rotation this makes a refresh token single use
    also on a MongoDB that loses concurrent updates of one document (FerretDB 1.24).

    The claim lives as long as the token can still be presented: until its ``exp``
    (``expires_at``, Unix seconds) by this host's clock, plus ``tokens.CLOCK_MARGIN_S``.
    """
    ttl_ms = max(math.ceil((expires_at + CLOCK_MARGIN_S - time.time()) * 1000), 1)
    claimed = cache.call("claim", [keys.refresh_claim(user_id, refresh_id)], [ttl_ms])
    return None if claimed is None else bool(int(claimed))


def revoke_session(user_id: str, session_id: str) -> None:
    """Refuse the tokens of one login from now on (after MongoDB recorded it)."""
    _record(user_id, sessions=[session_id])


def revoke_generation(user_id: str, generation: int) -> None:
    """Refuse the user's tokens of generations below ``generation`` (after MongoDB raised it)."""
    _record(user_id, generation=generation)


def revoke_user(user_id: str) -> None:
    """Refuse every token of a deleted user (after MongoDB deleted the account)."""
    _record(user_id, gone=True)


def _record(
    user_id: str,
    *,
    build: str | bytes = "",
    generation: int | None = None,
    gone: bool = False,
    sessions: list[str] | tuple[str, ...] = (),
) -> None:
    args = cache.versioned(
        _ttl_ms(),
        build.decode() if isinstance(build, bytes) else build,
        "" if generation is None else str(generation),
        "1" if gone else "0",
        *(f"s:{session}" for session in sessions),
    )
    recorded = [keys.revocation(user_id)]
    if build:
        cache.call("revocation_record", recorded, args, with_scope=True)
        return  # a build that did not record is made again by the next request
    if cache.call("revocation_record", recorded, args, must_reach=True, with_scope=True) is None:
        # MongoDB has it, and while Redis is down every request is checked there; this process
        # sends it before it uses the cache again.
        log.warning("revocation of user %s held back until Redis takes it", user_id)


def _ttl_ms() -> int:
    return int(current_app.config["ACCESS_TOKEN_TTL"]) * 1000
