"""One pub/sub subscription per process: wakes the callers waiting for a fill."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from taskapp.cache.client import REDIS_ERRORS
from taskapp.cache.derived_keys import Keys

log = logging.getLogger("taskapp.cache")

PING_EVERY = 0.5  # seconds between pings on a quiet channel
SILENCE_LIMIT = 1.5  # seconds without any message (not even a pong) before the channel is lost


class Notifier:
    """A daemon thread that listens on the fill channel of one app.

    Waiters register a ``threading.Event`` for the key they wait on; a fill message sets it, so
    a waiter wakes within a round trip of the fill landing instead of sleeping a fixed interval.
    When the subscription is lost (a disconnect, or a hung server that stops answering pings)
    every waiter is woken to poll instead, until the subscription is back.
    """

    def __init__(self, client: Any, keys: Keys, on_tick: Callable[[], None] | None = None) -> None:
        self._client = client
        self._on_tick = on_tick
        self._channels = (keys.fill_channel,)
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.subscribed = threading.Event()

    @property
    def running(self) -> bool:
        """True while the listener thread of this process is alive (cheap: on every lookup)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        """Start listening in this process (again after a fork); idempotent."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self.subscribed.clear()
            self._events.clear()
            self._thread = threading.Thread(
                target=self._run, name="taskapp-cache-notifier", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout)
        self._thread = None

    def waiter(self, full_key: str) -> threading.Event:
        """An event set when a fill of ``full_key`` lands (register before re-reading the key)."""
        with self._lock:
            event = self._events.get(full_key)
            if event is None:
                event = self._events[full_key] = threading.Event()
            return event

    def _wake(self, full_key: str) -> None:
        with self._lock:
            event = self._events.pop(full_key, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._client.pubsub()
                pubsub.subscribe(*self._channels)
                self._listen(pubsub)
                delay = 0.05
            except (*REDIS_ERRORS, ChannelSilent) as exc:
                self._lost(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except REDIS_ERRORS:
                        log.debug("closing a broken pub/sub connection failed", exc_info=True)

    def _listen(self, pubsub: Any) -> None:
        last_heard = last_ping = time.monotonic()
        pending_subscriptions = len(self._channels)
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                kind = message["type"]
                if kind == "message":
                    self._wake(message["data"].decode())
                elif kind == "subscribe":
                    pending_subscriptions -= 1
                    if pending_subscriptions == 0:
                        self._connected()
            if now - last_ping >= PING_EVERY:
                pubsub.ping()
                last_ping = now
                if self._on_tick is not None:
                    self._on_tick()  # housekeeping off the request path
            if now - last_heard > SILENCE_LIMIT:
                raise ChannelSilent(f"no message for {now - last_heard:.1f}s")

    def _connected(self) -> None:
        self.subscribed.set()
        self._wake_all()
        log.info("cache channel subscribed (pid %s)", os.getpid())

    def _lost(self, exc: BaseException) -> None:
        was_subscribed = self.subscribed.is_set()
        self.subscribed.clear()
        self._wake_all()
        if was_subscribed:
            log.warning("cache fill channel lost (%s); waiters poll until it is back", exc)


class ChannelSilent(Exception):
    """The pub/sub connection stopped answering pings (a hung server)."""
