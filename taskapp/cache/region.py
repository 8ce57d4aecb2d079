"""The region: get, set, get-or-set with refresh-ahead, leases, and the in-process layer.

Reads look in the in-process layer, then Redis. Every write either bumps the versions a fill
read before its fetch (so a fill that began before the write is refused, and an entry stored
before it is never served again) or is itself a fill checked against them. Versions are unique
per change and per Redis server run (``library.lua``), so no check is satisfied by state made
before Redis lost it. The in-process layer serves an entry only while its scope version is the
one Redis has (read-your-writes across processes).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from flask import current_app

from taskapp.cache import metrics, stats, tracing
from taskapp.cache.admission import NONE, Admission, Answer
from taskapp.cache.client import Unavailable
from taskapp.cache.context import RequestState, mark_source_read
from taskapp.cache.counting import EventCounter
from taskapp.cache.entry import Entry, dumps
from taskapp.cache.l1 import LocalCache
from taskapp.cache.lock import FillLock
from taskapp.cache.scope_state import Admitter, Plan
from taskapp.cache.settings import CacheSettings
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

Ttl = int | float | Callable[[Any], float] | None


_LOOK = object()  # _from_memory's default: look in memory first


class Lease(NamedTuple):
    """The versions an entry's key and tags had before its source was read, and the fill
    lock's token when this caller holds it."""

    full_key: str
    tags: list[str]
    versions: list[bytes]
    token: str = ""


def refused(answer: Answer | None) -> bool:
    """True when a check of a request's admission refused it. None (Redis unavailable) is no
    refusal."""
    return answer is not None and not answer.admitted


