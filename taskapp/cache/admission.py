"""A request's admission: the checks it passes in Redis before it reads the cache, in the same call.

An ``Admission`` lists the checks (a revocation hash's check of a session and a generation, a
sliding-window limit) on the app's own keys; the cache runs them, then the request's read, as one
call of the library's ``request`` function (``library.lua``), which stops at the first check
that refuses. Its reply is decoded here, once, into an ``Answer``. A hit from the in-process
layer whose checks are all in its scope may be admitted with one BITFIELD instead
(``scope_state.py``), which answers the same ``Answer``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple


class Verdict(IntEnum):
    """A revocation check's verdict (``Answer.verdict``)."""

    #: Neither the session nor the generation is revoked.
    OK = 1
    #: The hash revokes the session or its generation.
    REVOKED = -1
    #: The hash is missing or was built by another server run: rebuild it, then ask again.
    UNKNOWN = -2


class Limited(NamedTuple):
    """A sliding-window limit's count of one request."""

    allowed: bool
    requests: int  # in the window (this one included when allowed)
    reset_ms: int  # until the oldest counted request leaves the window


class Admission(NamedTuple):
    """The checks of one request, in the order they run (made with ``revocation`` and
    ``limit``, each giving a new admission); keys are the app's own, without the cache's
    prefix."""

    steps: str = ""
    keys: tuple[str, ...] = ()
    args: tuple[Any, ...] = ()

    def revocation(self, key: str, session: str, generation: int) -> Admission:
        """Refuse a request of ``session`` and ``generation`` that the revocation hash ``key``
        revokes (or cannot vouch for: see ``Answer.verdict``)."""
        return Admission(
            self.steps + "R", (*self.keys, key), (*self.args, f"s:{session}", generation)
        )

    def limit(self, key: str, limit: int) -> Admission:
        """Count the request in the rate-limit window ``key``; refuse it past ``limit`` in the
        last 61 whole seconds (so never more than ``limit`` in any 60 seconds)."""
        return Admission(self.steps + "L", (*self.keys, key), (*self.args, limit, ""))

    def scope_limit(self, limit: int) -> Admission:
        """``limit``, in the window kept with the version of the scope the request reads (a
        user's: the cache's ``admit`` with ``scope_of``), so that a hit reads both at once."""
        return self.limit(IN_SCOPE, limit)

    def counted(self, second: int, stale: int) -> Admission:
        """This admission after the app counted the request in its scope's window at ``second``
        and found ``stale`` (the count of a second gone) in its slot (see ``scope_state``)."""
        args = list(self.args)
        args[2 * self.keys.index(IN_SCOPE) + 1] = f"{second} {stale}"  # each check takes two
        return self._replace(args=tuple(args))

    def call(
        self,
        prefixed: Callable[[str], str],
        read: str,
        keys: list[str],
        args: list[Any],
        scope: str = "",
    ) -> tuple[str, list[str], list[Any]]:
        """The steps, keys and arguments of the ``request`` call: these checks (their keys given
        the cache's prefix by ``prefixed``; a limit in the scope counts in ``scope``, the scope
        version's key), then ``read`` ('E' an entry, 'S' a version, '' none) on ``keys`` with
        ``args``."""
        checked = [scope if k == IN_SCOPE else prefixed(k) for k in self.keys]
        if IN_SCOPE in self.keys and not scope:
            raise ValueError("a limit in the scope needs the scope the request reads")
        return self.steps + read, checked + keys, [*self.args, *args]


class Answer(NamedTuple):
    """A ``request`` call's reply, decoded: whether every check passed, each check's outcome
    (None when the admission did not ask it), and the read's answer (None when refused)."""

    admitted: bool
    verdict: int | None = None
    limited: Limited | None = None
    read: Any = None

    @classmethod
    def decode(cls, steps: str, reply: list[Any]) -> Answer:
        """The answer of a call of ``steps``."""
        verdict = limited = read = None
        for step, answer in zip(steps, reply[1:], strict=False):
            if step == "R":
                verdict = int(answer)
            elif step == "L":
                limited = Limited(bool(answer[0]), int(answer[1]), int(answer[2]))
            else:
                read = answer
        return cls(bool(reply[0]), verdict, limited, read)


#: The key of a limit kept in the request's scope (``Admission.scope_limit``).
IN_SCOPE = ""

#: No admission: the request's read alone.
NONE = Admission()
