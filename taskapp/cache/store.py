"""The Redis store: the client, its functions, slot routing, and the breaker every call crosses."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import hiredis
import redis
from hiredis import pack_command
from redis.crc import key_slot

from taskapp.cache import functions, metrics, stats, tracing
from taskapp.cache.client import Unavailable, connect, redacted
from taskapp.cache.counting import EventCounter
from taskapp.cache.derived_keys import Keys
from taskapp.cache.resilience import Breaker, HeldBack
from taskapp.cache.resilience import Call as HeldCall
from taskapp.cache.scope_state import MARK_TTL_S
from taskapp.cache.settings import CacheSettings

log = logging.getLogger("taskapp.cache")


class Store:
    """One app's Redis in one process, behind a circuit breaker.

    Every call goes through ``run`` (the breaker: a failure is counted and raised as
    ``Unavailable``; nothing else of the cache sees a redis-py error). The server-side code is
    one library of Redis Functions (``functions.py``), called by name. On Redis Cluster,
    multi-key calls are grouped by hash slot. Invalidations that Redis did not take are held
    back and replayed before the cache is used again.
    """

    def __init__(
        self,
        settings: CacheSettings,
        keys: Keys,
        counter: EventCounter,
        on_outage: Callable[[], None],
    ) -> None:
        """``on_outage`` runs when the breaker opens and when an invalidation is held back."""
        self.keys = keys
        self.cluster = settings.cluster
        self.socket_timeout = settings.socket_timeout
        self.version_ttl_ms = settings.version_ttl_ms
        self.client = connect(
            settings.redis_url, cluster=settings.cluster, timeout=settings.socket_timeout
        )
        self.breaker = Breaker(
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            on_recover=lambda: self.held_back.replay(),
            on_open=on_outage,
            on_error=lambda: counter.count(stats.ERROR),
        )
        self.held_back = HeldBack(
            self.breaker,
            send=self._send_invalidations,
            ping=self.client.ping,
            run=lambda fn: self.run(fn, op="replay"),
            on_hold=on_outage,
        )
        # Functions run on each thread's own connection, off Cluster and the embedded server.
        self.direct = (
            None
            if settings.cluster or settings.redis_url.startswith("memory://")
            else Direct(self.client, self.load)
        )
        self._timers: dict[str, Any] = {}
        if settings.redis_url.startswith("memory://"):
            self.load()  # the embedded server starts empty, in this process
        log.info("cache on %s (prefix %r)", redacted(settings.redis_url), keys.prefix)

    def run(self, fn: Callable[[], Any], op: str = "other") -> Any:
        """Run ``fn`` through the breaker, timed as cache operation ``op`` (and traced as a span
        of its own when tracing is on); raises Unavailable."""
        started = time.perf_counter()
        span = tracing.redis_span(op, self.breaker.is_open) if tracing.tracer is not None else None
        try:
            return self.breaker.call(fn)
        finally:
            if span is not None:
                tracing.end(span)
            timer = self._timers.get(op)
            if timer is None:
                timer = self._timers[op] = metrics.CACHE_OP_SECONDS.labels(op)
            timer.observe(time.perf_counter() - started)

    def load(self) -> None:
        """Load the cache's functions into Redis where they are missing (raises redis-py's
        errors: for callers inside ``run``, and for the start-up check)."""
        functions.LIBRARY.load(self.client)

    def call(self, function: str, keys: list[str], args: list[Any], op: str = "script") -> Any:
        """Call one of the cache's functions through the breaker; raises Unavailable."""
        return self.run(partial(self.fcall, function, keys, args), op=op)

    def fcall(self, function: str, keys: list[str], args: list[Any]) -> Any:
        """Call one of the cache's functions on the request path's connections (no breaker:
        for callers inside ``run``)."""
        if self.direct is not None:
            return self.direct.fcall(function, keys, args)
        return functions.call(self.client.execute_command, self.load, function, keys, args)

    def versioned(self, *args: Any) -> list[Any]:
        """The arguments of a function that reads or changes versions (see ``library.lua``):
        the prefix and the versions' time to live, then ``args``."""
        return [self.keys.prefix, self.version_ttl_ms, *args]

    def read_version(self, key: str, op: str = "version") -> bytes:
        """The current value of a version key (made anew when missing); raises Unavailable."""
        return self.call("request", [key], ["S", *self.versioned()], op=op)[1]  # type: ignore[no-any-return]

    def get(self, key: str, op: str = "get") -> Any:
        """GET ``key`` through the breaker; raises Unavailable."""
        return self.run(partial(self.command, "GET", key), op=op)

    def command(self, *args: Any) -> Any:
        """One command on the request path's connections, its reply as Redis sent it (no
        breaker: for callers inside ``run``)."""
        if self.direct is not None:
            return self.direct.execute(*args)
        return self.client.execute_command(*args)

    # -- invalidation ---------------------------------------------------------------------

    def invalidate(self, tags: list[str]) -> bool:
        """Run INVALIDATE for ``tags``; False when held back (sent before the cache is used
        again)."""
        try:
            self.run(lambda: self.send_invalidate(tags), op="invalidate")
            return True
        except Unavailable:
            self.held_back.hold(tags=tags)
            return False

    def delete(self, full_keys: list[str]) -> int:
        """Run DELETE for ``full_keys``; how many existed (0 when held back)."""
        try:
            return self.run(lambda: self.send_delete(full_keys), op="delete")
        except Unavailable:
            self.held_back.hold(keys=full_keys)
            return 0

    def send_invalidate(self, tags: list[str]) -> None:
        """INVALIDATE ``tags`` (one call per hash slot)."""
        keys = self.keys
        for group in self.by_slot(tags, keys.tag_version):
            versions = [keys.tag_version(t) for t in group]
            self.fcall(
                "invalidate", versions + [keys.scope_version(v) for v in versions], self.versioned()
            )

    def send_delete(self, full_keys: list[str]) -> int:
        """DELETE ``full_keys`` (one call per hash slot); how many existed."""
        existed = 0
        keys = self.keys
        for group in self.by_slot(full_keys, lambda k: k):
            existed += self.fcall(
                "delete",
                group + [keys.version(k) for k in group] + [keys.scope_version(k) for k in group],
                self.versioned(),
            )
        return existed

    def _send_invalidations(
        self, tags: list[str], full_keys: list[str], calls: list[HeldCall]
    ) -> None:
        self.send_invalidate(tags)
        self.send_delete(full_keys)
        for function, keys, args in calls:
            self.fcall(function, list(keys), list(args))

    def call_or_hold(self, function: str, keys: list[str], args: list[Any], op: str) -> Any:
        """Call a function whose write must take effect before the cache is used again (a
        revocation): when Redis does not take it, it is held back with the invalidations and
        sent first (None then)."""
        try:
            return self.call(function, keys, args, op=op)
        except Unavailable:
            self.held_back.hold(calls=[(function, tuple(keys), tuple(args))])
            return None

    # -- Redis Cluster ----------------------------------------------------------------------

    def by_slot(self, items: list[str], redis_key: Callable[[str], str]) -> list[list[str]]:
        """``items`` grouped so each group's Redis keys share a hash slot (one group off Cluster)."""
        if not self.cluster:
            return [items] if items else []
        groups: dict[int, list[str]] = {}
        for item in items:
            groups.setdefault(key_slot(redis_key(item).encode()), []).append(item)
        return list(groups.values())

    def check_slots(self, full_key: str, tags: list[str]) -> None:
        """On Cluster, refuse tags whose keys would not share the entry's hash slot."""
        if not self.cluster:
            return
        slot = key_slot(full_key.encode())
        for tag in tags:
            if key_slot(self.keys.tag_version(tag).encode()) != slot:
                raise ValueError(
                    f"tag {tag!r} is not in the hash slot of key {self.keys.strip(full_key)!r}: "
                    "on Redis Cluster give a key and its tags the same hash tag, like {u:42}"
                )

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.client.close()


