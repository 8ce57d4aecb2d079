"""Write-behind: changes answered from Redis at once, applied to the source by flushers.

A change is merged into the object's pending state and queued on a Redis Stream in one script
(STAGE). Flushers read the stream in a consumer group, apply the newest state of each object to
the source (idempotent: the source keeps the version and ignores older ones), and only then
acknowledge it (SETTLE). A flusher that dies keeps its entries pending in the group; another
flusher claims them after ``claim_idle_ms`` (XAUTOCLAIM) and applies them again, which the
version makes harmless. Durability is Redis's: without AOF (``appendonly yes``,
``appendfsync everysec`` or ``always``) a Redis crash loses the changes not yet flushed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from taskapp.cache import metrics
from taskapp.cache.client import REDIS_ERRORS, Unavailable

log = logging.getLogger("taskapp.cache.writebehind")

#: How long the last staged version of an object is remembered after its change was flushed:
#: far longer than any read-modify-stage takes.
VERSION_MARK_TTL_MS = 3_600_000

# STAGE: merge a change into an object's pending state, give it the next version and queue it on
# the write-behind stream, in one step (concurrent changes of one object never lose each other).
# A caller whose view of the object is older than the last version staged (a flusher applied and
# dropped the pending state since the caller read it) is refused, to read again.
# KEYS[1] the object's pending state (JSON, no expiry: it lives until the flusher applied it),
# KEYS[2] the stream, KEYS[3] the last version staged for the object
# ARGV[1] the object as the caller read it (JSON with its version; used when nothing is
# pending), ARGV[2] the change (a JSON object of fields), ARGV[3] the object's id,
# ARGV[4] time to live of the last-version marker in ms
# returns the new pending state (JSON), or false when the caller's object is outdated
STAGE = """
local current = redis.call('GET', KEYS[1])
local state
if current then
  state = cjson.decode(current)
else
  state = cjson.decode(ARGV[1])
  local staged = tonumber(redis.call('GET', KEYS[3]) or '0')
  if (tonumber(state['version']) or 0) < staged then return false end
end
for field, value in pairs(cjson.decode(ARGV[2])) do state[field] = value end
state['version'] = (tonumber(state['version']) or 0) + 1
local encoded = cjson.encode(state)
redis.call('SET', KEYS[1], encoded)
redis.call('SET', KEYS[3], state['version'], 'PX', ARGV[4])
redis.call('XADD', KEYS[2], '*',
  'id', ARGV[3], 'key', KEYS[1], 'version', state['version'], 'state', encoded)
return encoded
"""

# SETTLE: after the flusher applied a change to the source, acknowledge and delete its entry (the
# stream holds only changes not yet applied), and drop the pending state if no newer change
# arrived meanwhile.
# KEYS[1] the stream, KEYS[2] the object's pending state
# ARGV[1] the consumer group, ARGV[2] the stream entry id, ARGV[3] the version applied
# returns 1 when the pending state was dropped, 0 when a newer change is still pending
SETTLE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local current = redis.call('GET', KEYS[2])
if current and tonumber(cjson.decode(current)['version']) <= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# PRUNE_CONSUMERS: forget the consumers of a group that hold no pending change and have been idle
# far longer than a live flusher ever is (a flusher that died or was scaled away). Atomic, so no
# consumer can read entries between the check and the delete (DELCONSUMER drops what it holds).
# KEYS[1] the stream
# ARGV[1] the consumer group, ARGV[2] the idle time in ms past which an empty consumer is dead
# returns the names of the consumers removed
PRUNE_CONSUMERS = """
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""

#: The least idle time after which an empty consumer is taken for a flusher gone for good (a
#: live one reads every WRITE_BEHIND_FLUSH_MS / 4, or retries within 5 s when failing).
DEAD_CONSUMER_MIN_MS = 60_000

#: apply(object_id, state) writes ``state`` to the source unless it holds a newer version.
Apply = Callable[[str, dict[str, Any]], None]


