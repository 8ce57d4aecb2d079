"""Held-back invalidations and the breaker's probe: no write answered during an outage is lost.

These drive ``HeldBack`` and ``Breaker`` with a recording ``send`` in place of Redis: what is under
test is the order of their steps across threads, not Redis (the HTTP outage tests run the same
mechanism against a redis-server that is paused and killed).
"""

from __future__ import annotations

import threading

import redis

from taskapp.cache.client import Unavailable
from taskapp.cache.resilience import Breaker, HeldBack


class Recorder:
    """A stand-in for the store's send: records what it sent, fails while told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[str], list[str]]] = []
        self.failing = 0
        self.closed_when_sent: list[bool] = []

    def send(self, tags: list[str], keys: list[str], calls: list) -> None:
        if self.failing:
            self.failing -= 1
            raise redis.ConnectionError("down")
        self.sent.append((tags, keys))


def held_back(recorder: Recorder, ping=lambda: True) -> tuple[Breaker, HeldBack]:
    holder: list[HeldBack] = []
    breaker = Breaker(threshold=3, cooldown=0.01, on_recover=lambda: holder[0].replay())
    held = HeldBack(breaker, recorder.send, ping, run=breaker.call, on_hold=lambda: None)
    holder.append(held)
    return breaker, held


def open_breaker(breaker: Breaker) -> None:
    for _ in range(breaker.threshold):
        try:
            breaker.call(lambda: (_ for _ in ()).throw(redis.ConnectionError("down")))
        except Unavailable:
            pass
    assert breaker.is_open


def test_an_invalidation_that_failed_below_the_threshold_is_sent_before_hold_returns():
    recorder = Recorder()
    breaker, held = held_back(recorder)
    recorder.failing = 1  # one more failure, the breaker stays closed
    held.hold(tags=["t"])
    assert not breaker.is_open
    assert recorder.sent == [(["t"], [])]


def test_the_probe_closes_the_breaker_only_after_sending_what_a_writer_held_back_meanwhile():
    recorder = Recorder()
    pinging, answer = threading.Event(), threading.Event()

    def slow_ping() -> bool:
        if threading.current_thread() is not probe:
            raise redis.ConnectionError("not yet")  # the writer's own try finds Redis away
        pinging.set()
        assert answer.wait(5)  # Redis answers only now: the probe is in flight until then
        return True

    breaker, held = held_back(recorder, ping=slow_ping)
    open_breaker(breaker)
    probe = threading.Thread(target=held.replay)
    probe.start()
    assert pinging.wait(5)
    held.hold(tags=["written during the probe"])  # breaker open: kept for the probe
    assert recorder.sent == []
    answer.set()
    probe.join(5)
    assert recorder.sent == [(["written during the probe"], [])]
    assert not breaker.is_open


def test_a_writer_that_finds_the_breaker_closed_by_the_probe_sends_its_invalidation_itself():
    recorder = Recorder()
    breaker, held = held_back(recorder)
    open_breaker(breaker)
    held.replay()  # nothing held back: the probe closes the breaker
    assert not breaker.is_open
    held.hold(keys=["k"])
    assert recorder.sent == [([], ["k"])]


def test_a_refused_invalidation_is_not_retried_for_ever():
    recorder = Recorder()
    breaker, held = held_back(recorder)
    calls = []

    def refuse(tags, keys, held_calls):
        calls.append(tags)
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    held._send = refuse
    held.hold(tags=["t"])
    assert calls == [["t"]]
    # Kept, and this process uses the cache again only once the probe sent it.
    assert breaker.is_open