class Direct:
    """Connections to the client's Redis for the calls of the request path.

    A call takes an idle connection (or makes one), writes once, reads once and puts it back: no
    pool lock, no command wrappers. Taking and putting back are single list operations, atomic
    between threads, so the process holds as many of these as calls ever ran at once, besides
    the client's own pool. The connections have the client's settings (timeouts, health checks,
    TLS, name), and a call fails as a client call does (redis-py's errors, the connection
    dropped), so the breaker in front of it sees no difference.

    A call is never sent twice: a function such as a rate limit's count is not idempotent, and
    a connection that drops under a call cannot tell whether the server ran it. A connection
    the server closed while it was idle (a restart, a timeout, CLIENT KILL) is seen before the
    call is written (its socket reads as ready: end of file) and replaced then.
    """

    def __init__(self, client: redis.Redis, load: Callable[[], None]) -> None:
        pool = client.connection_pool
        self._make = partial(pool.connection_class, **pool.connection_kwargs)
        self._load = load
        self._idle: list[Any] = []
        self._made: list[Any] = []
        #: The server's clock less this host's, as last learned (``marked``).
        self.offset = 0.0

    def execute(self, *args: Any) -> Any:
        """One command's reply (no response callbacks: bytes, integers and lists as sent)."""
        connection = self._take()
        try:
            return self._send(connection, args)
        finally:
            self._idle.append(connection)

    def marked(self, command: Callable[[float], tuple[Any, ...]]) -> tuple[Any, int | None, float]:
        """Send ``command(now)``, ``now`` the server's time as this process knows it, on a
        connection that knows the mark of the server run it is connected to (``mark`` in
        library.lua, asked when it connected and once a minute after, which also sets the
        clock): (the reply, that mark, or None when the connection was made anew under the
        command, ``now``)."""
        connection = self._take()
        try:
            known = connection.__dict__.get("_taskapp_mark")
            if (
                known is None
                or known[0] is not connection._sock
                or time.monotonic() - known[2] > MARK_TTL_S
            ):
                sent = time.time()
                mark, seconds, micros = functions.call(
                    lambda *args: self._send(connection, args), self._load, "mark", [], []
                )
                received = time.time()
                self.offset = int(seconds) + int(micros) / 1e6 - (sent + received) / 2
                known = connection._taskapp_mark = (connection._sock, int(mark), time.monotonic())
            now = time.time() + self.offset
            reply = self._send(connection, command(now))
            return reply, known[1] if connection._sock is known[0] else None, now
        finally:
            self._idle.append(connection)

    def _take(self) -> Any:
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._make()
            self._made.append(connection)
        sock = connection._sock
        if sock is not None and select.select((sock,), (), (), 0)[0]:
            connection.disconnect()  # closed by the server while idle: connect anew
        return connection

    @staticmethod
    def _send(connection: Any, args: tuple[Any, ...]) -> Any:
        """Write one command and read its reply. On a connected socket whose health check is
        not due, with a hiredis reader of the connection's own (``round_trip``); otherwise
        through redis-py, which connects, and pings a connection idle past the client's
        ``health_check_interval`` before the command."""
        packed = pack_command(args)  # hiredis: no per-argument checks
        sock = connection._sock
        due = connection.health_check_interval
        if sock is not None and not (due and time.monotonic() > connection.next_health_check):
            reply = round_trip(connection, sock, packed)
            if due:
                connection.next_health_check = time.monotonic() + due
            return reply
        connection.send_packed_command([packed])
        return connection.read_response()

    def fcall(self, function: str, keys: list[str], args: list[Any]) -> Any:
        """A function's reply; the library is loaded first when the server does not know it."""
        return functions.call(self.execute, self._load, function, keys, args)

    def close(self) -> None:
        for connection in self._made:
            connection.disconnect()


