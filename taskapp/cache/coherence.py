"""How far the in-process layer of one process may trust itself without asking Redis.

A memory entry is kept with the version its scope had in Redis when it was read; it may be served
while that is still the scope's version. The setting L1_CACHE_COHERENCE says how a process knows:

- ``version`` (the default): it asks Redis, once per request, in a call the request makes anyway
  when it can (the rate limit's), else in one small GET. Writes pay nothing.
- ``acked``: it knows from the scope channel, on which every change announces the versions it
  bumped, so a memory hit makes no round trip at all. Two rules make that as strict as asking:

  * **Leases.** A process trusts its channel only while it holds a lease: every HEARTBEAT_EVERY
    its listener registers the process as a member until ``now + LEASE`` (the server's clock)
    and then sends a PING down its subscription. The pong comes back behind every message
    published before it, all applied by then, and renews the lease from the moment before the
    registration, so a process never trusts itself longer than the members set says.
  * **Acknowledged changes.** After every change (``sync``), the writer publishes a sync message
    and waits until each member either acknowledged it, having applied everything published
    before it, or came to the end of its lease. Only then is the write answered.

  A process that hangs, loses its subscription or its Redis stops trusting its memory when its
  lease ends, and writers wait for that at most LEASE. Writes cost a round trip and the members'
  acknowledgements (about a millisecond); the setting needs one Redis server, whose pub/sub keeps
  each subscriber's messages in publish order (not Redis Cluster).

Every writer syncs, whatever its own setting, so processes of both settings may share a Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import partial
from typing import Any

from taskapp.cache import scripts
from taskapp.cache.client import Unavailable
from taskapp.cache.keys import Keys
from taskapp.cache.store import Store

log = logging.getLogger("taskapp.cache")

LEASE = 0.5  # seconds a member's registration lasts
HEARTBEAT_EVERY = 0.1  # seconds between two renewals
MARGIN = 0.05  # seconds a process stops trusting itself before the members set says its lease ends
_PONG = b"lease:"


class Coherence:
    """One process's part in keeping every process's memory coherent (see the module)."""

    def __init__(self, store: Store, keys: Keys, acked: bool) -> None:
        self.store = store
        self.keys = keys
        self.acked = acked and not store.cluster
        self.member = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._lease_until = 0.0  # time.monotonic() at which this process stops trusting itself
        self._members_seen = self.acked  # whether a writer here may have members to wait for

    # -- readers ----------------------------------------------------------------------------

    def trusted(self) -> bool:
        """True while memory may be checked against announced versions, without Redis."""
        return self._lease_until > time.monotonic()

    # -- the listener thread ------------------------------------------------------------------

    def heartbeat(self, pubsub: Any) -> None:
        """Register this process for another LEASE and ping to renew the lease when the pong
        (behind every message published before it) comes back."""
        if not self.acked:
            return
        sent = time.monotonic()
        try:
            self.store.call(
                scripts.HEARTBEAT,
                [self.keys.members],
                [int(LEASE * 1000), self.member],
                op="heartbeat",
            )
        except Unavailable:
            return  # no renewal: the lease runs out
        pubsub.ping(f"{_PONG.decode()}{sent!r}")

    def pong(self, data: Any) -> None:
        """A pong came back: renew the lease from the moment before its registration."""
        if isinstance(data, bytes) and data.startswith(_PONG):
            sent = float(data[len(_PONG) :])
            self._lease_until = max(self._lease_until, sent + LEASE - MARGIN)

    def lost(self) -> None:
        """The subscription is gone: stop trusting memory now."""
        self._lease_until = 0.0

    def acknowledge(self, ack_key: bytes) -> None:
        """A sync message: everything published before it has been applied; say so."""
        if not self.acked:
            return
        try:
            self.store.call(scripts.ACK, [ack_key.decode()], [self.member], op="ack")
        except Unavailable:
            log.debug("sync not acknowledged: Redis unavailable (the writer waits for the lease)")

    def leave(self) -> None:
        """Drop this process's registration (it stops listening), so writers stop waiting for it."""
        self._lease_until = 0.0
        if not self.acked:
            return
        try:
            self.store.run(
                partial(self.store.command, "ZREM", self.keys.members, self.member),
                op="heartbeat",
            )
        except Unavailable:
            pass  # the registration ends with its lease

    # -- writers ------------------------------------------------------------------------------

    def sync(self) -> None:
        """After a change: return once every member has applied it or lost its lease."""
        if self.store.cluster:
            return
        sync_id = os.urandom(8).hex()
        ack_key = self.keys.ack(sync_id)
        try:
            reply = self.store.call(
                scripts.SYNC, [self.keys.members], [self.keys.sync_channel, ack_key], op="sync"
            )
        except Unavailable:
            self._outlive_leases()
            return
        now_ms = float(reply[0])
        started = time.monotonic()
        # member -> when its lease ends, on this process's clock
        pending = {
            reply[i]: started + (float(reply[i + 1]) - now_ms) / 1000
            for i in range(1, len(reply), 2)
        }
        if pending:
            self._members_seen = True
        poll = self.store.socket_timeout / 2
        while pending:
            remaining = max(pending.values()) - time.monotonic()
            if remaining <= 0:
                return  # every member still silent has lost its lease
            try:
                wait = max(0.001, min(remaining, poll))  # BLPOP's 0 would block for good
                popped = self.store.run(
                    partial(self.store.command, "BLPOP", ack_key, wait), op="sync"
                )
            except Unavailable:
                self._outlive_leases()
                return
            if popped:
                pending.pop(popped[1], None)

    def _outlive_leases(self) -> None:
        """Redis failed a sync: wait until every lease granted before the failure has ended
        (processes renew through the same Redis; the breaker makes later writes quick)."""
        if not self._members_seen:
            return
        waited = self.store.breaker.outage_seconds()
        if waited < LEASE:
            time.sleep(LEASE - waited)