class WriteBehind:
    """The stream, its consumer group and the pending states of one app."""

    group = "flushers"

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        flush_ms: int,
        claim_idle_ms: int,
        guard: Callable[[Callable[[], Any]], Any] | None = None,
        flusher_client: Any = None,
    ) -> None:
        """``client`` and ``guard`` serve requests: every call goes through ``guard`` (the
        cache's breaker, raising ``Unavailable``), on a client with short timeouts, so a hung
        Redis costs a request no more than any other cache call. ``flusher_client`` (default
        ``client``) serves only the flushers, whose blocking stream read needs a socket timeout
        longer than the block."""
        self.client = client
        self.flusher_client = flusher_client if flusher_client is not None else client
        self._guard = guard or _unguarded
        self.prefix = prefix
        self.prefix_of_queue = f"{prefix}wb:"  # the stream and the pending states: data, not cache
        self.stream = f"{prefix}wb:stream"
        self.flush_ms = flush_ms
        self.claim_idle_ms = claim_idle_ms
        self._stage = client.register_script(STAGE)
        self._settle = self.flusher_client.register_script(SETTLE)
        self._prune = self.flusher_client.register_script(PRUNE_CONSUMERS)
        #: A consumer idle this long with nothing pending is a flusher gone for good.
        self.dead_consumer_ms = max(DEAD_CONSUMER_MIN_MS, 10 * claim_idle_ms)

    def pending_key(self, key: str) -> str:
        """The Redis key of an object's pending state."""
        return f"{self.prefix}wb:{key}"

    def version_key(self, key: str) -> str:
        """The Redis key of the last version staged for an object."""
        return f"{self.prefix}wb:v:{key}"

    def stage(
        self, key: str, object_id: str, base: dict[str, Any], change: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Queue ``change`` of an object whose state, as the caller read it, is ``base`` (with
        its ``version``); the new pending state, or None when ``base`` is outdated (a newer
        version was staged and already flushed): read the object again and retry.

        Raises ``Unavailable`` when Redis cannot take it: a change that cannot be queued must
        be refused, since nothing else would keep it.
        """
        encoded = self._guard(
            lambda: self._stage(
                keys=[self.pending_key(key), self.stream, self.version_key(key)],
                args=[json.dumps(base), json.dumps(change), object_id, VERSION_MARK_TTL_MS],
            )
        )
        return json.loads(encoded) if encoded else None

    def pending(self, key: str) -> dict[str, Any] | None:
        """The object's state with its changes not yet flushed, or None (also when Redis is
        unavailable: then readers see the source's state)."""
        try:
            raw = self._guard(lambda: self.client.get(self.pending_key(key)))
        except Unavailable:
            return None
        return json.loads(raw) if raw is not None else None

    def discard(self, key: str) -> None:
        """Forget an object's pending state before the object is deleted (its queued changes
        then match nothing in the source); raises ``Unavailable`` when Redis cannot be reached."""
        self._guard(lambda: self.client.delete(self.pending_key(key)))

    def pending_many(self, keys: list[str]) -> list[tuple[dict[str, Any] | None, int]]:
        """For several objects in one round trip (keys of one hash slot): each one's pending
        state (or None) and the last version staged for it (0 when none is remembered)."""
        if not keys:
            return []
        try:
            raws = self._guard(
                lambda: self.client.mget(
                    [self.pending_key(k) for k in keys] + [self.version_key(k) for k in keys]
                )
            )
        except Unavailable:
            return [(None, 0)] * len(keys)
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
            return 0
        self._apply_batch(apply, entries)
        return len(entries)

    def _apply_batch(self, apply: Apply, entries: list[tuple[bytes, dict]]) -> None:
        """Apply the newest state of each object once, then settle every entry of the batch."""
        newest: dict[str, dict[str, Any]] = {}
        for _, fields in entries:
            state = json.loads(fields[b"state"])
            object_id = fields[b"id"].decode()
            if object_id not in newest or state["version"] > newest[object_id]["version"]:
                newest[object_id] = state
        for object_id, state in newest.items():
            apply(object_id, state)
        for entry_id, fields in entries:
            self._settle_entry(entry_id, fields)

    def _settle_entry(self, entry_id: bytes, fields: dict) -> None:
        """Acknowledge an applied entry and drop its pending state unless a newer one came."""
        self._settle(
            keys=[self.stream, fields[b"key"].decode()],
            args=[self.group, entry_id, fields[b"version"]],
        )

    def run(self, apply: Apply, stop: threading.Event, consumer: str | None = None) -> None:
        """Flush until ``stop`` is set, restarting after any failure with a backoff.

        A Redis outage or an error of ``apply`` (MongoDB down, a bad document) never ends the
        flusher: the batch stays unacknowledged, so it is applied again (after ``claim_idle_ms``,
        by this flusher or another) once the cause is gone. Each restart is counted
        (``taskapp_write_behind_restarts_total``); one line is logged when failures begin and
        one when a batch goes through again.
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
                    if self.flush_once(apply, consumer) and failing:  # a batch went through
                        log.warning("write-behind flusher: flushing again")
                        failing = False
                        delay = 0.1
            except Exception as exc:  # noqa: BLE001 - supervise: any failure restarts the loop
                metrics.WRITE_BEHIND_RESTARTS.inc()
                if not failing:
                    failing = True
                    what = "Redis unavailable" if isinstance(exc, REDIS_ERRORS) else "apply failed"
                    log.warning(
                        "write-behind flusher: %s (%s: %s); restarting with a backoff",
                        what,
                        type(exc).__name__,
                        exc,
                        exc_info=not isinstance(exc, REDIS_ERRORS),
                    )
                else:
                    log.debug("write-behind flusher failed again: %s", exc)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def prune_consumers(self) -> list[str]:
        """Forget consumers with nothing pending idle past ``dead_consumer_ms``; their names."""
        removed = self._prune(keys=[self.stream], args=[self.group, self.dead_consumer_ms])
        return [name.decode() for name in removed]

    def status(self) -> dict[str, Any]:
        """Pending changes, live consumers and lag of the flushers' group (dead consumers with
        nothing pending are forgotten first); ``oldest_pending_ms`` is None when none is."""
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
        }


def _unguarded(call: Callable[[], Any]) -> Any:
    """Run ``call``; a Redis error becomes ``Unavailable`` (when no breaker is given)."""
    try:
        return call()
    except REDIS_ERRORS as exc:
        raise Unavailable(str(exc)) from exc


class Flusher:
    """A daemon thread running ``WriteBehind.run`` in an app context; stops with its process."""

    def __init__(self, app: Any, write_behind: WriteBehind, apply: Apply) -> None:
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
