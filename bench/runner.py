"""The bench behind ``bench/run``: interleaved repeats of every row, a write's cost, a stampede, a hung Redis.

It starts its own redis-server and FerretDB on free loopback ports and serves every row with
``gunicorn -c gunicorn.conf.py`` (1 worker, the access log off). Each repeat runs every row once
at 1 and at 16 connections, in a rotated order, so that a noisy moment lands on a different row
each time; ratios are taken to bare Flask within the same repeat. Raw numbers go to
``bench/out/results.json``, the tables to ``bench/results.md`` (see ``bench/report.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench import report
from taskapp.cache import scripts

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HOST = "127.0.0.1"
CONNECTIONS = (1, 16)
NEVER_REACHED = str(10**9)  # wrk sends thousands a second: 600 a minute would answer 429
# (label, gunicorn target, settings); every row differs from "defaults" by one setting at most.
ROWS: list[tuple[str, str, dict[str, str]]] = [
    ("bare Flask route (the reference)", "bench.apps:bare()", {}),
    ("raw WSGI callable (the server's ceiling)", "bench.apps:raw()", {}),
    ("taskapp, the defaults (rate limit on)", "wsgi:app", {}),
    ("taskapp, rate limit off", "wsgi:app", {"RATE_LIMIT_PER_MINUTE": "0"}),
    ("taskapp, in-process layer off", "wsgi:app", {"L1_CACHE_MAX_ITEMS": "0"}),
    ("taskapp, HTTP_FAST_PATH=0", "wsgi:app", {"HTTP_FAST_PATH": "0"}),
    ("taskapp, request path on redis-py's pool (no Direct)", "bench.apps:pooled()", {}),
    ("taskapp, no route memo in the fast path", "bench.apps:unrouted()", {}),
    # Redis refuses connections and memory is off: every GET checks the token and reads FerretDB.
    ("taskapp, uncached read (50 ms)", "wsgi:app", {"L1_CACHE_MAX_ITEMS": "0", "REDIS_URL": "-"}),
]

OPTIONS = [
    ("--repeats", 5, "interleaved repeats of every row"),
    ("--seconds", 2.0, "seconds of each wrk slice"),
    ("--threads", 128, "GUNICORN_THREADS of every server (all of a stampede in flight)"),
    ("--pages", 5000, "the user's cached list pages before the big write"),
    ("--write-repeats", 5, "PATCHes per page count"),
    ("--stampede", 100, "GETs of a stampede"),
    ("--rounds", 5, "stampede rounds, each on a cold key"),
    ("--hung-seconds", 5, "seconds Redis is SIGSTOPped under load; 0 skips it"),
]
SCRIPTS = {
    hashlib.sha1(source.encode()).hexdigest(): name
    for name, source in vars(scripts).items()
    if name.isupper() and isinstance(source, str)
}


def log(message: str) -> None:
    """A progress line on stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """True once something accepts connections on ``port``."""
    with socket.create_connection((HOST, port), 1):
        return True