def xfetch_due(entry: Entry, beta: float = 1.0) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early with a probability that grows as the
    expiry nears, scaled by how long the fetch took (a floor of 1 ms for very fast fetches)."""
    delta = max(entry.fetch_seconds, 0.001)
    return time.time() - delta * beta * math.log(1.0 - random.random()) >= entry.expires_at


def fetch_source(fetch: Callable[[], Any]) -> tuple[Any, float]:
    """``fetch()`` and how long it took, noted as a read of the source of truth."""
    mark_source_read()
    started = time.monotonic()
    value = fetch()
    return value, time.monotonic() - started


class Region:
    """Reads and writes of one app's cache in one process."""

    def __init__(
        self,
        settings: CacheSettings,
        store: Store,
        lock: FillLock,
        l1: LocalCache,
        counter: EventCounter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = store.keys
        self.lock = lock
        self.l1 = l1
        self.counter = counter
        # Hits admitted with one BITFIELD (off Cluster and the embedded server: see Store.direct).
        self.admitter = Admitter(store.keys, store.direct) if store.direct is not None else None
        # Refresh-ahead work: a small bounded pool, shut down with the cache (never a thread per key).
        self.refresher = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="taskapp-cache-refresh"
        )
        self._refreshing: set[str] = set()
        self._refreshing_lock = threading.Lock()

    # -- reads --------------------------------------------------------------------------

    def read(self, full_key: str, request: RequestState | None) -> Entry | None:
        """The entry under ``full_key`` from memory, else Redis; None on a miss or an outage.
        ``request``: the state of the request reading, if any (it keeps the scope versions)."""
        entry = self._from_memory(full_key, request)
        if entry is not None:
            return entry
        try:
            payload, _, scope, *_ = self.request(
                NONE, "E", self._lookup_keys(full_key, []), [0, "", 0], op="get"
            ).read
        except Unavailable:
            return None
        return self._from_redis(
            full_key, payload, self._note_scope(self.keys.scope_version(full_key), scope, request)
        )

    def request(
        self,
        admission: Admission,
        read: str,
        keys: list[str],
        args: list[Any],
        op: str = "get",
        scope: str = "",
    ) -> Answer:
        """One call of the library's ``request``: ``admission``'s checks (a limit in the scope
        counts in the state of ``scope``, a scope version's key), then ``read`` ('E' an entry's
        read, 'S' a version, '' nothing) on ``keys`` with ``args``. Raises Unavailable."""
        steps, all_keys, step_args = admission.call(self.keys.entry, read, keys, args, scope)
        reply = self.store.call(
            "request", all_keys, [steps, *self.store.versioned(), *step_args], op=op
        )
        return Answer.decode(steps, reply)

    def _from_memory(
        self, full_key: str, request: RequestState | None, found: Any = _LOOK
    ) -> Entry | None:
        """The fresh entry in the in-process layer, counted as an l1 hit or miss (``found``: what
        ``_in_memory`` returned, when the caller already looked).

        An entry counts only while its scope version is still Redis's (read-your-writes across
        processes): learned once per request from the first Redis call that returns it (such as
        the request's admission call), else from one call of its own.
        """
        if found is _LOOK:
            found = self._in_memory(full_key)
        if found is not None:
            entry, version = found
            if version == self._scope_version(full_key, request):
                self.counter.count(stats.L1_HIT, full_key)
                return entry  # type: ignore[no-any-return]
        if self.l1.active and not self.store.breaker.is_open:
            self.counter.count(stats.L1_MISS, full_key)
        return None

    def _scope_version(self, full_key: str, request: RequestState | None) -> bytes | None:
        """The current version of ``full_key``'s scope: this request's, else read from Redis."""
        scope_key = self.keys.scope_version(full_key)
        known = request.scopes.get(scope_key) if request is not None else None
        if known is not None:
            return known
        try:
            version = self.store.read_version(scope_key, op="scope")
        except Unavailable:
            return None
        return self._note_scope(scope_key, version, request)

    @staticmethod
    def _note_scope(scope_key: str, version: bytes, request: RequestState | None) -> bytes:
        """Keep a scope version Redis returned for the rest of ``request``; the version."""
        if request is not None:
            request.scopes[scope_key] = version
        return version

    def _from_redis(self, full_key: str, raw: bytes | None, scope: bytes) -> Entry | None:
        """Decode what Redis returned, count it, and keep a fresh entry in memory."""
        entry = None
        if raw is not None:
            try:
                entry = Entry.decode(raw)
            except ValueError:
                log.warning("ignoring an undecodable cache entry %r", full_key)
        if entry is None:
            self.counter.count(stats.REDIS_MISS, full_key)
            return None
        self.counter.count(stats.REDIS_HIT, full_key)
        if entry.is_fresh():
            self._remember(full_key, entry, scope)
        return entry

    def _remember(self, full_key: str, entry: Entry, scope: bytes) -> None:
        """Keep an entry in memory under the scope version Redis returned with it, when its
        tags are in its scope (an invalidation of a tag outside it would not bump that scope,
        so such an entry is served from Redis only)."""
        if self._stamp(full_key, entry.tags):
            self.l1.put(full_key, entry, scope)

    def _stamp(self, full_key: str, tags: list[str]) -> str:
        """'1' when every tag of an entry is in the entry's own scope, so that a change of any
        of its versions bumps its scope version (a stamped entry in Redis, an entry in memory),
        else ''."""
        own = self.keys.scope_version(full_key)
        in_scope = all(self.keys.scope_version(self.keys.tag_version(t)) == own for t in tags)
        return "1" if in_scope else ""

    def lookup(
        self, full_key: str, tags: list[str], request: RequestState | None
    ) -> tuple[Entry | None, Lease | None]:
        """The fresh entry of ``full_key``; on a miss, a lease to produce and store it.

        One caller across processes gets a lease holding the fill lock; the others wait for that
        fill and get the entry (while the holder renews its lock), or after CACHE_FILL_TIMEOUT a
        lease without the lock. The read, the lease and the lock take one round trip. (None,
        None) when Redis is unavailable.
        """
        self.store.check_slots(full_key, tags)
        entry = self._from_memory(full_key, request)
        if entry is not None:
            return entry, None
        entry, lease, _ = self._lookup(full_key, tags, NONE, request)
        return entry, lease

    def lookup_after(
        self,
        admission: Admission,
        full_key: str,
        tags: list[str],
        request: RequestState | None,
    ) -> tuple[Answer | None, Entry | None, Lease | None]:
        """Run ``admission``'s checks and then ``lookup``, in one call: (its answer, entry,
        lease).

        When a check refuses, nothing is looked up and no lock is taken: (its answer, None,
        None). When memory holds the entry, the scope version that checks it is read in that
        call instead of the lookup. The answer is None when Redis is unavailable.
        """
        self.store.check_slots(full_key, tags)
        found = self._in_memory(full_key)
        if found is None:
            entry, lease, looked_up = self._lookup(full_key, tags, admission, request)
            return looked_up, entry, lease
        try:
            answer = self.admit(admission, full_key, request)
        except Unavailable:
            return None, None, None
        if refused(answer):
            return answer, None, None
        entry = self._from_memory(full_key, request, found)  # checked by the version just read
        if entry is not None:
            return answer, entry, None
        entry, lease, _ = self._lookup(full_key, tags, NONE, request)
        return answer, entry, lease

    def admit(self, admission: Admission, full_key: str, request: RequestState | None) -> Answer:
        """Run ``admission``'s checks and read the scope version of ``full_key`` in the same
        call; the version is kept for ``request``'s memory reads. Raises Unavailable.

        With one BITFIELD when it can (``scope_state``), else with the library."""
        scope_key = self.keys.scope_version(full_key)
        plan = self._plan(admission, scope_key)
        if plan is not None:
            admitter = self.admitter
            answer, admission = self.store.run(
                lambda: admitter.admit(admission, plan, scope_key),  # type: ignore[union-attr]
                op="admission",
            )
            if answer is not None:
                self._note_scope(scope_key, answer.read, request)
                return answer
        answer = self.request(admission, "S", [scope_key], [], op="admission", scope=scope_key)
        if answer.admitted:
            self._note_scope(scope_key, answer.read, request)
            self._learn(plan, answer, answer.read)  # the plan of the admission as asked
        return answer

    def _plan(self, admission: Admission, scope_key: str) -> Plan | None:
        """What the BITFIELD of ``admission`` in ``scope_key`` checks; None when the library
        admits it (no ``Direct``, or a check outside the scope)."""
        return self.admitter.plan(admission, scope_key) if self.admitter is not None else None

    def _learn(self, plan: Plan | None, answer: Answer, version: bytes) -> None:
        """Remember the verdicts of an admission (of ``plan``) the library answered, under the
        scope version it read in the same call, for the next hit's BITFIELD."""
        if plan is not None:
            self.admitter.learn(plan, answer, version)  # type: ignore[union-attr]

    def _in_memory(self, full_key: str) -> tuple[Entry, bytes] | None:
        """The fresh entry of ``full_key`` in the in-process layer and the scope version it was
        read under; None when memory has none to offer. Not counted, not yet checked."""
        if not self.l1.active or self.store.breaker.is_open:
            return None
        found = self.l1.get(full_key)
        if found is None or not found[0].is_fresh():
            return None
        return found

    def _lookup_keys(self, full_key: str, tags: Iterable[str]) -> list[str]:
        """LOOKUP's keys: the entry, its lock, its scope version, its own and its tags' versions."""
        keys = self.keys
        return [
            full_key,
            keys.lock(full_key),
            keys.scope_version(full_key),
            *self._version_keys(full_key, tags),
        ]

    def _lookup(
        self,
        full_key: str,
        tags: list[str],
        admission: Admission,
        request: RequestState | None,
    ) -> tuple[Entry | None, Lease | None, Answer | None]:
        """Redis's part of a lookup (after the caller checked memory and the slots): an entry's
        read, after ``admission``'s checks in the first attempt, under the fill lock's wait
        loop; (entry, lease, the admission's answer, None when Redis was unavailable)."""
        keys = self._lookup_keys(full_key, tags)

        def read(checks: Admission, token: str) -> Answer:
            return self.request(
                checks, "E", keys, [len(tags), token, self.lock.ttl_ms], scope=keys[2]
            )

        def attempt(waited: bool) -> tuple[Entry | None, str, list[bytes]]:
            token = self.lock.token()
            return self._looked_up(full_key, read(NONE, token).read, token, waited, request)

        answer = first = None
        try:
            token = self.lock.token()
            answer = read(admission, token)
            if refused(answer):
                return None, None, answer  # nothing was read: no lock was taken
            self._learn(self._plan(admission, keys[2]), answer, answer.read[2])
            first = self._looked_up(full_key, answer.read, token, False, request)
            entry, token, versions = self.lock.fill_or_wait(
                full_key,
                attempt,
                lambda: self.read(full_key, request),
                first=first,
                request=request,
            )
        except Unavailable:  # nothing to wait for: no lease
            return None, None, answer
        if entry is not None:
            return entry, None, answer
        return None, Lease(full_key, tags, versions, token), answer

    def _looked_up(
        self,
        full_key: str,
        reply: list[Any],
        token: str,
        waited: bool,
        request: RequestState | None,
    ) -> tuple[Entry | None, str, list[bytes]]:
        """LOOKUP's reply as a fill-lock attempt: (the fresh entry, or None and the lock's token
        when LOOKUP took it, else ""; the versions to fill under)."""
        payload, took, scope, *versions = reply
        scope = self._note_scope(self.keys.scope_version(full_key), scope, request)
        if payload is not None or not waited:
            found = self._from_redis(full_key, payload, scope)
            if found is not None and found.is_fresh():
                return found, "", versions
        return None, token if took else "", versions

    def release(self, lease: Lease) -> None:
        """Give up a lease's fill lock without storing (the answer was not cacheable)."""
        if lease.token:
            self.lock.release(lease.full_key, lease.token)

    # -- writes -------------------------------------------------------------------------

    def set(
        self,
        full_key: str,
        value: Any,
        ttl: Ttl,
        tags: list[str],
        meta: dict[str, Any] | None,
        request: RequestState | None,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds, a member of ``tags``, atomically (an overwrite:
        fills in flight are refused and no process's memory serves the old value)."""
        seconds = self.ttl(ttl, value)
        entry = Entry(dumps(value), time.time() + seconds, tags, meta=meta)
        self.l1.discard([full_key])
        return self.store_entry(
            full_key, entry, seconds, None, request, announce=self.keys.fill_channel
        )

    def store_entry(
        self,
        full_key: str,
        entry: Entry,
        seconds: float,
        versions: list[bytes] | None,
        request: RequestState | None,
        token: str = "",
        stale_ttl: float = 0.0,
        announce: str = "",
    ) -> bool:
        """Run ``fill``: store under the current versions, unless ``versions`` (read before the
        fetch) changed since; without ``versions``, an overwrite. ``announce`` is the channel to
        publish the key on (the fill channel wakes the callers waiting for it). A fill Redis
        refuses (full) releases the lock, so its waiters fetch at once."""
        keys = self.keys
        self.store.check_slots(full_key, entry.tags)
        try:
            stored, scope = self.store.call(
                "fill",
                [
                    full_key,
                    keys.lock(full_key),
                    keys.scope_version(full_key),
                    *self._version_keys(full_key, entry.tags),
                ],
                self.store.versioned(
                    entry.encode(),
                    max(1, int((seconds + stale_ttl) * 1000)),
                    token,
                    announce,
                    self._stamp(full_key, entry.tags),
                    len(entry.tags),
                    *entry.tags,
                    *(versions or []),
                ),
                op="fill",
            )
        except Unavailable:
            if token:
                self.lock.release(full_key, token)
            return False
        finally:
            if token:
                self.lock.done(full_key, token)  # fill released it: no more renewals
        if stored:
            self._remember(
                full_key, entry, self._note_scope(self.keys.scope_version(full_key), scope, request)
            )
        return bool(stored)

    def store_leased(
        self,
        lease: Lease,
        raw_json: bytes,
        ttl: Ttl,
        meta: dict[str, Any] | None,
        request: RequestState | None,
    ) -> bool:
        """Store already-serialised JSON under a lease; False when an invalidation came first.

        A lease holding the fill lock releases it and wakes the callers waiting for the fill.
        """
        seconds = self.ttl(ttl, None)
        entry = Entry(raw_json, time.time() + seconds, lease.tags, meta=meta)
        announce = self.keys.fill_channel if lease.token else ""
        stored = self.store_entry(
            lease.full_key, entry, seconds, lease.versions, request, lease.token, announce=announce
        )
        if tracing.tracer is not None:
            tracing.note("fill" if stored else "refused_stale_fill")
        return stored

    def delete(self, full_keys: list[str], request: RequestState | None) -> int:
        """Delete entries everywhere (Redis and every process's memory); fills in flight lose."""
        self.l1.discard(full_keys)
        existed = self.store.delete(full_keys)
        _forget_scopes(request)
        return existed

    def invalidate_tags(self, tags: list[str], request: RequestState | None) -> int:
        """Invalidate every entry stored with any of ``tags``, fills in flight included; the
        number of tags Redis took now (0 when they were held back, to be sent before the cache
        is used again)."""
        sent = self.store.invalidate(tags)
        _forget_scopes(request)
        return len(tags) if sent else 0

    def write_lease(self, full_key: str) -> str:
        """The entry's own version, read before a write to the source (see ``write_through``);
        "" when Redis is unavailable (the write-through then only invalidates)."""
        try:
            return self.store.read_version(self.keys.version(full_key), op="write_through").decode()
        except Unavailable:
            return ""

    def write_through(
        self,
        full_key: str,
        value: Any,
        lease: str,
        ttl: Ttl,
        tags: list[str],
        dropped: list[str],
        request: RequestState | None,
    ) -> bool:
        """After a write to the source: invalidate ``dropped`` and store ``value``, atomically,
        when no other change of the entry came since ``lease`` was read (before the write);
        otherwise the entry is deleted and the next reader fills it from the source."""
        keys = self.keys
        self.store.check_slots(full_key, tags + dropped)
        seconds = self.ttl(ttl, value)
        entry = Entry(dumps(value), time.time() + seconds, tags)
        dropped_versions = [keys.tag_version(t) for t in dropped]
        try:
            stored = self.store.call(
                "write_through",
                [
                    full_key,
                    keys.scope_version(full_key),
                    *self._version_keys(full_key, tags),
                    *dropped_versions,
                    *(keys.scope_version(v) for v in dropped_versions),
                ],
                self.store.versioned(
                    entry.encode(),
                    int(seconds * 1000),
                    lease,
                    self._stamp(full_key, tags),
                    len(tags),
                    len(dropped),
                    *tags,
                ),
                op="write_through",
            )
        except Unavailable:
            self.store.held_back.hold(tags=dropped, keys=[full_key])
            stored = 0
        self.l1.discard([full_key])
        _forget_scopes(request)
        return bool(stored)

    # -- get or set ---------------------------------------------------------------------

    def get_or_set(
        self,
        full_key: str,
        fetch: Callable[[], Any],
        ttl: Ttl,
        tags: list[str],
        refresh_ahead: bool,
        request: RequestState | None,
    ) -> Any:
        """The cached value, or ``fetch()``'s, stored; one fetch per key at a time (see
        ``RedisCache.get_or_set``)."""
        self.store.check_slots(full_key, tags)
        entry = self.read(full_key, request)
        if entry is not None and entry.is_fresh():
            if refresh_ahead and xfetch_due(entry):
                self._refresh_in_background(full_key, fetch, ttl, tags, entry)
            return entry.value
        if entry is not None and refresh_ahead:
            self.counter.count(stats.STALE_SERVED, full_key)
            self._refresh_in_background(full_key, fetch, ttl, tags, entry)
            return entry.value
        return self._fill(full_key, fetch, ttl, tags, entry, request)

    def _fill(
        self,
        full_key: str,
        fetch: Callable[[], Any],
        ttl: Ttl,
        tags: list[str],
        stale: Entry | None,
        request: RequestState | None,
    ) -> Any:
        def attempt(waited: bool) -> tuple[None, str, None]:
            return None, self.lock.acquire(full_key), None

        try:
            entry, token, _ = self.lock.fill_or_wait(
                full_key, attempt, lambda: self.read(full_key, request), stale, request=request
            )
        except Unavailable:
            log.debug("no lock for %s: Redis unavailable, fetching without the cache", full_key)
            return fetch_source(fetch)[0]
        if entry is not None:
            return entry.value
        if not token:
            return fetch_source(fetch)[0]
        return self._fill_locked(full_key, fetch, ttl, tags, token, request)

    def _refresh_in_background(
        self, full_key: str, fetch: Callable[[], Any], ttl: Ttl, tags: list[str], seen: Entry
    ) -> None:
        """Refresh ``seen``, the entry a reader found, in the refresher pool; one refresher per
        key across all processes, and none once ``seen`` was replaced."""
        with self._refreshing_lock:
            if full_key in self._refreshing:
                return
            self._refreshing.add(full_key)
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def refresh() -> None:
            try:
                with app.app_context():
                    token = self.lock.acquire(full_key)
                    if token:
                        log.debug("refreshing %s ahead of its expiry", full_key)
                        self._fill_locked(full_key, fetch, ttl, tags, token, None, refreshing=seen)
            except Unavailable:
                log.debug("refresh of %s skipped: Redis unavailable", full_key)
            except Exception:  # a failed refresh must not kill the pool; readers still hit
                log.exception("background refresh of %s failed", full_key)
            finally:
                with self._refreshing_lock:
                    self._refreshing.discard(full_key)

        try:
            self.refresher.submit(refresh)
        except RuntimeError:  # the pool is shut down: the worker is stopping
            with self._refreshing_lock:
                self._refreshing.discard(full_key)

    def _fill_locked(
        self,
        full_key: str,
        fetch: Callable[[], Any],
        ttl: Ttl,
        tags: list[str],
        token: str,
        request: RequestState | None,
        refreshing: Entry | None = None,
    ) -> Any:
        """Holder of the fill lock: read versions, fetch, store if nothing was invalidated.

        ``refreshing``: the entry a refresh-ahead refresh was asked for (it may still be fresh);
        the refresh is skipped when the stored entry is no longer that one (another refresher,
        in this process or another, got the lock first and stored a newer one)."""
        try:
            current, _, _, *versions = self.request(
                NONE, "E", self._lookup_keys(full_key, tags), [len(tags), "", 0], op="lease"
            ).read
        except Unavailable:
            self.lock.release(full_key, token)
            if refreshing is not None:
                # A refresh that cannot store gives up: readers keep the stale entry, and the
                # next one after Redis answers again refreshes it. (Fetching anyway would read
                # the source for nothing, and, the lock released, a refresher in another
                # process would read it again.)
                log.debug("refresh of %s given up: Redis unavailable", full_key)
                return None
            return fetch_source(fetch)[0]
        if current is not None:  # filled between our read and our lock?
            entry = Entry.decode(current)
            # A refresh compares expiries as stored, to the millisecond (the reader's copy may
            # be the unrounded one the in-process layer kept).
            replaced = refreshing is not None and entry.expires_at > round(refreshing.expires_at, 3)
            if replaced or (refreshing is None and entry.is_fresh()):
                self.lock.release(full_key, token)
                return entry.value
        try:
            value, seconds = fetch_source(fetch)
        except BaseException:
            self.lock.release(full_key, token)
            raise
        ttl_seconds = self.ttl(ttl, value)
        entry = Entry(dumps(value), time.time() + ttl_seconds, tags, fetch_seconds=seconds)
        stored = self.store_entry(
            full_key,
            entry,
            ttl_seconds,
            versions,
            request,
            token=token,
            stale_ttl=self.settings.stale_ttl,
            announce=self.keys.fill_channel,
        )
        metrics.CACHE_FILLS.labels("stored" if stored else "refused").inc()
        if tracing.tracer is not None:
            tracing.note("fill" if stored else "refused_stale_fill")
        if not stored:
            log.debug("fill of %s not stored: invalidated during the fetch", full_key)
        return value

    # -- helpers ------------------------------------------------------------------------

    def _version_keys(self, full_key: str, tags: Iterable[str]) -> list[str]:
        return [self.keys.version(full_key)] + [self.keys.tag_version(t) for t in tags]

    def ttl(self, ttl: Ttl, value: Any) -> float:
        """Seconds to keep ``value``: ``ttl`` (or ``ttl(value)``), else the default."""
        if callable(ttl):
            ttl = ttl(value)
        seconds = self.settings.default_ttl if ttl is None else float(ttl)
        if seconds <= 0:
            raise ValueError("ttl must be positive")
        return seconds

    def close(self) -> None:
        self.refresher.shutdown(wait=True, cancel_futures=True)


def _forget_scopes(request: RequestState | None) -> None:
    """Forget the scope versions ``request`` learned (it changed something: its next memory
    read asks Redis again)."""
    if request is not None:
        request.scopes.clear()
