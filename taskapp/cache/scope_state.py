"""A hit's admission in one BITFIELD: a scope's version and its rate-limit window, read and counted
at once.

A scope's version (``sv:<hash tag>``: a user's) lives in a small string together with the
scope's rate-limit window (``library.lua``, "Scope states" and "Rate limits", lays it out). A
request whose checks are all in the scope it reads (a user's token and the user's limit) and
whose answer is in the in-process layer needs only that string: one BITFIELD reads the version
and counts the request, and the library's functions run only when something is not as it
usually is:

- the version was not made by the server run this connection knows (it learned the run's mark
  from the library when it connected: a restart or a failover breaks every connection), or the
  string is missing: the library makes the version anew;
- a token's revocation check has not passed under this version in this process (every
  revocation bumps the version, so a verdict remembered under it still holds): the library
  checks the token;
- the total is over the limit (it may hold too much, never too little): the library counts the
  window again and decides.

When the request's slot held another second, that second's count is taken out with one more
BITFIELD. The string is renewed (``keep_state``) when its expiry comes within a window's length.
A request the library then admits is never counted twice: the library is told what was counted.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from taskapp.cache.admission import IN_SCOPE, Admission, Answer, Limited, Verdict

if TYPE_CHECKING:
    from taskapp.cache.derived_keys import Keys
    from taskapp.cache.store import Direct

#: The string's fields, as bit offsets (library.lua, "Scope states").
MARK_AT, COUNT_AT, UNTIL_AT, TOTAL_AT, SLOTS_AT = 0, 64, 128, 160, 192
#: Seconds in a window, and slots in it (a second's slot is its second modulo WINDOW).
WINDOW = 61
#: The string is renewed when it is kept fewer seconds than this.
RENEW_WITHIN_S = WINDOW + 10
#: How long a connection trusts the mark and the clock it learned before it asks again.
MARK_TTL_S = 60.0
#: How long a refusal for memory (a full Redis under noeviction) sends hits to the library,
#: whose functions run when full.
FULL_PAUSE_S = 1.0


def slot_bits(second: int) -> tuple[int, int]:
    """The bit offsets of the second and of the count of ``second``'s slot."""
    at = SLOTS_AT + 64 * (second % WINDOW)
    return at, at + 32


def hit_command(key: str, second: int | None) -> tuple[Any, ...]:
    """The hit's command: read the version and the second until which the string is kept, and
    when ``second`` is given, count a request in its slot (the slot's second is set, which
    answers the one it held) and in the total."""
    read = ("GET", "i64", MARK_AT, "GET", "i64", COUNT_AT, "GET", "u32", UNTIL_AT)
    if second is None:
        return ("BITFIELD_RO", key, *read)
    stamp_at, count_at = slot_bits(second)
    return (
        "BITFIELD", key, *read, "OVERFLOW", "SAT",
        "SET", "u32", stamp_at, second, "INCRBY", "u32", count_at, 1, "INCRBY", "u32", TOTAL_AT, 1,
    )  # fmt: skip


def take_out_command(key: str, second: int, stale: int) -> tuple[Any, ...]:
    """Take ``stale``, the count of a second gone, out of ``second``'s slot and the total."""
    count_at = slot_bits(second)[1]
    return (
        "BITFIELD", key, "OVERFLOW", "SAT",
        "INCRBY", "u32", count_at, -stale, "INCRBY", "u32", TOTAL_AT, -stale,
    )  # fmt: skip


def version_of(mark: int, count: int) -> bytes:
    """A scope version as the library writes it ('<mark>.<count>')."""
    return b"%d.%d" % (mark, count)


