"""Write-behind: changes answered from Redis at once, applied to the source by flushers.

A change is merged into the object's pending state in one function (``wb_stage`` in
``library.lua``); the first change of an object with nothing pending also queues one entry for
it on a Redis Stream. So an object has at most one entry queued, whatever the number of its
changes: the entry says "this object has a pending state", not which one. Flushers read the
stream in a consumer group; for each object they take its apply lease (``wb_take``: one flusher
applies an object at a time, so the source never sees two applies of one object at once,
whether or not its conditional update is atomic), read the object's current pending state,
apply it to the source (idempotent: the source keeps the version and ignores older ones), and
only then acknowledge the entry (``wb_settle``): the pending state is dropped if it is still the
one applied, and otherwise (a change came during the apply) the object is queued again, to be
applied on the next round.

A flusher that dies keeps its entries pending in the group; another flusher claims them after
``claim_idle_ms`` (XAUTOCLAIM). A lease outlives the longest apply (``apply_lease_ms``): an
object whose flusher died mid-apply, or whose apply timed out (the source may still run it), is
applied again only once its lease has run out. A change whose apply keeps failing (the source
refuses that object) is moved to a dead-letter stream after ``MAX_ATTEMPTS`` tries, without
holding up the other objects of its batch; an outage of the source (``SourceUnavailable``) holds
everything and counts no attempt. A deleted object leaves a tombstone that refuses any later
change of it.

Durability is Redis's: without AOF (``appendonly yes``, ``appendfsync everysec`` or ``always``)
a Redis crash loses the changes not yet flushed, so ``volatile`` tells whether a server keeps
what it acknowledged. Nor may Redis evict the queue: the pending states, the stream and the
leases have no expiry, so ``maxmemory-policy`` ``noeviction`` or ``volatile-*`` keeps them, while
``allkeys-*`` may evict them and lose answered changes (``volatile`` says so too).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from taskapp.cache import functions, metrics
from taskapp.cache.client import EVICTS_ANY_KEY, REDIS_ERRORS, Unavailable

log = logging.getLogger("taskapp.cache.writebehind")

#: What a Redis outage raises here: redis-py's errors, or the breaker's refusal.
OUTAGES = (*REDIS_ERRORS, Unavailable)

#: How long the last staged version of an object is remembered. It only has to outlive one
#: read-modify-stage (a writer that read the object, then stages its change over what it read):
#: ``wb_stage`` refuses a base read longer ago than this, to be read again, so the marker is always
#: there for the stages that need it. Kept short because a marker ahead of the source with no
#: pending state (the pending state lost with Redis's keys) refuses every change until it ends.
VERSION_MARK_TTL_MS = 30_000

#: How long a deleted object's tombstone refuses its changes: far longer than any
#: read-modify-stage takes (a writer that read the object before the delete).
TOMBSTONE_TTL_MS = 3_600_000

#: Failed applies of one change (the source refused the object, not an outage) before it is
#: moved to the dead-letter stream.
MAX_ATTEMPTS = 5

#: Dead letters kept (approximately: XADD MAXLEN ~); the oldest go first.
DEAD_LETTERS_MAXLEN = 10_000

#: What ``wb_stage`` answers for an object with a tombstone, and past the caller's deadline; what
#: ``wb_take`` answers for an object another flusher is applying.
DELETED = b"deleted"
LATE = b"late"
BUSY = b"busy"


class ObjectDeleted(Exception):
    """The object was deleted: a change of it is refused."""


class SourceUnavailable(Exception):
    """Raised by an apply function when the source itself is unreachable (not this object's
    fault): the whole batch waits for the source to return, and no attempt is counted."""


#: The least idle time after which an empty consumer is taken for a flusher gone for good (a
#: live one reads every WRITE_BEHIND_FLUSH_MS / 4, or retries within 5 s when failing).
DEAD_CONSUMER_MIN_MS = 60_000

#: apply(object_id, state) writes ``state`` to the source unless it holds a newer version; it
#: raises ``SourceUnavailable`` when the source is down (it may still run the write later) and
#: ``Unavailable`` when Redis is, the source being done with it (any other error is this
#: object's). One flusher at a time applies an object: ``apply`` need not be atomic.
Apply = Callable[[str, dict[str, Any]], None]


class WriteBehindQueue:
    """The stream, its consumer group and the pending states of one app."""

    group = "flushers"

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        flush_ms: int,
        claim_idle_ms: int,
        apply_lease_ms: int | None = None,
        guard: Callable[[Callable[[], Any]], Any] | None = None,
        flusher_client: Any = None,
    ) -> None:
        """``client`` and ``guard`` serve requests: every call goes through ``guard`` (the
        cache's breaker, raising ``Unavailable``), on a client with short timeouts, so a hung
        Redis costs a request no more than any other cache call. ``flusher_client`` (default
        ``client``) serves only the flushers, whose blocking stream read needs a socket timeout
        longer than the block. ``apply_lease_ms`` (default ``claim_idle_ms``) is how long a
        flusher holds an object it applies: longer than any apply takes, including what the
        source may still run after the flusher gave up waiting (a timeout)."""
        self.client = client
        self.flusher_client = flusher_client if flusher_client is not None else client
        self._guard = guard or _unguarded
        self.prefix = prefix
        self.prefix_of_queue = f"{prefix}wb:"  # the stream and the pending states: data, not cache
        self.stream = f"{prefix}wb:stream"
        self.dead_letters = f"{prefix}wb:dead"
        self.attempts = f"{prefix}wb:attempts"  # entry id -> failed applies
        self.flush_ms = flush_ms
        self.claim_idle_ms = claim_idle_ms
        self.apply_lease_ms = apply_lease_ms if apply_lease_ms is not None else claim_idle_ms
        # The library's write-behind functions (library.lua, "Write-behind"): requests stage,
        # tombstone and revive; flushers take, settle, release, bury and prune.
        self._stage = _function(client, "wb_stage")
        self._tombstone = _function(client, "wb_tombstone")
        self._revive = _function(client, "wb_revive")
        self._take = _function(self.flusher_client, "wb_take")
        self._settle = _function(self.flusher_client, "wb_settle")
        self._release = _function(self.flusher_client, "wb_release")
        self._dead_letter = _function(self.flusher_client, "wb_dead_letter")
        self._prune = _function(self.flusher_client, "wb_prune_consumers")
        #: A consumer idle this long with nothing pending is a flusher gone for good.
        self.dead_consumer_ms = max(DEAD_CONSUMER_MIN_MS, 10 * claim_idle_ms)
        #: What makes the server lose what it acknowledged ("": nothing; None: not asked yet).
        self._volatility: str | None = None

    def pending_key(self, key: str) -> str:
        """The Redis key of an object's pending state."""
        return f"{self.prefix}wb:{key}"

    def version_key(self, key: str) -> str:
        """The Redis key of the last version staged for an object."""
        return f"{self.prefix}wb:v:{key}"

    def tombstone_key(self, key: str) -> str:
        """The Redis key marking an object as deleted."""
        return f"{self.prefix}wb:gone:{key}"

    def lease_key(self, key: str) -> str:
        """The Redis key naming the flusher that applies an object now (its apply lease)."""
        return f"{self.prefix}wb:lease:{key}"

    def stage(
        self,
        key: str,
        object_id: str,
        base: dict[str, Any],
        change: dict[str, Any],
        deadline_ms: int | None = None,
        read_at_ms: int | None = None,
    ) -> dict[str, Any] | None:
        """Queue ``change`` of an object whose state, as the caller read it, is ``base`` (with
        its ``version``); the new pending state, or None when ``base`` is outdated (a newer
        version was staged and already flushed, or ``base`` was read at ``read_at_ms``, this
        host's clock in ms since the epoch, longer ago than the last staged version is
        remembered): read the object again and retry.

        Raises ``ObjectDeleted`` when the object was deleted since the caller read it, and
        ``Unavailable`` when Redis cannot take it: a change that cannot be queued must be
        refused, since nothing else would keep it. ``deadline_ms`` (this host's clock, ms since
        the epoch) bounds when Redis may still queue it: pick it before the caller gives up
        waiting, so a caller that gave up (and answered 503) is never followed by the change
        (as long as the clocks of this host and Redis agree to within the margin left).
        """
        encoded = self._guard(
            lambda: self._stage(
                keys=[
                    self.pending_key(key),
                    self.stream,
                    self.version_key(key),
                    self.tombstone_key(key),
                ],
                args=[
                    json.dumps(base),
                    json.dumps(change),
                    object_id,
                    VERSION_MARK_TTL_MS,
                    "" if deadline_ms is None else deadline_ms,
                    "" if read_at_ms is None else read_at_ms,
                ],
            )
        )
        if encoded == DELETED:
            raise ObjectDeleted(object_id)
        if encoded == LATE:
            raise Unavailable("the change reached Redis after its deadline; it was not queued")
        return json.loads(encoded) if encoded else None

    def tombstone(self, key: str) -> str | None:
        """Before an object is deleted: refuse its later changes and drop its pending state;
        the state dropped (JSON, for ``revive``) or None. Raises ``Unavailable``."""
        dropped = self._guard(
            lambda: self._tombstone(
                keys=[self.pending_key(key), self.tombstone_key(key)], args=[TOMBSTONE_TTL_MS]
            )
        )
        return dropped.decode() if dropped else None

    def revive(self, key: str, object_id: str, dropped: str | None) -> None:
        """The delete failed: lift the tombstone and queue again the pending state it dropped.
        Raises ``Unavailable``."""
        self._guard(
            lambda: self._revive(
                keys=[self.pending_key(key), self.tombstone_key(key), self.stream],
                args=[dropped or "", object_id],
            )
        )

    def volatile(self) -> str | None:
        """What makes the server lose what it acknowledged, None when nothing does:
        ``appendonly no`` (a crash loses changes not yet flushed) or a ``maxmemory-policy`` of
        ``allkeys-*`` (it may evict the queue's keys, which have no expiry). Asked once per
        process; raises ``Unavailable``."""
        if self._volatility is None:
            persistence = self._guard(lambda: self.client.info("persistence"))
            memory = self._guard(lambda: self.client.info("memory"))
            policy = str(memory.get("maxmemory_policy", ""))
            if not int(persistence.get("aof_enabled", 0)):
                self._volatility = "appendonly no"
            elif policy.startswith(EVICTS_ANY_KEY):
                self._volatility = f"maxmemory-policy {policy}"
            else:
                self._volatility = ""
        return self._volatility or None

    def pending(self, key: str) -> dict[str, Any] | None:
        """The object's state with its changes not yet flushed, or None. Raises Unavailable
        when Redis cannot say: the source alone may be older than an answered change."""
        raw = self._guard(lambda: self.client.get(self.pending_key(key)))
        return json.loads(raw) if raw is not None else None

    def pending_many(self, keys: list[str]) -> list[tuple[dict[str, Any] | None, int]]:
        """For several objects in one round trip (keys of one hash slot): each one's pending
        state (or None) and the last version staged for it (0 when none is remembered).
        Raises Unavailable when Redis cannot say."""
        if not keys:
            return []
        raws = self._guard(
            lambda: self.client.mget(
                [self.pending_key(k) for k in keys] + [self.version_key(k) for k in keys]
            )
        )
        states, staged = raws[: len(keys)], raws[len(keys) :]
        return [
            (json.loads(r) if r is not None else None, int(v) if v is not None else 0)
            for r, v in zip(states, staged, strict=True)
        ]

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if they are missing."""
        try:
            self.flusher_client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def flush_once(self, apply: Apply, consumer: str, block_ms: int | None = None) -> int:
        """Apply one batch: first entries abandoned by dead flushers, then new ones; how many."""
        return self._flush(apply, consumer, block_ms)[0]

    def _flush(self, apply: Apply, consumer: str, block_ms: int | None) -> tuple[int, bool]:
        """``flush_once``: the entries of the batch, and whether any object of it was done with
        (applied, settled, or its own failure counted), not only left to another try."""
        _, claimed, _ = self.flusher_client.xautoclaim(
            self.stream, self.group, consumer, min_idle_time=self.claim_idle_ms, count=100
        )
        entries = [e for e in claimed if e[1]]
        if not entries:
            batch = self.flusher_client.xreadgroup(
                self.group,
                consumer,
                {self.stream: ">"},
                count=100,
                block=block_ms if block_ms is not None else max(10, self.flush_ms // 4),
            )
            entries = batch[0][1] if batch else []
        if not entries:
            return 0, False
        return len(entries), self._apply_batch(apply, entries)

    def _apply_batch(self, apply: Apply, entries: list[tuple[bytes, dict]]) -> bool:
        """Apply each object of the batch once, as its pending state is now, and settle it; an
        object whose apply fails keeps its entries for a later try (dead letters after
        ``MAX_ATTEMPTS``) while the others go through. ``SourceUnavailable`` stops the batch,
        and so does ``Unavailable`` (the apply could not finish its work in Redis, such as
        invalidating what the cache kept): what is left is applied again once the cause is
        gone. Whether any object was done with (see ``_apply_object``)."""
        grouped: dict[str, tuple[str, list[tuple[bytes, dict]]]] = {}
        for entry_id, fields in entries:
            try:
                object_id = fields[b"id"].decode()
                pending_key = fields[b"key"].decode()
                if not pending_key.startswith(self.prefix_of_queue):
                    raise ValueError(f"not a pending state of this queue: {pending_key!r}")
            except (KeyError, ValueError, AttributeError) as exc:
                # It will never read better: no retry can help it.
                self._bury(entry_id, fields, f"unreadable entry: {exc!r}", 1)
                continue
            grouped.setdefault(object_id, (pending_key, []))[1].append((entry_id, fields))
        done = False
        for object_id, (pending_key, object_entries) in grouped.items():
            done = self._apply_object(apply, object_id, pending_key, object_entries) or done
        return done

    def _apply_object(
        self, apply: Apply, object_id: str, pending_key: str, entries: list[tuple[bytes, dict]]
    ) -> bool:
        """Take the object's lease, apply its pending state as it is now, settle it; whether
        the object was done with (False: left to another flusher or a later try).

        While another flusher holds the object (its lease), the entries are left alone: that
        flusher settles the object, and what is left here is claimed again later. A failed
        apply gives the lease back, except after an outage of the source
        (``SourceUnavailable``): the source may still run the update this flusher gave up
        waiting for, so the lease runs out by itself.
        """
        lease_key = self.lease_key(pending_key[len(self.prefix_of_queue) :])
        token = uuid.uuid4().hex
        taken = self._take(keys=[pending_key, lease_key], args=[token, self.apply_lease_ms])
        if taken == BUSY:
            log.debug("write-behind: %s is being applied by another flusher", object_id)
            return False
        if taken is None:  # applied and settled already, or deleted: nothing left to apply
            self._settle_object(object_id, pending_key, lease_key, token, "", entries)
            return True
        try:
            state = json.loads(taken)
            state["version"] = int(state["version"])
            apply(object_id, state)
        except SourceUnavailable:
            raise  # not this object's fault: nothing counted; the lease runs out by itself
        except Unavailable:
            # The source is done (only the cache's Redis failed): the lease can go back now,
            # if this flusher's own connection still reaches Redis.
            self._release_quietly(lease_key, token)
            raise
        except Exception as exc:  # noqa: BLE001 - this object's failure: count it, go on
            self._release(keys=[lease_key], args=[token])
            self._failed(object_id, pending_key, entries, taken.decode(errors="replace"), exc)
            return True
        self._settle_object(object_id, pending_key, lease_key, token, state["version"], entries)
        return True

    def _release_quietly(self, lease_key: str, token: str) -> None:
        """Give an object's lease back if Redis takes it; else it runs out by itself."""
        try:
            self._release(keys=[lease_key], args=[token])
        except REDIS_ERRORS as exc:
            log.debug("write-behind: lease %s left to run out (%s)", lease_key, exc)

    def _settle_object(
        self,
        object_id: str,
        pending_key: str,
        lease_key: str,
        token: str,
        version: int | str,
        entries: list[tuple[bytes, dict]],
    ) -> None:
        """Acknowledge an object's entries once ``version`` was applied ('': nothing was); drop
        its pending state, or queue it again when a newer change came meanwhile."""
        self._settle(
            keys=[self.stream, pending_key, self.attempts, lease_key],
            args=[self.group, version, token, object_id, *(entry_id for entry_id, _ in entries)],
        )

    def _failed(
        self,
        object_id: str,
        pending_key: str,
        entries: list[tuple[bytes, dict]],
        state: str,
        exc: Exception,
    ) -> None:
        """Count a failed apply of ``state`` against each entry of the object; bury those out
        of tries.

        The others stay pending in the group: XAUTOCLAIM hands them out again after
        ``claim_idle_ms``, so a failing object is retried at that pace, not in a tight loop.
        """
        error = f"{type(exc).__name__}: {exc}"
        log.warning("write-behind: applying %s failed (%s)", object_id, error, exc_info=exc)
        for entry_id, fields in entries:
            attempts = int(self.flusher_client.hincrby(self.attempts, entry_id, 1))
            if attempts >= MAX_ATTEMPTS:
                self._bury(entry_id, fields, error, attempts, pending_key, state)

    def _bury(
        self,
        entry_id: bytes,
        fields: dict,
        error: str,
        attempts: int,
        pending_key: str = "",
        state: str = "",
    ) -> None:
        """Move an entry to the dead-letter stream with the state tried, if any (counted in
        ``taskapp_write_behind_dead_letters_total``)."""
        try:
            version: int | str = int(json.loads(state)["version"]) if state else ""
        except (ValueError, TypeError, KeyError):
            version = ""
        flat = [part for pair in fields.items() for part in pair]
        self._dead_letter(
            keys=[self.stream, self.dead_letters, self.attempts, pending_key or self.stream],
            args=[
                self.group,
                entry_id,
                version,
                error,
                attempts,
                DEAD_LETTERS_MAXLEN,
                state,
                fields.get(b"id", b""),
                *flat,
            ],
        )
        metrics.WRITE_BEHIND_DEAD_LETTERS.inc()
        log.error(
            "write-behind: change %s of %s moved to the dead letters after %d attempts (%s)",
            entry_id.decode(),
            fields.get(b"id", b"?").decode(errors="replace"),
            attempts,
            error,
        )

    def run(self, apply: Apply, stop: threading.Event, consumer: str | None = None) -> None:
        """Flush until ``stop`` is set, restarting after any failure with a backoff.

        A Redis outage or an outage of the source (``SourceUnavailable``) never ends the
        flusher: what the batch had left stays unacknowledged, so it is applied again (after
        ``claim_idle_ms``, by this flusher or another) once the cause is gone. Each restart is
        counted (``taskapp_write_behind_restarts_total``); one line is logged when failures
        begin and one when a batch goes through again. An error of one object (a document the
        source refuses) is not a restart: see ``_apply_batch``.
        """
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        delay = 0.1
        failing = False
        prune_at = 0.0
        while not stop.is_set():
            try:
                self.ensure_group()
                while not stop.is_set():
                    if time.monotonic() >= prune_at:
                        self.prune_consumers()
                        prune_at = time.monotonic() + self.dead_consumer_ms / 1000
                    # Failures end once an object is done with; an object another try or
                    # another flusher holds (its lease after the source's outage) is not that.
                    if self._flush(apply, consumer, None)[1] and failing:
                        log.warning("write-behind flusher: flushing again")
                        failing = False
                        delay = 0.1
            except Exception as exc:  # noqa: BLE001 - supervise: any failure restarts the loop
                metrics.WRITE_BEHIND_RESTARTS.inc()
                if not failing:
                    failing = True
                    what = (
                        "Redis unavailable"
                        if isinstance(exc, OUTAGES)
                        else "source unavailable"
                        if isinstance(exc, SourceUnavailable)
                        else "failed"
                    )
                    log.warning(
                        "write-behind flusher: %s (%s: %s); restarting with a backoff",
                        what,
                        type(exc).__name__,
                        exc,
                        exc_info=not isinstance(exc, (*OUTAGES, SourceUnavailable)),
                    )
                else:
                    log.debug("write-behind flusher failed again: %s", exc)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def prune_consumers(self) -> list[str]:
        """Forget consumers with nothing pending idle past ``dead_consumer_ms``; their names."""
        removed = self._prune(keys=[self.stream], args=[self.group, self.dead_consumer_ms])
        return [name.decode() for name in removed]

    def status(self, dead_letters: int = 5) -> dict[str, Any]:
        """Pending changes, live consumers and lag of the flushers' group (dead consumers with
        nothing pending are forgotten first), and the dead letters: how many, and the newest
        ``dead_letters`` of them; ``oldest_pending_ms`` is None when none is."""
        self.ensure_group()
        self.prune_consumers()
        groups = {g["name"].decode(): g for g in self.flusher_client.xinfo_groups(self.stream)}
        group = groups[self.group]
        consumers = self.flusher_client.xinfo_consumers(self.stream, self.group)
        oldest = self.flusher_client.xpending_range(self.stream, self.group, "-", "+", 1)
        return {
            "stream_length": self.flusher_client.xlen(self.stream),
            "pending": group["pending"],
            "lag": group.get("lag"),
            "consumers": [
                {"name": c["name"].decode(), "pending": c["pending"], "idle_ms": c["idle"]}
                for c in consumers
            ],
            "oldest_pending_ms": oldest[0]["time_since_delivered"] if oldest else None,
            "dead_letters": self.flusher_client.xlen(self.dead_letters),
            "newest_dead_letters": [
                {
                    "id": entry_id.decode(),
                    "fields": {
                        k.decode(errors="replace"): v.decode(errors="replace")
                        for k, v in fields.items()
                    },
                }
                for entry_id, fields in self.flusher_client.xrevrange(
                    self.dead_letters, count=dead_letters
                )
            ],
        }


def _function(client: Any, name: str) -> Callable[..., Any]:
    """The library's function ``name`` on ``client``, called as ``f(keys=..., args=...)`` (the
    library is loaded first where the server does not know it)."""

    def call(keys: list[str], args: list[Any]) -> Any:
        load = partial(functions.LIBRARY.load, client)
        return functions.call(client.execute_command, load, name, list(keys), list(args))

    return call


def _unguarded(call: Callable[[], Any]) -> Any:
    """Run ``call``; a Redis error becomes ``Unavailable`` (when no breaker is given)."""
    try:
        return call()
    except REDIS_ERRORS as exc:
        raise Unavailable(str(exc)) from exc


class Flusher:
    """A daemon thread running ``WriteBehindQueue.run`` in an app context; ends with its process."""

    def __init__(self, app: Any, write_behind: WriteBehindQueue, apply: Apply) -> None:
        self._app = app
        self._write_behind = write_behind
        self._apply = apply
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start flushing (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="taskapp-write-behind", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        with self._app.app_context():
            self._write_behind.run(self._apply, self._stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batch in hand and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
