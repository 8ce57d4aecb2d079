"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): the top frames, self and total.

``python -m bench.profile bench/out/profile-http.collapsed`` prints the tables again.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_TRIM = (
    re.compile(r"^.*/site-packages/"),
    re.compile(r"^.*/lib/python3\.\d+/"),
    re.compile(r"^.*/work/main/"),
)


def _name(frame: str) -> str:
    """``function (file)`` without the line number and the install prefix."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for pattern in _TRIM:
        path = pattern.sub("", path)
    return f"{match.group('func')} ({path})"


#: Named parts of a request, each the frames (by prefix) whose time counts for it, inclusive.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("gunicorn: the request, end to end (ThreadWorker.handle)", ("ThreadWorker.handle (gunicorn",)),
    ("gunicorn: read and parse the request", ("Parser.__next__ (gunicorn",)),
    ("gunicorn: access log line", ("Logger.access (gunicorn",)),
    ("gunicorn: write the response", ("Response.write (gunicorn",)),
    (
        "gunicorn: main loop (poll, accept, keep-alive)",
        ("ThreadWorker.wait_for_and_dispatch_events (gunicorn", "ThreadWorker.run (gunicorn"),
    ),
    (
        "taskapp: response-cache fast path before Flask (FastPath)",
        ("FastPath.__call__ (taskapp",),
    ),
    ("Flask: the app (wsgi_app)", ("Flask.wsgi_app (flask",)),
    (
        "Flask: session opened on every request",
        ("SecureCookieSessionInterface.open_session (flask",),
    ),
    ("taskapp: bearer token check (PyJWT decode)", ("_verify (taskapp/auth/tokens.py",)),
    (
        "taskapp: HTTP response cache lookup (incl. token check)",
        ("ResponseCache._lookup (taskapp",),
    ),
    ("taskapp: HTTP response cache store (after_request)", ("ResponseCache._finish (taskapp",)),
    ("taskapp: lease before the view (Redis MGET)", ("RedisCache.lease (taskapp",)),
    ("taskapp: store under the lease (Redis FILL script)", ("RedisCache.store_leased (taskapp",)),
    ("taskapp: task view and service (get_task)", ("get_task (taskapp/tasks/service.py",)),
    ("taskapp: cache read, L1 then Redis (_read)", ("RedisCache._read (taskapp",)),
    ("taskapp: request timing metric (prometheus)", ("(taskapp/metrics.py)",)),
    (
        "redis-py: commands sent (all callers)",
        ("Redis.execute_command (redis", "Script.__call__ (redis"),
    ),
    ("taskapp: pub/sub listener thread", ("Notifier._run (taskapp",)),
]


def _count(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(samples, self samples by function, total samples by function, self samples by package)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # py-spy puts the thread ("process ... thread ...") first; keep frames of code only.
        frames = [_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if f.endswith(")") and "(" in f]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
        packages[frames[-1].rpartition("(")[2].rstrip(")").split("/")[0]] += n
    return samples, own, total, packages


def components(path: Path) -> list[list]:
    """``[label, percent of samples]`` for each part of COMPONENTS (inclusive, so they overlap)."""
    samples, shares = 0, {label: 0 for label, _ in COMPONENTS}
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_name(f) for f in stack.split(";")]
        samples += int(count)
        for label, prefixes in COMPONENTS:
            if any(
                f.startswith(p) or (p.startswith("(") and f.endswith(p))
                for f in frames
                for p in prefixes
            ):
                shares[label] += int(count)
    return [[label, round(100 * n / samples, 1)] for label, n in shares.items()] if samples else []


def top_frames(path: Path, top: int = 12) -> dict:
    """The top functions by self and by total share of the samples, for results.json."""
    samples, own, total, packages = _count(path)

    def share(counter, n):
        return (
            [[name, round(100 * count / samples, 1)] for name, count in counter.most_common(n)]
            if samples
            else []
        )

    return {
        "samples": samples,
        "top_self": share(own, top),
        "top_total": share(total, top * 3),
        "by_package": share(packages, 10),
        "components": components(path),
    }


def summarise(path: Path, top: int = 25) -> str:
    """The top ``top`` functions by self samples and by total (inclusive) samples, as text."""
    samples, own, total, packages = _count(path)
    if not samples:
        return f"{path}: no samples\n"
    lines = [f"{samples} samples of the thread holding the GIL ({Path(path).name})", ""]
    lines.append("self %  function (file)      -- where the time is spent")
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "total %  function (file)     -- time spent in it and below"]
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in total.most_common(top * 2)]
    lines += ["", "total %  part of the request (inclusive: parts overlap)"]
    lines += [f"{share:6.1f}  {label}" for label, share in components(path)]
    lines += ["", "self % by top-level package or file"]
    lines += [f"{100 * n / samples:6.1f}  {name}" for name, n in packages.most_common(15)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarise(Path(arg)))
