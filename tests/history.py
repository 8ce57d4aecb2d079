"""A history of answered writes and reads, and its check: no read older than an answered write.

Jepsen's idea on a small scale. One writer sets a task's title to increasing integers; readers
record what they saw. A write answered (2xx) before a read began is a lower bound for that read:
the read must show that value or a newer one. Writes that failed or were never answered bound
nothing (they may or may not have happened), so only answered writes are counted.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Op:
    """One request: what was asked, when (monotonic seconds), and what came back."""

    kind: str  # "write", "read-task" or "read-list"
    start: float
    end: float
    status: int  # 0 when no answer came (timeout, refused connection)
    value: int | None  # the title written, or the title read (None when not shown)
    request_id: str = ""
    cache: str = ""  # X-Cache of a read
    pid: int | None = None  # the worker that answered (from the access log)


@dataclass
class History:
    """Every operation of a run, recorded from many threads."""

    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[float] = field(default_factory=list)  # when each fault was over

    def hits_after_faults(self) -> int:
        """Reads begun after the last fault and answered from a cache (X-Cache: HIT)."""
        last = max(self.faults, default=float("-inf"))
        return sum(1 for op in self.reads() if op.start > last and op.cache == "HIT")

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def snapshot(self) -> list[Op]:
        """The operations so far (the threads may still be adding)."""
        with self.lock:
            return list(self.ops)

    def writes(self) -> list[Op]:
        return [op for op in self.snapshot() if op.kind == "write"]

    def reads(self) -> list[Op]:
        """The reads answered 200: the ones that show a value to check."""
        return [op for op in self.snapshot() if op.kind.startswith("read") and op.status == 200]

    def answered_writes(self) -> list[Op]:
        return [op for op in self.writes() if 200 <= op.status < 300]


@dataclass(frozen=True)
class Stale:
    """A read that showed a value older than a write answered before it began."""

    read: Op
    bound: int  # the newest value answered before the read began


def stale_reads(history: History) -> list[Stale]:
    """Every read older than the newest write answered before the read was sent."""
    answered = sorted(history.answered_writes(), key=lambda op: op.end)
    ends = [op.end for op in answered]
    newest = []  # newest[i]: the largest value among the first i + 1 answered writes
    for op in answered:
        newest.append(max(op.value, newest[-1]) if newest else op.value)
    found = []
    for read in history.reads():
        done = bisect.bisect_left(ends, read.start)  # writes answered strictly before the read
        if done == 0:
            continue
        bound = newest[done - 1]
        if read.value is None or read.value < bound:
            found.append(Stale(read, bound))
    return found


def summary(history: History, stale: list[Stale]) -> str:
    """One line for the test report: what was checked and what was found."""
    reads = history.reads()
    writes = history.writes()
    answered = history.answered_writes()
    by_kind = Counter(s.read.kind for s in stale)
    by_cache = Counter(s.read.cache or "-" for s in stale)
    by_pid = Counter(s.read.pid for s in stale)
    statuses = Counter(op.status for op in history.ops)
    return (
        f"{len(reads)} reads checked ({len(history.ops) - len(writes) - len(reads)} not answered 200), "
        f"{len(answered)} of {len(writes)} writes answered; statuses {dict(statuses)}; "
        f"stale reads: {len(stale)} {dict(by_kind)} by X-Cache {dict(by_cache)} "
        f"over {len(by_pid)} worker(s); {history.hits_after_faults()} HITs after the last fault"
    )


def clock() -> float:
    """The clock every operation is stamped with (one process, so one monotonic clock)."""
    return time.monotonic()