#: What a hiredis reader answers while a reply is not complete.
_MORE = object()


def round_trip(connection: Any, sock: socket.socket, packed: bytes) -> Any:
    """Send ``packed`` on ``connection``'s socket ``sock`` and read the reply, as redis-py's
    ``send_packed_command`` and ``read_response`` would, without their layers (the host named
    in every call's error text, push messages, the health check's clock): a sendall, then
    receives fed to a hiredis reader kept with the socket, whose errors are redis-py's (its
    parser's ``parse_error``). A reply error is raised; any failure drops the connection and
    is raised as redis-py's ``TimeoutError`` or ``ConnectionError``."""
    known = connection.__dict__.get("_taskapp_reader")
    if known is None or known[0] is not sock:
        reader = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse,
            replyError=connection._parser.parse_error,
            notEnoughData=_MORE,
        )
        known = connection._taskapp_reader = (sock, reader, bytearray(16384))
    _, reader, buffer = known
    try:
        sock.sendall(packed)
        reply = reader.gets()
        while reply is _MORE:
            read = sock.recv_into(buffer)
            if not read:
                raise redis.ConnectionError("Connection closed by server.")
            reader.feed(buffer, 0, read)
            reply = reader.gets()
    except BaseException as exc:
        connection.disconnect()  # the reply, if any, is never read: the connection is gone
        if isinstance(exc, TimeoutError):  # the socket's timeout (socket.timeout)
            raise redis.TimeoutError(f"Timeout on the socket: {exc!r}") from exc
        if isinstance(exc, OSError):
            raise redis.ConnectionError(f"Error on the socket: {exc!r}") from exc
        raise
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply
