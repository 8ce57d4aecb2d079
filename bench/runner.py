"""The bench behind ``bench/run``: speed and Redis's cost of a hit, a write, a stampede, a hung Redis.

Its own redis-server and FerretDB, every row under ``gunicorn -c gunicorn.conf.py`` (1 worker);
each repeat runs every row once at 1 and at 16 connections, in a rotated order. Raw numbers go
to ``bench/out/``, the tables to ``bench/results.md`` and ``docs/benchmarks.md`` (``report.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench import report
from bench.apps import GET_KEY
from tests.ferretdb import FerretDBServer
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HOST = "127.0.0.1"
NEVER_REACHED = str(10**9)  # wrk sends thousands a second: 600 a minute would answer 429
# (label, gunicorn target, settings); every taskapp row differs from the defaults by one thing.
ROWS: list[tuple[str, str, dict[str, str]]] = [
    (report.BARE, "bench.apps:bare()", {}),
    (report.DEFAULTS, "wsgi:app", {}),
    ("taskapp, rate limit off", "wsgi:app", {"RATE_LIMIT_PER_MINUTE": "0"}),
    ("taskapp, in-process layer off", "wsgi:app", {"L1_CACHE_MAX_ITEMS": "0"}),
    ("taskapp, fast path off", "wsgi:app", {"HTTP_FAST_PATH": "0"}),
    ("taskapp, Direct off (redis-py's pool)", "bench.apps:pooled()", {}),
    ("taskapp, route memo off", "bench.apps:unrouted()", {}),
    (report.SAME_CLIENT, "bench.apps:same_client()", {}),
    # Redis refuses connections and memory is off: every GET checks the token and reads FerretDB.
    (report.UNCACHED, "wsgi:app", {"L1_CACHE_MAX_ITEMS": "0", "REDIS_URL": "-"}),
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
    ("--baseline", "", "a checkout of another commit: one more row, its defaults"),
]
# The write's server: no rate limit, no simulated latency, pages kept, a Redis database of its own.
WRITES = {"RATE_LIMIT_PER_MINUTE": "0", "SIMULATED_DB_LATENCY_MS": "0", "HTTP_CACHE_TTL": "3600"}
WRITES |= {"TASK_LIST_CACHE_TTL": "3600"}


def log(message: str) -> None:
    """A progress line on stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def http(method: str, url: str, body: Any = None, token: str = "") -> tuple[int, dict, bytes]:
    """One request with urllib: (status, headers, body); HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    headers |= {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wrk(url: str, connections: int, seconds: float, token: str = "", timeout: int = 5) -> dict:
    """One wrk slice: requests, req/s, latency percentiles, failed answers."""
    options = f"-t{min(connections, 2)} -c{connections} -d{seconds:g}s --timeout={timeout}s"
    argv = ["wrk", *options.split(), "-s", str(ROOT / "bench/wrk.lua"), url]
    env = {**os.environ, "BENCH_TOKEN": token}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def commit(checkout: Path) -> str:
    """The short hash of a checkout's HEAD."""
    return subprocess.check_output(
        ["git", "-C", checkout, "rev-parse", "--short", "HEAD"], text=True
    ).strip()


def seed(base: str) -> tuple[str, str]:
    """Register, log in and create a task through the API: (the task's URL, token)."""
    account = {"email": f"bench-{secrets.token_hex(4)}@example.com", "password": "b" * 16}
    assert http("POST", base + "/api/v1/auth/register", account)[0] == 201
    token = json.loads(http("POST", base + "/api/v1/auth/login", account)[2])["access_token"]
    return new_task(base, token), token


def new_task(base: str, token: str) -> str:
    """Create a task through the API; its URL."""
    task = {"title": "Benchmark task", "priority": "high", "due_date": "2030-01-01T00:00:00Z"}
    status, _, body = http("POST", base + "/api/v1/tasks", task, token)
    assert status == 201, body
    return f"{base}/api/v1/tasks/{json.loads(body)['id']}"


def db_reads(base: str) -> float:
    """taskapp_db_reads_total from the server's /metrics."""
    lines = http("GET", base + "/metrics")[2].decode().splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("taskapp_db_reads_total"))


