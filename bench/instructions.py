"""Instructions per request of a cached task GET and of the bare Flask route, in one process each,
counted by valgrind's callgrind: a measure of the Python work a hit does that the machine's
noise does not move (``bench/run``'s req/s move by a third between repeats here).

    python -m bench.instructions [--calls N]

Each app runs in a child process under callgrind, with a real redis-server of its own (the
tests' ``tests/redis_server.py``), Prometheus in multiprocess mode as under gunicorn and the
embedded MongoDB (a hit does not read it). After a warm-up and a ``gc.freeze()`` (as
``gunicorn.conf.py`` does in each worker) the counters are zeroed, the app
answers ``--calls`` requests (``app(environ, start_response)``, as gunicorn calls it) and the
counters are dumped. User-space instructions only: the kernel's share of the hit's Redis round
trip, Redis's own work and any waiting are not in them (``bench/run`` measures those).
Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def child(what: str, redis_url: str, calls: int) -> None:
    """In the child under callgrind: warm up, then answer ``calls`` requests between the
    parent's zeroing and dumping of the counters (each handshake a line on stdin/stdout)."""
    os.environ.update(
        REDIS_URL=redis_url,
        MONGODB_URI="mongomock://localhost/instructions",
        SECRET_KEY="i" * 40,
        RATE_LIMIT_PER_MINUTE=str(10**9),
        LOG_LEVEL="WARNING",
    )
    from werkzeug.test import EnvironBuilder

    from bench.apps import bare
    from taskapp import create_app

    if what == "bare":
        app, environ = bare(), EnvironBuilder(path="/api/v1/tasks/x").get_environ()
    else:
        from tests.api import account

        app = create_app()
        client = app.test_client()
        _, headers = account(client)  # the tests' register and log-in
        task = client.post("/api/v1/tasks", json={"title": "i"}, headers=headers).get_json()
        environ = EnvironBuilder(path=f"/api/v1/tasks/{task['id']}", headers=headers).get_environ()

    def answer() -> None:
        body = app(dict(environ), lambda status, headers, exc_info=None: None)
        b"".join(body)
        getattr(body, "close", lambda: None)()

    for _ in range(300):
        answer()
    gc.freeze()  # as gunicorn.conf.py does in each worker: collections walk only new objects
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(calls):
        answer()
    print("done", flush=True)
    sys.stdin.readline()


def count(what: str, redis_url: str, calls: int, out: Path) -> float:
    """Instructions per request of ``what`` ('bare' or 'hit')."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=out)}
    env["PYTHONHASHSEED"] = "0"  # string hashes, hence dict layouts, the same every run
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{what}.%p",
        sys.executable, "-m", "bench.instructions", "--child", what, redis_url, str(calls),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for expected, control in (("ready", "-z"), ("done", "-d")):
            line = proc.stdout.readline().strip()
            if line != expected:
                raise RuntimeError(f"{what}: the child said {line!r}, not {expected!r}")
            subprocess.run(["callgrind_control", control, str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.wait(120)
    dump = out / f"{what}.{proc.pid}.1"  # the first dump: the counted requests
    summary = next(x for x in dump.read_text().splitlines() if x.startswith("summary:"))
    return int(summary.split()[1]) / calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="requests counted per app")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, redis_url, calls = args.child
        child(what, redis_url, int(calls))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions needs valgrind (apt-get install valgrind)")
    redis_server = RedisServer()
    try:
        with tempfile.TemporaryDirectory() as out:
            counted = {
                w: count(w, redis_server.url, args.calls, Path(out)) for w in ("bare", "hit")
            }
    finally:
        redis_server.stop()
    for what, label in (("bare", "bare Flask route"), ("hit", "taskapp's cached task GET")):
        print(f"{label}: {counted[what] / 1000:.0f}k instructions a request")
    print(f"the hit ÷ the bare route: {counted['hit'] / counted['bare']:.2f}")


if __name__ == "__main__":
    main()