class Window(NamedTuple):
    """A scope state or window as stored: the version, the keep-until second, the total and
    each slot's (second, count), decoded for tests and tools."""

    version: tuple[int, int]
    until: int
    total: int
    slots: list[tuple[int, int]]

    @classmethod
    def decode(cls, raw: bytes | None) -> Window:
        raw = (raw or b"").ljust(SLOTS_AT // 8 + 8 * WINDOW, b"\0")
        ints = [int.from_bytes(raw[at : at + 4], "big") for at in range(16, len(raw), 4)]
        mark, count = (int.from_bytes(raw[at : at + 8], "big", signed=True) for at in (0, 8))
        return cls((mark, count), ints[0], ints[1], list(zip(ints[2::2], ints[3::2], strict=True)))

    def counted(self, second: int) -> int:
        """The requests counted in the window at ``second``."""
        return sum(count for stamp, count in self.slots if stamp > second - WINDOW)


class Plan(NamedTuple):
    """What a hit's admission checks: its revocation checks ((key, session field,
    generation), on keys of the scope) and its limit in the scope (0: none)."""

    checks: tuple[tuple[str, str, str], ...]
    limit: int


class Admitter:
    """Admits the requests it can with one BITFIELD on their scope's string (see the module).

    ``verdicts`` remembers, per token (revocation key, session field, generation), the scope
    version under which the library last found it not revoked, for at most ``verdict_ttl``
    seconds; it holds while the version does. Both it and the plans of admissions (one per
    token and limit) are plain dicts, emptied when they grow past ``MEMO_SIZE`` (a few MB at
    most; single dict operations are atomic between threads).
    """

    MEMO_SIZE = 10_000

    def __init__(self, keys: Keys, direct: Direct, verdict_ttl: float = 60.0) -> None:
        self.keys = keys
        self.direct = direct
        self.verdict_ttl = verdict_ttl
        self.verdicts: dict[tuple[str, str, str], tuple[bytes, float]] = {}
        self._plans: dict[tuple[Admission, str], Plan | None] = {}
        self._full_until = 0.0

    def plan(self, admission: Admission, scope_key: str) -> Plan | None:
        """What ``admission`` checks, when it can be admitted here; None when it cannot (a
        check on keys outside the scope, a limit in another window)."""
        known = (admission, scope_key)
        try:
            return self._plans[known]
        except KeyError:
            pass
        if len(self._plans) >= self.MEMO_SIZE:
            self._plans.clear()
        plan = self._plans[known] = self._plan(admission, scope_key)
        return plan

    def _plan(self, admission: Admission, scope_key: str) -> Plan | None:
        checks: list[tuple[str, str, str]] = []
        limit = 0
        for at, (step, key) in enumerate(zip(admission.steps, admission.keys, strict=True)):
            if step == "R":
                full = self.keys.entry(key)
                if self.keys.scope_version(full) != scope_key:
                    return None
                session, generation = admission.args[2 * at : 2 * at + 2]
                checks.append((full, str(session), str(generation)))
            elif step == "L" and key == IN_SCOPE and not limit:
                limit = int(admission.args[2 * at])
            else:
                return None
        return Plan(tuple(checks), limit)

    def admit(
        self, admission: Admission, plan: Plan, scope_key: str
    ) -> tuple[Answer | None, Admission]:
        """(the answer, when the BITFIELD admits the request; else None and the admission to ask
        the library, which says what was counted). Raises redis-py's errors."""
        if time.monotonic() < self._full_until:
            return None, admission
        try:
            (mark, count, until, *counted), known, now = self.direct.marked(
                lambda now: hit_command(scope_key, int(now) if plan.limit else None)
            )
        except redis.exceptions.OutOfMemoryError:
            self._full_until = time.monotonic() + FULL_PAUSE_S  # the library runs when full
            return None, admission
        second = int(now)
        limited = None
        if plan.limit:
            old, in_slot, total = counted
            stale = in_slot - 1 if old != second else 0
            if total > plan.limit or mark != known:
                return None, admission.counted(second, stale)
            if stale:
                try:
                    total = self.direct.execute(*take_out_command(scope_key, second, stale))[1]
                except redis.exceptions.OutOfMemoryError:  # full since: the library takes it out
                    self._full_until = time.monotonic() + FULL_PAUSE_S
                    return None, admission.counted(second, stale)
            # Until this request leaves the window, which bounds when the oldest one does.
            reset_ms = int(((second + WINDOW) - now) * 1000)
            limited = Limited(True, total, reset_ms)
        version = version_of(mark, count)
        if mark != known or not self._passed(plan.checks, version):
            return None, admission.counted(second, 0) if plan.limit else admission
        if until - second < RENEW_WITHIN_S:
            self.direct.fcall("keep_state", [scope_key], [])
        verdict = Verdict.OK if plan.checks else None
        return Answer(True, verdict, limited, version), admission

    def _passed(self, checks: tuple[tuple[str, str, str], ...], version: bytes) -> bool:
        now = time.monotonic()
        for check in checks:
            known = self.verdicts.get(check)
            if known is None or known[0] != version or known[1] < now:
                return False
        return True

    def learn(self, plan: Plan, answer: Answer, version: bytes) -> None:
        """Remember the verdicts of an answer of the library, which read ``version`` (the scope
        version) in the same call."""
        if plan.checks and answer.admitted and answer.verdict == Verdict.OK:
            if len(self.verdicts) >= self.MEMO_SIZE:
                self.verdicts.clear()
            until = time.monotonic() + self.verdict_ttl
            for check in plan.checks:
                self.verdicts[check] = (version, until)