class Bench:
    """The servers of one run and the measurements taken on them."""

    def __init__(self, args: argparse.Namespace, redis_server: RedisServer, mongodb: str) -> None:
        self.args, self.redis_server, self.mongodb = args, redis_server, mongodb
        self.redis = redis.Redis(host=HOST, port=redis_server.port)
        self.secret = secrets.token_urlsafe(32)
        self.started: list[subprocess.Popen] = []

    def serve(self, name: str, target: str, cwd: Path = ROOT, **settings: str) -> str:
        """A server of ``target`` (from the checkout ``cwd``); its base URL once it answers."""
        port = free_port()
        env = {
            **os.environ,
            "GUNICORN_BIND": f"{HOST}:{port}",
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": str(self.args.threads),
            "GUNICORN_ACCESSLOG": "off",
            "SECRET_KEY": self.secret,
            "REDIS_URL": self.redis_server.url,
            "MONGODB_URI": f"{self.mongodb}bench_{name}",
            "SIMULATED_DB_LATENCY_MS": "50",
            "RATE_LIMIT_PER_MINUTE": NEVER_REACHED,
            "ACCESS_TOKEN_TTL": "86400",  # a run outlasts the 15-minute default
            "PYTHONPATH": str(cwd),
            **settings,
        }
        if env["REDIS_URL"] == "-":
            env["REDIS_URL"] = f"redis://{HOST}:{free_port()}/0"  # nothing listens there
        argv = [str(ROOT / ".venv/bin/gunicorn"), "-c", "gunicorn.conf.py", target]
        with open(OUT / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True
            )
        self.started.append(proc)
        base, deadline = f"http://{HOST}:{port}", time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if http("GET", base + "/healthz")[0] in (200, 404):
                    return base
            except OSError:  # not listening yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not come up; see bench/out/{name}.log")

    def stop(self) -> None:
        """SIGTERM every server's process group, SIGKILL what is left after 20 s."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def redis_now(self) -> tuple[float, dict[str, int]]:
        """The Redis server's CPU time so far (user + system, µs) and its calls per command (a
        function's inner commands included)."""
        info = self.redis.execute_command("INFO", "cpu", "commandstats")
        calls = {k[8:]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
        return (info["used_cpu_user"] + info["used_cpu_sys"]) * 1e6, calls

    def measured(self, url: str, c: int, token: str, redis_cost: bool) -> dict:
        """One wrk slice; with ``redis_cost``, Redis's CPU and commands per answer during it,
        then the CPU per GET of as many plain GETs (of ``GET_KEY``) sent back to back."""
        if not redis_cost:
            return wrk(url, c, self.args.seconds, token)
        cpu, calls = self.redis_now()
        result = wrk(url, c, self.args.seconds, token)
        after, n = self.redis_now(), result["requests"]
        calls = {k: v - calls.get(k, 0) for k, v in after[1].items() if k != "info"}
        result["redis_us"] = (after[0] - cpu) / n
        result["fcalls"] = calls.pop("fcall", 0) / n
        result["commands"] = sum(calls.values()) / n
        cpu = self.redis_now()[0]
        for _ in range(n):
            self.redis.get(GET_KEY)
        result["b2b_us"] = (self.redis_now()[0] - cpu) / n
        return result

    def throughput(self, rows: list[tuple[str, str, str]]) -> dict[str, dict[str, list[dict]]]:
        """Every repeat runs every row once per connection count, the order rotated each time."""
        for _, url, token in rows:
            wrk(url, 16, self.args.seconds, token)  # warm-up, not counted
        runs = {label: {str(c): [] for c in report.CONNECTIONS} for label, _, _ in rows}
        for repeat in range(self.args.repeats):
            shift = repeat % len(rows)
            for label, url, token in rows[shift:] + rows[:shift]:
                for c in report.CONNECTIONS:
                    cost = label not in (report.BARE, report.UNCACHED)
                    runs[label][c].append(self.measured(url, int(c), token, cost))
            log(f"repeat {repeat + 1} of {self.args.repeats} done")
        return runs

    def write_cost(self) -> dict[str, list[dict]]:
        """A PATCH's latency and Redis commands, with 1 and with ``--pages`` cached list pages."""
        db1 = self.redis_server.url.replace("/0", "/1")
        base = self.serve("writes", "wsgi:app", REDIS_URL=db1, **WRITES)
        task, token = seed(base)
        dates = [dt.datetime(2031, 1, 1) + dt.timedelta(seconds=i) for i in range(self.args.pages)]
        urls = [f"{base}/api/v1/tasks?due_before={d:%Y-%m-%dT%H:%M:%S}" for d in dates]
        keys = redis.Redis(host=HOST, port=self.redis_server.port, db=1).dbsize
        self.redis.config_set("slowlog-max-len", 10000)
        results: dict[str, list[dict]] = {"1": [], str(self.args.pages): []}
        with ThreadPoolExecutor(4) as pool:
            for repeat in range(self.args.write_repeats):
                for pages in (1, self.args.pages)[:: 1 if repeat % 2 else -1]:
                    statuses = pool.map(lambda u: http("GET", u, token=token)[0], urls[:pages])
                    assert set(statuses) == {200}
                    assert http("GET", urls[0], token=token)[1].get("X-Cache") == "HIT"
                    patched = self.timed_patch(task, token, repeat)
                    results[str(pages)].append({"keys": keys(), **patched})
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
        logged = self.redis.slowlog_get(10000)
        logged = [e for e in logged if not e["command"].startswith((b"CONFIG", b"SLOWLOG"))]
        longest = max(logged, key=lambda e: e["duration"])
        words = longest["command"].decode(errors="replace").split()
        if words[0].upper() == "FCALL":  # a function by its name in library.lua
            words[0] = "FCALL " + words[1].rsplit("_", 1)[0]
        return {
            "patch_ms": seconds * 1000,
            "commands": len(logged),
            "longest": words[0],
            "redis_busy_us": sum(e["duration"] for e in logged),
            "longest_us": longest["duration"],
        }

    def stampede(self, base: str, token: str) -> list[dict]:
        """``--stampede`` GETs at once on a task nobody has read: database reads per round."""
        rounds = []
        for _ in range(self.args.rounds):
            url, before = new_task(base, token), db_reads(base)
            gate = threading.Barrier(self.args.stampede)

            def get(_: int, url: str = url, gate: threading.Barrier = gate) -> int:
                gate.wait()  # released together
                return http("GET", url, token=token)[0]

            with ThreadPoolExecutor(self.args.stampede) as pool:
                statuses = list(pool.map(get, range(self.args.stampede)))
            rounds.append({"db_reads": db_reads(base) - before, "ok": statuses.count(200)})
        log(f"stampede: {rounds}")
        return rounds

    def hung(self, url: str, token: str) -> dict:
        """wrk at 16 connections while the bench's redis-server is stopped (SIGSTOP)."""
        self.redis_server.pause()
        try:
            result = wrk(url, 16, self.args.hung_seconds, token, timeout=10)
        finally:
            self.redis_server.resume()
        log(f"Redis hung: {result}")
        return result

    def run(self) -> dict[str, Any]:
        """Serve every row, check they answer alike, then measure in turn."""
        served = {}  # label: (url, token)
        for i, (label, target, settings) in enumerate(ROWS[1:], 1):
            served[label] = seed(self.serve(f"row{i}", target, **settings))
        if self.args.baseline:  # the defaults row, served from another commit's checkout
            base = Path(self.args.baseline).resolve()
            label = f"taskapp, the defaults, at the baseline commit {commit(base)}"
            ROWS.append((label, "wsgi:app", {}))
            served[label] = seed(self.serve("baseline", "wsgi:app", base))
        url, token = served[report.DEFAULTS]
        body = http("GET", url, token=token)[2]
        self.redis.set(GET_KEY, body)  # the plain GETs read a value of the task's size
        os.environ["BENCH_TASK_JSON"] = body.decode()  # bare Flask answers the same bytes
        served[report.BARE] = (self.serve("row0", ROWS[0][1]) + "/api/v1/tasks/x", "")
        rows = [(label, *served[label]) for label, _, _ in ROWS]
        for label, url, token in rows:  # every task's answer has the same length (id, dates)
            status, _, answer = http("GET", url, token=token)
            assert status == 200 and len(answer) == len(body), (label, status, answer[:200])
        results: dict[str, Any] = {"load_before": os.getloadavg(), "args": vars(self.args)}
        cpu, calls = self.redis_now()
        time.sleep(2)  # Redis's work while no row runs, which every row's figures include
        idle = self.redis_now()
        results["idle"] = [(idle[0] - cpu) / 2, (sum(idle[1].values()) - sum(calls.values())) / 2]
        results["throughput"] = self.throughput(rows)
        results["load_after"] = os.getloadavg()
        results["writes"] = self.write_cost()
        url, token = served[ROWS[2][0]]  # rate limit off
        results["stampede"] = self.stampede(url.split("/api/")[0], token)
        if self.args.hung_seconds:
            results["hung"] = self.hung(url, token)
        return results


def main() -> None:
    """``bench/run``: measure, then write the results, stopping every server it started."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    for flag, value, meaning in OPTIONS:
        parser.add_argument(flag, type=type(value), default=value, help=f"{meaning} ({value})")
    parser.add_argument("--smoke", action="store_true", help="a quick check: bench/out/ only")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # exit through the finally below
        signal.signal(signum, lambda n, _: sys.exit(128 + n))
    redis_server = ferretdb = bench = None
    try:
        redis_server, ferretdb = RedisServer(), FerretDBServer()
        bench = Bench(args, redis_server, ferretdb.url)
        results = bench.run()
    finally:
        for done in (bench, ferretdb, redis_server):
            if done is not None:
                done.stop()
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["git"] = commit(ROOT)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    report.write(results, OUT / "results.md" if args.smoke else None)
    log("wrote " + ("bench/out/results.md" if args.smoke else "bench/results.md and the docs"))


if __name__ == "__main__":
    main()