def http(method: str, url: str, body: Any = None, token: str = "") -> tuple[int, dict, bytes]:
    """One request with urllib: (status, headers, body); HTTP errors are answers too."""
    request = urllib.request.Request(url, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Processes:
    """What the run started, each in its own session; stopped by process group, newest first."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], cwd: Path = ROOT, **env: str) -> subprocess.Popen:
        """Start ``argv`` in its own session, its output in bench/out/NAME.log."""
        with open(OUT / f"{name}.log", "wb") as logfile:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process group (SIGCONT first), SIGKILL what is left after 20 s."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a paused redis-server would hold the others
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def command_name(command: bytes) -> str:
    """A logged command's name; a script's by the name of its constant in taskapp/cache/scripts.py."""
    words = command.decode(errors="replace").split()
    if words[0].upper() == "EVALSHA" and len(words) > 1:
        return f"EVALSHA {SCRIPTS.get(words[1], words[1][:8])}"
    return words[0]


def burst(url: str, token: str, n: int) -> list[int]:
    """The statuses of ``n`` GETs of ``url`` from ``n`` threads released together."""
    gate = threading.Barrier(n)

    def get(_: int) -> int:
        gate.wait()
        return http("GET", url, token=token)[0]

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(get, range(n)))


def wait_for(check: Any, what: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    """Poll ``check()`` until true; fail naming ``what`` if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if check():
                return
        except Exception:  # not up yet: refused connections, timeouts
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up; see bench/out/")


class Bench:
    """The servers of one run and the measurements taken on them."""

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args, self.procs = args, procs
        self.secret = secrets.token_urlsafe(32)
        self.redis_port = free_port()
        self.redis_url = f"redis://{HOST}:{self.redis_port}/0"

    def start_backends(self) -> None:
        """The bench's own redis-server and FerretDB (SQLite files in a temporary folder)."""
        argv = ["redis-server", "--save", "", *f"--bind {HOST} --port {self.redis_port}".split()]
        self.redis_proc = self.procs.start("redis", argv)
        self.redis = redis.Redis(host=HOST, port=self.redis_port)
        wait_for(self.redis.ping, "redis-server", self.redis_proc)
        build = subprocess.run(
            [ROOT / "scripts" / "build-ferretdb"], check=True, capture_output=True, text=True
        )
        port = free_port()
        self.ferret_dir = tempfile.TemporaryDirectory(prefix="taskapp-bench-ferretdb-")
        folder = self.ferret_dir.name  # its SQLite files and its state.json
        options = f"--handler=sqlite --sqlite-url=file:{folder}/ --state-dir={folder} "
        options += (
            f"--listen-addr={HOST}:{port} --telemetry=disable --log-level=error --debug-addr=-"
        )
        proc = self.procs.start("ferretdb", [build.stdout.split()[-1], *options.split()])
        wait_for(lambda: listening(port), "FerretDB", proc)
        self.mongodb = f"mongodb://{HOST}:{port}"

    def serve(self, name: str, target: str, cwd: Path = ROOT, **settings: str) -> str:
        """A gunicorn server of ``target`` with the bench's settings; its base URL once it answers.
        ``cwd``: the checkout it serves (another commit's, for the baseline row)."""
        port = free_port()
        env = {
            "GUNICORN_BIND": f"{HOST}:{port}",
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": str(self.args.threads),
            "GUNICORN_ACCESSLOG": "off",
            "SECRET_KEY": self.secret,
            "REDIS_URL": self.redis_url,
            "MONGODB_URI": f"{self.mongodb}/bench_{name}",
            "SIMULATED_DB_LATENCY_MS": "50",
            "RATE_LIMIT_PER_MINUTE": NEVER_REACHED,
            "ACCESS_TOKEN_TTL": "86400",  # a run outlasts the 15-minute default
            "PYTHONPATH": str(cwd),
            **settings,
        }
        if env["REDIS_URL"] == "-":
            env["REDIS_URL"] = f"redis://{HOST}:{free_port()}/0"  # nothing listens there
        argv = [str(ROOT / ".venv/bin/gunicorn"), "-c", "gunicorn.conf.py", target]
        proc = self.procs.start(name, argv, cwd, **env)
        base = f"http://{HOST}:{port}"
        wait_for(lambda: http("GET", base + "/healthz")[0] in (200, 404), name, proc)
        return base

    def seed(self, base: str) -> tuple[str, str]:
        """Register, log in and create a task through the API: (token, the task's URL)."""
        account = {
            "email": f"bench-{secrets.token_hex(4)}@example.com",
            "password": secrets.token_hex(12),
        }
        assert http("POST", base + "/api/v1/auth/register", account)[0] == 201
        token = json.loads(http("POST", base + "/api/v1/auth/login", account)[2])["access_token"]
        return token, self.new_task(base, token)

    @staticmethod
    def new_task(base: str, token: str) -> str:
        """Create a task through the API; its URL."""
        task = {"title": "Benchmark task", "priority": "high", "due_date": "2030-01-01T00:00:00Z"}
        status, _, body = http("POST", base + "/api/v1/tasks", task, token)
        assert status == 201, body
        return f"{base}/api/v1/tasks/{json.loads(body)['id']}"

    @staticmethod
    def db_reads(base: str) -> float:
        """taskapp_db_reads_total from the server's /metrics."""
        lines = http("GET", base + "/metrics")[2].decode().splitlines()
        return sum(float(x.split()[-1]) for x in lines if x.startswith("taskapp_db_reads_total"))

    def wrk(
        self, url: str, connections: int, seconds: float, token: str = "", timeout: int = 5
    ) -> dict:
        """One wrk slice: requests, req/s, latency percentiles, failed answers."""
        options = f"-t{min(connections, 2)} -c{connections} -d{seconds:g}s --timeout={timeout}s"
        argv = ["wrk", *options.split(), "-s", str(ROOT / "bench/wrk.lua"), url]
        done = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, "BENCH_TOKEN": token}
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
        result = json.loads(line.removeprefix("BENCH_JSON "))
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        return result

    def throughput(self, rows: list[tuple[str, str, str]]) -> dict[str, dict[str, list[dict]]]:
        """Every repeat runs every row once per connection count, the order rotated each time."""
        for _, url, token in rows:
            self.wrk(url, 16, self.args.seconds, token)  # warm-up, not counted
        runs: dict[str, dict[str, list[dict]]] = {
            label: {str(c): [] for c in CONNECTIONS} for label, _, _ in rows
        }
        for repeat in range(self.args.repeats):
            shift = repeat % len(rows)
            for label, url, token in rows[shift:] + rows[:shift]:
                for c in CONNECTIONS:
                    runs[label][str(c)].append(self.wrk(url, c, self.args.seconds, token))
            log(f"repeat {repeat + 1} of {self.args.repeats} done")
        return runs

    def write_cost(self) -> dict[str, list[dict]]:
        """PATCH latency, and the Redis commands it caused, with 1 and with ``--pages`` cached list pages."""
        base = self.serve(
            "writes",
            "wsgi:app",
            RATE_LIMIT_PER_MINUTE="0",
            SIMULATED_DB_LATENCY_MS="0",
            REDIS_URL=f"redis://{HOST}:{self.redis_port}/1",
            TASK_LIST_CACHE_TTL="3600",
            HTTP_CACHE_TTL="3600",
        )
        token, task = self.seed(base)
        dates = [dt.datetime(2031, 1, 1) + dt.timedelta(seconds=i) for i in range(self.args.pages)]
        urls = [f"{base}/api/v1/tasks?due_before={d:%Y-%m-%dT%H:%M:%S}" for d in dates]
        db1 = redis.Redis(host=HOST, port=self.redis_port, db=1)
        self.redis.config_set("slowlog-max-len", 10000)
        results: dict[str, list[dict]] = {"1": [], str(self.args.pages): []}
        with ThreadPoolExecutor(4) as pool:
            for repeat in range(self.args.write_repeats):
                for pages in (1, self.args.pages)[:: 1 if repeat % 2 else -1]:
                    assert all(
                        s == 200
                        for s in pool.map(lambda u: http("GET", u, token=token)[0], urls[:pages])
                    )
                    assert http("GET", urls[0], token=token)[1].get("X-Cache") == "HIT"
                    keys = db1.dbsize()
                    results[str(pages)].append(
                        {"keys": keys, **self.timed_patch(task, token, repeat)}
                    )
        self.redis.config_set("slowlog-log-slower-than", 10000)
        log(f"write cost: {results}")
        return results

    def timed_patch(self, task: str, token: str, n: int) -> dict:
        """One PATCH: its latency, and every Redis command it caused with its time (``SLOWLOG``)."""
        self.redis.config_set("slowlog-log-slower-than", 0)  # log every command, with its time
        self.redis.slowlog_reset()
        started = time.perf_counter()
        status = http("PATCH", task, {"title": f"write {n}"}, token)[0]
        seconds = time.perf_counter() - started
        self.redis.config_set("slowlog-log-slower-than", -1)
        assert status == 200, status
        logged = [
            e
            for e in self.redis.slowlog_get(10000)
            if not e["command"].startswith((b"CONFIG", b"SLOWLOG"))
        ]
        longest = max(logged, key=lambda e: e["duration"])
        return {
            "patch_ms": seconds * 1000,
            "commands": len(logged),
            "longest": command_name(longest["command"]),
            "redis_busy_us": sum(e["duration"] for e in logged),
            "longest_us": longest["duration"],
        }

    def stampede(self, base: str, token: str) -> list[dict]:
        """``--stampede`` GETs released at once on a task nobody has read: database reads per round."""
        rounds = []
        for _ in range(self.args.rounds):
            url, before = self.new_task(base, token), self.db_reads(base)
            statuses = burst(url, token, self.args.stampede)
            rounds.append({"db_reads": self.db_reads(base) - before, "ok": statuses.count(200)})
        log(f"stampede: {rounds}")
        return rounds

    def hung(self, url: str, token: str) -> dict:
        """wrk at 16 connections while the bench's redis-server is stopped (SIGSTOP), resumed after."""
        os.kill(self.redis_proc.pid, signal.SIGSTOP)
        try:
            result = self.wrk(url, 16, self.args.hung_seconds, token, timeout=10)
        finally:
            os.kill(self.redis_proc.pid, signal.SIGCONT)
        log(f"Redis hung: {result}")
        return result

    def run(self) -> dict[str, Any]:
        """Start everything, check every row answers alike, then measure in turn."""
        self.start_backends()
        served = {}  # label: (url, token)
        for i, (label, target, settings) in enumerate(ROWS[2:], 2):
            token, url = self.seed(self.serve(f"row{i}", target, **settings))
            served[label] = (url, token)
        if self.args.baseline:  # the defaults row, served from another commit's checkout
            base = Path(self.args.baseline).resolve()
            commit = subprocess.run(
                ["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            label = f"taskapp, the defaults, at the baseline commit {commit}"
            ROWS.append((label, "wsgi:app", {}))
            token, url = self.seed(self.serve("baseline", "wsgi:app", base))
            served[label] = (url, token)
        url, token = served[ROWS[2][0]]
        body = http("GET", url, token=token)[2]
        os.environ["BENCH_TASK_JSON"] = body.decode()  # the reference apps answer the same bytes
        for i, (label, target, _) in enumerate(ROWS[:2]):
            served[label] = (self.serve(f"row{i}", target) + "/api/v1/tasks/x", "")
        rows = [(label, *served[label]) for label, _, _ in ROWS]
        for label, url, token in rows:  # every task's answer has the same length (id, dates)
            status, _, answer = http("GET", url, token=token)
            assert status == 200 and len(answer) == len(body), (label, status, answer[:200])
        results: dict[str, Any] = {"load_before": os.getloadavg(), "args": vars(self.args)}
        results["throughput"] = self.throughput(rows)
        results["load_after"] = os.getloadavg()
        results["writes"] = self.write_cost()
        url, token = served[ROWS[3][0]]  # rate limit off
        results["stampede"] = self.stampede(url.split("/api/")[0], token)
        if self.args.hung_seconds:
            results["hung"] = self.hung(url, token)
        return results


def main() -> None:
    """``bench/run``: measure, then write results.json and results.md, stopping every server."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    for flag, default, meaning in OPTIONS:
        parser.add_argument(
            flag, type=type(default), default=default, help=f"{meaning} ({default})"
        )
    parser.add_argument("--smoke", action="store_true", help="label the results a smoke run")
    parser.add_argument(
        "--baseline", default="", help="a checkout of another commit: one more row, its defaults"
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # exit through the finally below
        signal.signal(signum, lambda n, _: sys.exit(128 + n))
    procs = Processes()
    bench = Bench(args, procs)  # held until the end: its FerretDB folder goes when it does
    try:
        results = bench.run()
    finally:
        procs.stop_all()
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["git"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    (ROOT / "bench/results.md").write_text(report.markdown(results))
    log("wrote bench/results.md and bench/out/results.json")


if __name__ == "__main__":
    main()
