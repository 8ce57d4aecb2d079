"""The benchmark run behind ``bench/run``: every figure in one run, on one server setup.

It starts its own redis-server and FerretDB (a MongoDB wire-protocol server on SQLite, built once by
``scripts/build-ferretdb``) on free loopback ports and serves, all with
``gunicorn -c gunicorn.conf.py`` and the same thread settings:

- one worker: taskapp on the embedded MongoDB (twice: in-process layer on and off) and the
  comparison apps of ``bench/apps.py`` (the raw WSGI callable, bare Flask, Flask + PyJWT, ...);
- ``--workers`` workers (2): taskapp on FerretDB and the bench's Redis (in-process layer on and off),
  taskapp whose Redis refuses connections (its uncached read, with SIMULATED_DB_LATENCY_MS=0 and
  50), and the raw WSGI callable, bare Flask and Flask + PyJWT again.

Then, in phases:

1. throughput and latency: wrk at 1 and 16 connections against every scenario, in short slices
   taken in turn (scenario after scenario, several rounds), so that a noisy moment on the machine
   lands on every scenario instead of on one;
2. cold-key stampedes: 100 simultaneous GETs of a key never cached, on fresh connections;
3. py-spy profiles of the taskapp worker on each hit path (when py-spy is installed);
4. Redis hung: the bench redis-server SIGSTOPped while wrk runs, SIGCONT always afterwards.

Results go to ``bench/out/results.json``; ``bench/report.py`` turns them into ``bench/results.md``
and ``bench/results.png``. Every process started here is stopped on the way out (a paused
redis-server is resumed first), also on Ctrl-C or SIGTERM, and FerretDB's data folder is removed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
VENV_BIN = ROOT / ".venv" / "bin"
LOOPBACK = "127.0.0.1"
TASK_PATH = "/api/v1/tasks/{id}"
DB_LATENCY_MS = 50
#: RATE_LIMIT_PER_MINUTE of the rate-limit-on row: on, and never reached by wrk.
RATE_LIMIT_ON = "1000000000"
CONNECTIONS = (1, 16)
MANY = CONNECTIONS[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes ----------------------------------------------------------------------------


class Processes:
    """Every process the run starts, each in its own session; stopped by id, newest first."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.paused: set[int] = set()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(OUT / f"{name}.log", "ab") as logfile:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def pause(self, proc: subprocess.Popen) -> None:
        self.paused.add(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(proc.pid)

    def stop(self, proc: subprocess.Popen, grace: float = 25.0) -> None:
        """SIGTERM the process group made for ``proc`` (SIGCONT first if paused); SIGKILL after ``grace``."""
        if proc.poll() is None:
            if proc.pid in self.paused:
                self.resume(proc)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in [p for p in self.started if p.pid in self.paused]:
            self.resume(proc)  # a stopped redis would hold every server's shutdown
        for proc in reversed(list(self.started)):
            try:
                self.stop(proc)
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"could not stop pid {proc.pid}: {exc}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until_up(url: str, proc: subprocess.Popen, name: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see bench/out/{name}.log")
        try:
            if http("GET", url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {url} within {limit:.0f}s; see bench/out/{name}.log")


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen
    reads: Callable[[], float]  # source (database) reads so far

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) its gunicorn workers have used so far."""
        total = 0
        for pid in worker_pids(self.proc.pid):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    key: str
    label: str
    server: Server
    url: str
    token: str = ""
    cache_control: str = ""
    workers: int = 1
    backend: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.redis: subprocess.Popen | None = None
        self.redis_url = ""
        self.mongodb_url = ""
        self.ferretdb_dir = ""
        self.secret = secrets.token_urlsafe(32)
        self.task_json = ""
        self.results: dict[str, Any] = {"runs": {}, "stampede": {}, "hung": {}, "profiles": {}}

    # -- servers ------------------------------------------------------------------------------

    def start_redis(self) -> None:
        port = free_port()
        argv = [
            "redis-server",
            "--bind",
            LOOPBACK,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(OUT),
        ]
        self.redis = self.procs.start("redis", argv, dict(os.environ))
        self.redis_url = f"redis://{LOOPBACK}:{port}/0"
        for _ in range(100):
            probe = subprocess.run(
                ["redis-cli", "-h", LOOPBACK, "-p", str(port), "ping"],
                check=False,
                capture_output=True,
                text=True,
            )
            if probe.stdout.strip() == "PONG":
                log(f"redis-server pid {self.redis.pid} on {LOOPBACK}:{port} (its own, not :6379)")
                return
            time.sleep(0.1)
        raise RuntimeError("the bench redis-server did not answer")

    def start_ferretdb(self) -> None:
        """FerretDB (SQLite backend) on a free loopback port, its files in a temporary folder."""
        import pymongo

        log("FerretDB: scripts/build-ferretdb (builds it once into a cache outside the repo)")
        build = subprocess.run(
            [str(ROOT / "scripts" / "build-ferretdb")],
            check=False,
            stdout=subprocess.PIPE,
            text=True,
            timeout=1800,
        )
        if build.returncode != 0 or not build.stdout.strip():
            raise RuntimeError("scripts/build-ferretdb failed (its output is above)")
        binary = build.stdout.strip().splitlines()[-1]
        port = free_port()
        self.ferretdb_dir = tempfile.mkdtemp(prefix="taskapp-bench-ferretdb-")
        argv = [
            binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.ferretdb_dir}/",
            f"--listen-addr={LOOPBACK}:{port}",
            "--telemetry=disable",
            "--log-level=error",
            "--debug-addr=-",
        ]
        proc = self.procs.start("ferretdb", argv, dict(os.environ))
        self.mongodb_url = f"mongodb://{LOOPBACK}:{port}"
        client = pymongo.MongoClient(self.mongodb_url, serverSelectionTimeoutMS=200)
        deadline = time.monotonic() + 30
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("FerretDB exited; see bench/out/ferretdb.log")
                try:
                    client.admin.command("ping")
                    break
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            "FerretDB did not answer; see bench/out/ferretdb.log"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()
        log(f"FerretDB pid {proc.pid} on {LOOPBACK}:{port}, data in {self.ferretdb_dir}")

    def cleanup(self) -> None:
        """Remove FerretDB's data folder (its process is stopped with the others)."""
        if self.ferretdb_dir:
            shutil.rmtree(self.ferretdb_dir, ignore_errors=True)

    def multi(self, name: str, **extra: str) -> dict[str, str]:
        """Settings of a server with --workers workers: FerretDB (a database of its own) and Redis."""
        return {
            "GUNICORN_WORKERS": str(self.args.workers),
            "MONGODB_URI": f"{self.mongodb_url}/bench_{name.replace('-', '_')}",
            **extra,
        }

    def server_env(self, port: int, name: str, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GUNICORN_BIND=f"{LOOPBACK}:{port}",
            GUNICORN_WORKERS="1",
            GUNICORN_THREADS=str(self.args.threads),
            REDIS_URL=self.redis_url,
            SECRET_KEY=self.secret,
            MONGODB_URI="mongomock://localhost/bench",
            SIMULATED_DB_LATENCY_MS=str(DB_LATENCY_MS),
            RATE_LIMIT_PER_MINUTE="0",
            # A run outlasts the 15-minute default: a token expiring mid-run would turn hits into 401s.
            ACCESS_TOKEN_TTL="86400",
            GUNICORN_ACCESSLOG="off",  # as the issue measured; errors still go to the log
            PROMETHEUS_MULTIPROC_DIR=str(OUT / f"prometheus-{name}"),
            PYTHONPATH=str(ROOT),
        )
        if self.task_json:
            env["BENCH_TASK_JSON"] = self.task_json
        env.update(extra)
        return env

    def gunicorn(
        self, name: str, target: str, probe: str, **extra: str
    ) -> tuple[str, subprocess.Popen]:
        port = free_port()
        argv = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", target]
        proc = self.procs.start(name, argv, self.server_env(port, name, extra))
        base = f"http://{LOOPBACK}:{port}"
        wait_until_up(base + probe, proc, name)
        log(f"{name}: gunicorn pid {proc.pid} serving {target} on {base}")
        return base, proc

    def taskapp(self, name: str, **extra: str) -> Server:
        base, proc = self.gunicorn(name, "wsgi:app", "/healthz", **extra)
        return Server(name, base, proc, lambda: self.counter(base, "taskapp_db_reads_total"))

    def bench_app(self, app: str, name: str = "", **extra: str) -> Server:
        name = name or app
        base, proc = self.gunicorn(
            name, f'bench.apps:create_app("{app}")', "/_bench/fetches", **extra
        )
        return Server(
            name,
            base,
            proc,
            lambda: json.loads(http("GET", base + "/_bench/fetches")[2])["fetches"],
        )

    @staticmethod
    def counter(base: str, name: str) -> float:
        """A counter from taskapp's /metrics, summed over its label sets."""
        status, _, body = http("GET", base + "/metrics")
        if status != 200:
            raise RuntimeError(f"{base}/metrics answered {status}")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    # -- seeding through the API --------------------------------------------------------------

    def seed(self, base: str, email: str) -> tuple[str, str]:
        """Register, log in and create a task; (token, task id)."""
        password = secrets.token_urlsafe(16)
        account = {"email": email, "password": password}
        status, _, body = http("POST", base + "/api/v1/auth/register", account)
        if status != 201:
            raise RuntimeError(f"register answered {status}: {body[:200]!r}")
        status, _, body = http("POST", base + "/api/v1/auth/login", account)
        if status != 200:
            raise RuntimeError(f"login answered {status}: {body[:200]!r}")
        token = json.loads(body)["access_token"]
        return token, self.create_task(base, token)

    @staticmethod
    def create_task(base: str, token: str) -> str:
        task = {
            "title": "Benchmark task",
            "description": "A task read again and again by the benchmark",
            "priority": "high",
            "due_date": "2030-01-01T00:00:00Z",
        }
        status, _, body = http(
            "POST", base + "/api/v1/tasks", task, {"Authorization": f"Bearer {token}"}
        )
        if status != 201:
            raise RuntimeError(f"creating a task answered {status}: {body[:200]!r}")
        return json.loads(body)["id"]

    # -- wrk ----------------------------------------------------------------------------------

    def wrk(
        self,
        url: str,
        connections: int,
        seconds: int,
        token: str = "",
        cache_control: str = "",
        count_status: bool = False,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        threads = 1 if connections == 1 else 2
        env = dict(
            os.environ,
            BENCH_TOKEN=token,
            BENCH_CACHE_CONTROL=cache_control,
            BENCH_COUNT_STATUS="1" if count_status else "0",
        )
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            f"--timeout={timeout:g}s",
            "--latency",
            "-s",
            str(BENCH / "wrk.lua"),
            url,
        ]
        done = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=seconds + 60
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        result = json.loads(line.removeprefix("BENCH_JSON "))
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        result["connections"] = connections
        return result

    # -- phase 1: throughput and latency ------------------------------------------------------

    def throughput(self, scenarios: list[Scenario]) -> None:
        """Warm every scenario, then ``slices`` rounds of wrk at 1 and 16 connections, in turn."""
        for s in scenarios:
            self.wrk(s.url, MANY, self.args.warmup, s.token, s.cache_control)
        slices: dict[tuple[str, int], list[dict[str, Any]]] = {
            (s.key, c): [] for s in scenarios for c in CONNECTIONS
        }
        for n in range(self.args.slices):
            for s in scenarios:
                for c in CONNECTIONS:
                    before, cpu = s.server.reads(), s.server.cpu_seconds()
                    result = self.wrk(s.url, c, self.args.slice_seconds, s.token, s.cache_control)
                    result["cpu_seconds"] = s.server.cpu_seconds() - cpu
                    result["db_reads"] = s.server.reads() - before
                    slices[(s.key, c)].append(result)
            log(f"throughput: slice {n + 1} of {self.args.slices} done for every scenario")
        for s in scenarios:
            by_connections = {}
            for c in CONNECTIONS:
                runs = slices[(s.key, c)]
                merged = merge_slices(runs)
                by_connections[str(c)] = merged
                log(
                    f"{s.label} c{c}: {merged['rps']:.0f} req/s, p50 {merged['p50_us'] / 1000:.2f} ms, "
                    f"p99 {merged['p99_us'] / 1000:.2f} ms, {merged['db_reads_per_1000']:.2f} reads/1000"
                )
            self.results["runs"][s.key] = {
                "label": s.label,
                "server": s.server.name,
                "cache_control": s.cache_control,
                "workers": s.workers,
                "backend": s.backend,
                "by_connections": by_connections,
            }

    # -- phase 2: stampedes -------------------------------------------------------------------

    def stampede(
        self, key: str, label: str, server: Server, next_url: Callable[[], str], token: str = ""
    ) -> None:
        """Rounds of N simultaneous GETs of a key never cached: fills and latencies."""
        from bench.stampede import stampede

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # One burst first, not counted: a fresh gunicorn worker starts a thread per request in
        # flight on its first burst (every app alike); the rounds then measure the cache.
        stampede(next_url(), self.args.stampede, headers)
        time.sleep(0.3)
        rounds = []
        for _ in range(self.args.rounds):
            url = next_url()
            before = server.reads()
            results = stampede(url, self.args.stampede, headers)
            fills = server.reads() - before
            rounds.append({"fills": fills, "results": results})
            time.sleep(0.3)

        def split(rnd: dict[str, Any]) -> tuple[list[float], list[float]]:
            ok = [r for r in rnd["results"] if r["status"] == 200]
            return (
                [r["seconds"] for r in ok if r["x_cache"] == "MISS"],
                [r["seconds"] for r in ok if r["x_cache"] != "MISS"],
            )

        fillers = [t for rnd in rounds for t in split(rnd)[0]]
        waiters = [t for rnd in rounds for t in split(rnd)[1]]
        statuses = Counter(r["status"] for rnd in rounds for r in rnd["results"])
        summary = {
            "label": label,
            "requests_per_round": self.args.stampede,
            "rounds": len(rounds),
            "fills_per_round": [int(rnd["fills"]) for rnd in rounds],
            "miss_responses_per_round": [len(split(rnd)[0]) for rnd in rounds],
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "fill_seconds_median": statistics.median(fillers) if fillers else None,
            "fill_seconds_max": max(fillers) if fillers else None,
            "waiters": len(waiters),
            "waiter_p50": percentile(waiters, 50),
            "waiter_p99": percentile(waiters, 99),
            "waiter_max": max(waiters) if waiters else None,
            "per_round": [
                {
                    "fills": int(rnd["fills"]),
                    "fill_seconds": split(rnd)[0],
                    "waiter_p50": percentile(split(rnd)[1], 50),
                    "waiter_p99": percentile(split(rnd)[1], 99),
                    # how much later than the fill the waiters' p99 answered (one fill: its latency)
                    "p99_after_fill": (
                        percentile(split(rnd)[1], 99) - statistics.median(split(rnd)[0])
                    )
                    if split(rnd)[0] and split(rnd)[1]
                    else None,
                }
                for rnd in rounds
            ],
        }
        gaps = [
            r["p99_after_fill"] for r in summary["per_round"] if r["p99_after_fill"] is not None
        ]
        summary["p99_after_fill_median"] = statistics.median(gaps) if gaps else None
        summary["p99_after_fill_worst"] = max(gaps) if gaps else None
        self.results["stampede"][key] = summary
        log(
            f"{label} stampede: fills per round {summary['fills_per_round']}, fill "
            f"{fmt_ms(summary['fill_seconds_median'])}, waiters p50 {fmt_ms(summary['waiter_p50'])} "
            f"p99 {fmt_ms(summary['waiter_p99'])}, statuses {summary['statuses']}"
        )

    # -- phase 3: profile ---------------------------------------------------------------------

    def profile(
        self, name: str, scenario: Scenario, connections: int = 1, gil: bool = True
    ) -> None:
        """py-spy on the scenario's gunicorn worker while wrk runs; a summary in bench/out/profile-NAME.txt.

        ``gil``: sample only the thread holding the GIL, i.e. where the CPU time of a request goes
        (at one connection, the cost of one request); without it every thread that is not idle is
        sampled, which shows where threads wait (at MANY connections, the contention).
        """
        py_spy = VENV_BIN / "py-spy"
        if not py_spy.exists():
            log("py-spy is not installed in .venv; no profile")
            return
        worker = worker_pid(scenario.server.proc.pid)
        raw = OUT / f"profile-{name}.collapsed"
        seconds = int(self.args.profile_seconds)
        argv = [
            str(py_spy),
            "record",
            "--pid",
            str(worker),
            "--duration",
            str(seconds + 1),
            "--rate",
            "400" if gil else "100",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
        ]
        spy = subprocess.Popen(
            argv + (["--gil"] if gil else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(0.5)  # py-spy attaches
            result = self.wrk(
                scenario.url, connections, seconds, scenario.token, scenario.cache_control
            )
        finally:
            output, _ = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not raw.exists():
            log(f"py-spy failed ({spy.returncode}): {output.strip()[-300:]}")
            return
        from bench.profile import summarise, top_frames

        (OUT / f"profile-{name}.txt").write_text(summarise(raw))
        self.results["profiles"][name] = {
            "label": scenario.label,
            "connections": connections,
            "gil_only": gil,
            "rps_under_profiler": result["rps"],
            "file": f"bench/out/profile-{name}.txt",
            **top_frames(raw),
        }
        log(f"profile of '{scenario.label}' at c{connections}: bench/out/profile-{name}.txt")

    # -- phase 4: Redis hung ------------------------------------------------------------------

    def hung_wrk(self, url: str, token: str = "") -> dict[str, Any]:
        return self.wrk(
            url,
            MANY,
            self.args.hung_seconds,
            token,
            count_status=True,
            timeout=self.args.hung_timeout,
        )

    def hung(
        self,
        key: str,
        label: str,
        url: str,
        token: str = "",
        errors: Callable[[], float] | None = None,
    ) -> None:
        """wrk while the bench redis-server is stopped (SIGSTOP), always resumed (SIGCONT) after."""
        assert self.redis is not None
        before = errors() if errors else None
        self.procs.pause(self.redis)
        try:
            result = self.hung_wrk(url, token)
        finally:
            self.procs.resume(self.redis)
        if errors:
            time.sleep(0.5)
            result["cache_errors"] = errors() - before
        self.results["hung"][key] = {"label": label, **result}
        log(
            f"{label} with Redis hung: {result['requests']} responses, p50 "
            f"{result['p50_us'] / 1000:.1f} ms, 5xx {result['status_5xx']}, timeouts {result['timeouts']}"
        )

    def wait_redis_back(self, server: Server, token: str, url: str) -> None:
        """Until taskapp uses Redis again: /readyz says so and a GET is a hit."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, _, body = http("GET", server.base + "/readyz")
            if status == 200 and json.loads(body)["checks"]["redis"]:
                _, headers, _ = http("GET", url, headers={"Authorization": f"Bearer {token}"})
                if headers.get("X-Cache") == "HIT":
                    return
            time.sleep(0.5)
        log("warning: taskapp did not report Redis back within 30 s")

    # -- the servers with several workers -----------------------------------------------------

    def multi_worker_scenarios(self, token: str, fixed: str) -> list[Scenario]:
        """FerretDB and --workers workers: the baselines, taskapp's hits and its uncached read."""
        self.start_ferretdb()
        n = self.args.workers
        ferret = "FerretDB"
        found = []
        for app, label in (
            ("raw", "raw WSGI callable (the server's ceiling)"),
            ("bare", "bare Flask route"),
            ("jwt", "bare Flask + one PyJWT decode"),
        ):
            server = self.bench_app(app, f"{app}-w{n}", **self.multi(f"{app}-w{n}"))
            found.append(
                Scenario(f"{app}_w{n}", label, server, server.base + fixed, token, workers=n)
            )

        task_l1 = self.taskapp(f"taskapp-w{n}", **self.multi(f"taskapp-w{n}"))
        token_l1, task_id = self.seed(task_l1.base, f"bench-l1-w{n}@example.com")
        url_l1 = task_l1.base + TASK_PATH.format(id=task_id)
        self.multi_taskapp = (task_l1, token_l1)  # phase 2 stampedes it too
        extra = {}
        for name, settings in (
            ("rl", {"RATE_LIMIT_PER_MINUTE": RATE_LIMIT_ON}),
            ("acked", {"L1_CACHE_COHERENCE": "acked"}),
        ):
            server = self.taskapp(
                f"taskapp-{name}-w{n}", **self.multi(f"taskapp-{name}-w{n}", **settings)
            )
            tok, task_id = self.seed(server.base, f"bench-{name}-w{n}@example.com")
            extra[name] = (server, server.base + TASK_PATH.format(id=task_id), tok)
        task_redis = self.taskapp(
            f"taskapp-no-l1-w{n}", **self.multi(f"taskapp-no-l1-w{n}", L1_CACHE_MAX_ITEMS="0")
        )
        token_redis, task_id = self.seed(task_redis.base, f"bench-redis-w{n}@example.com")
        url_redis = task_redis.base + TASK_PATH.format(id=task_id)
        found += [
            Scenario(
                f"taskapp_http_rl_w{n}",
                "taskapp: HTTP-layer hit, rate limit on (the defaults)",
                *extra["rl"],
                workers=n,
                backend=ferret,
            ),
            Scenario(
                f"taskapp_http_w{n}",
                "taskapp: HTTP-layer hit, rate limit off",
                task_l1,
                url_l1,
                token_l1,
                workers=n,
                backend=ferret,
            ),
            Scenario(
                f"taskapp_http_l1_w{n}",
                "taskapp: in-process hit (HTTP layer, acked coherence)",
                *extra["acked"],
                workers=n,
                backend=ferret,
            ),
            Scenario(
                f"taskapp_redis_w{n}",
                "taskapp: Redis hit (L1 off, no-cache)",
                task_redis,
                url_redis,
                token_redis,
                "no-cache",
                workers=n,
                backend=ferret,
            ),
            Scenario(
                f"taskapp_l1_w{n}",
                "taskapp: in-process hit (no-cache)",
                task_l1,
                url_l1,
                token_l1,
                "no-cache",
                workers=n,
                backend=ferret,
            ),
        ]
        # taskapp's uncached read: its Redis refuses connections (the breaker stays open) and the
        # in-process layer is off, so every GET verifies the token and reads FerretDB.
        for latency in (0, DB_LATENCY_MS):
            name = f"taskapp-uncached{latency}-w{n}"
            server = self.taskapp(
                name,
                **self.multi(
                    name,
                    REDIS_URL=f"redis://{LOOPBACK}:{free_port()}/0",
                    L1_CACHE_MAX_ITEMS="0",
                    SIMULATED_DB_LATENCY_MS=str(latency),
                ),
            )
            tok, task_id = self.seed(server.base, f"bench-uncached{latency}-w{n}@example.com")
            what = (
                "the FerretDB read alone" if latency == 0 else f"FerretDB + {latency} ms simulated"
            )
            found.append(
                Scenario(
                    f"taskapp_uncached{latency}_w{n}",
                    f"taskapp: uncached read ({what})",
                    server,
                    server.base + TASK_PATH.format(id=task_id),
                    tok,
                    "no-cache",
                    workers=n,
                    backend=ferret,
                )
            )
        return found

    def check_payloads(self, scenarios: list[Scenario]) -> None:
        """Every baseline answers taskapp's exact bytes (a difference is recorded and logged)."""
        sizes, differ = {}, []
        for s in scenarios:
            status, _, body = http("GET", s.url, headers={"Authorization": f"Bearer {s.token}"})
            sizes[s.key] = len(body)
            if s.key.split("_w")[0] in ("raw", "bare", "jwt") and body.decode() != self.task_json:
                differ.append(s.key)
                log(
                    f"warning: {s.key} answers {status} with other bytes than taskapp: {body[:80]!r}"
                )
        self.results["payload_bytes_by_row"] = sizes
        self.results["baselines_with_other_bytes"] = differ

    # -- the whole run ------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        self.results["environment"] = environment(self.args)
        self.start_redis()

        task_l1 = self.taskapp("taskapp")
        token_l1, task_id = self.seed(task_l1.base, "bench-l1@example.com")
        url_l1 = task_l1.base + TASK_PATH.format(id=task_id)
        status, _, body = http("GET", url_l1, headers={"Authorization": f"Bearer {token_l1}"})
        if status != 200:
            raise RuntimeError(f"GET of the seeded task answered {status}")
        self.task_json = body.decode()  # the payload every comparison app serves
        self.results["payload_bytes"] = len(body)

        # Memory checked against the versions announced on the scope channel: no round trip.
        task_acked = self.taskapp("taskapp-acked", L1_CACHE_COHERENCE="acked")
        token_acked, task_id = self.seed(task_acked.base, "bench-acked@example.com")
        url_acked = task_acked.base + TASK_PATH.format(id=task_id)
        task_redis = self.taskapp("taskapp-no-l1", L1_CACHE_MAX_ITEMS="0")
        token_redis, task_id = self.seed(task_redis.base, "bench-redis@example.com")
        url_redis = task_redis.base + TASK_PATH.format(id=task_id)
        # The per-user rate limit on (its script runs on every request), with a limit wrk never
        # reaches: the default of 600 a minute would answer most requests 429.
        task_limited = self.taskapp("taskapp-rate-limit", RATE_LIMIT_PER_MINUTE=RATE_LIMIT_ON)
        token_limited, task_id = self.seed(task_limited.base, "bench-rl@example.com")
        url_limited = task_limited.base + TASK_PATH.format(id=task_id)

        apps = {
            name: self.bench_app(name)
            for name in ("raw", "bare", "jwt", "nocache", "flask_caching", "seed_lock")
        }
        fixed = TASK_PATH.format(id="6650f0c2a1b2c3d4e5f60718")
        mongomock = "embedded (mongomock)"
        scenarios = [
            Scenario(
                "raw",
                "raw WSGI callable (the server's ceiling)",
                apps["raw"],
                apps["raw"].base + fixed,
                token_l1,
            ),
            Scenario("bare", "bare Flask route", apps["bare"], apps["bare"].base + fixed, token_l1),
            Scenario(
                "jwt",
                "bare Flask + one PyJWT decode",
                apps["jwt"],
                apps["jwt"].base + fixed,
                token_l1,
            ),
            Scenario(
                "nocache",
                "no cache (a 50 ms read per request)",
                apps["nocache"],
                apps["nocache"].base + fixed,
            ),
            Scenario(
                "flask_caching",
                "Flask-Caching @cache.cached, RedisCache",
                apps["flask_caching"],
                apps["flask_caching"].base + fixed,
            ),
            Scenario(
                "seed_lock",
                "seed lesson's getOrSet lock",
                apps["seed_lock"],
                apps["seed_lock"].base + fixed,
            ),
            Scenario(
                "taskapp_http_rl",
                "taskapp: HTTP-layer hit, rate limit on (the defaults)",
                task_limited,
                url_limited,
                token_limited,
                backend=mongomock,
            ),
            Scenario(
                "taskapp_http",
                "taskapp: HTTP-layer hit, rate limit off",
                task_l1,
                url_l1,
                token_l1,
                backend=mongomock,
            ),
            Scenario(
                "taskapp_http_l1",
                "taskapp: in-process hit (HTTP layer, acked coherence)",
                task_acked,
                url_acked,
                token_acked,
                backend=mongomock,
            ),
            Scenario(
                "taskapp_http_redis",
                "taskapp: Redis-only hit (HTTP layer, L1 off)",
                task_redis,
                url_redis,
                token_redis,
                backend=mongomock,
            ),
            Scenario(
                "taskapp_redis",
                "taskapp: Redis hit (L1 off, no-cache)",
                task_redis,
                url_redis,
                token_redis,
                "no-cache",
                backend=mongomock,
            ),
            Scenario(
                "taskapp_l1",
                "taskapp: in-process hit (no-cache)",
                task_l1,
                url_l1,
                token_l1,
                "no-cache",
                backend=mongomock,
            ),
        ]
        scenarios += self.multi_worker_scenarios(token_l1, fixed)
        self.check_payloads(scenarios)
        self.results["load_before"] = os.getloadavg()
        log(
            f"phase 1: {len(scenarios)} scenarios x {CONNECTIONS} connections x {self.args.slices} "
            f"slices of {self.args.slice_seconds:g}s"
        )
        self.throughput(scenarios)
        self.results["load_after_throughput"] = os.getloadavg()

        log(f"phase 2: stampedes of {self.args.stampede} requests, {self.args.rounds} rounds each")
        self.stampede(
            "taskapp",
            "taskapp",
            task_l1,
            lambda: task_l1.base + TASK_PATH.format(id=self.create_task(task_l1.base, token_l1)),
            token_l1,
        )
        multi, token_multi = self.multi_taskapp
        self.stampede(
            f"taskapp_w{self.args.workers}",
            f"taskapp, {self.args.workers} workers (FerretDB)",
            multi,
            lambda: multi.base + TASK_PATH.format(id=self.create_task(multi.base, token_multi)),
            token_multi,
        )
        for name, label in (
            ("flask_caching", "Flask-Caching"),
            ("seed_lock", "seed getOrSet lock"),
        ):
            base = apps[name].base
            self.stampede(
                name,
                label,
                apps[name],
                lambda base=base: base + TASK_PATH.format(id=secrets.token_hex(12)),
            )

        if not self.args.no_profile:
            log(f"phase 3: py-spy profiles (CPU per request at one connection; waits at {MANY})")
            by_key = {s.key: s for s in scenarios}
            for key in ("taskapp_http_rl", "taskapp_http_l1", "taskapp_http_redis", "bare", "raw"):
                self.profile(key, by_key[key])
            self.profile(
                f"taskapp_http_c{MANY}_wall", by_key["taskapp_http"], connections=MANY, gil=False
            )

        log(
            f"phase 4: Redis hung for {self.args.hung_seconds:g}s under wrk -c{MANY} (timeout "
            f"{self.args.hung_timeout:g}s)"
        )
        reference = self.hung_wrk(apps["nocache"].base + fixed)
        self.results["hung"]["nocache"] = {
            "label": "no cache app (the uncached route)",
            **reference,
        }
        log(
            f"no cache reference: p50 {reference['p50_us'] / 1000:.1f} ms, 5xx {reference['status_5xx']}"
        )
        # taskapp's own uncached path: a Redis that refuses connections (the breaker stays open).
        down = self.taskapp("taskapp-redis-down", REDIS_URL=f"redis://{LOOPBACK}:{free_port()}/0")
        token_down, task_id = self.seed(down.base, "bench-down@example.com")
        url_down = down.base + TASK_PATH.format(id=task_id)
        self.wrk(url_down, MANY, self.args.warmup, token_down)  # warm: the breaker opens
        result = self.hung_wrk(url_down, token_down)
        self.results["hung"]["taskapp_down"] = {
            "label": "taskapp, Redis refusing connections",
            **result,
        }
        log(
            f"taskapp with Redis down (its uncached path): p50 {result['p50_us'] / 1000:.1f} ms, "
            f"5xx {result['status_5xx']}"
        )
        self.procs.stop(down.proc)
        http("GET", url_l1, headers={"Authorization": f"Bearer {token_l1}"})
        self.hung(
            "taskapp",
            "taskapp (task GET)",
            url_l1,
            token_l1,
            errors=lambda: self.counter(task_l1.base, "taskapp_cache_errors_total"),
        )
        self.wait_redis_back(task_l1, token_l1, url_l1)
        http("GET", apps["flask_caching"].base + fixed)
        self.hung("flask_caching", "Flask-Caching (task GET)", apps["flask_caching"].base + fixed)
        time.sleep(1)  # requests stuck on the paused socket finish once Redis resumes

        self.results["environment"]["wall_seconds"] = round(time.monotonic() - started, 1)
        path = OUT / "results.json"
        path.write_text(json.dumps(self.results, indent=1))
        log(f"raw results: {path.relative_to(ROOT)}")


def merge_slices(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure from the slices: total requests over total time; the median slice's percentiles."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    reads = sum(r["db_reads"] for r in runs)
    cpu = sum(r["cpu_seconds"] for r in runs)
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "rps": requests / seconds,
        "rps_slices": [round(r["rps"], 1) for r in runs],
        "p50_us": statistics.median(r["p50_us"] for r in runs),
        "p99_us": statistics.median(r["p99_us"] for r in runs),
        "p50_us_slices": [r["p50_us"] for r in runs],
        "p99_us_slices": [r["p99_us"] for r in runs],
        "db_reads": reads,
        "db_reads_per_1000": 1000 * reads / max(requests, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_us_per_request": 1e6 * cpu / max(requests, 1),
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in runs),
        "socket_errors": sum(
            r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] for r in runs
        ),
    }


def worker_pids(master: int) -> list[int]:
    """The pids of a gunicorn master's workers."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if not children:
        raise RuntimeError(f"gunicorn master {master} has no worker")
    return [int(pid) for pid in children]


def worker_pid(master: int) -> int:
    return worker_pids(master)[0]


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile; None without values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version as dist_version

    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else "?"

    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1) if match else "?"
    except OSError:
        cpu = "?"

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "gunicorn": dist_version("gunicorn"),
        "flask": dist_version("flask"),
        "flask_caching": dist_version("flask-caching"),
        "redis_py": dist_version("redis"),
        "redis_server": first_line(["redis-server", "--version"]),
        "wrk": first_line(["wrk", "--version"]),
        "git": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "taskapp", "wsgi.py", "gunicorn.conf.py")),
        "slices": args.slices,
        "slice_seconds": args.slice_seconds,
        "warmup_s": args.warmup,
        "gunicorn_workers": 1,
        "gunicorn_workers_multi": args.workers,
        "gunicorn_threads": args.threads,
        "db_latency_ms": DB_LATENCY_MS,
        "stampede_requests": args.stampede,
        "stampede_rounds": args.rounds,
        "hung_seconds": args.hung_seconds,
        "hung_timeout": args.hung_timeout,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slices",
        type=int,
        default=4,
        help="wrk runs per figure, taken in turn across scenarios (default 4)",
    )
    parser.add_argument(
        "--slice-seconds",
        type=int,
        default=2,
        help="whole seconds of each of those runs (default 2: 8 s per figure)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of wrk warming each scenario"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=128,
        help="GUNICORN_THREADS of every server (default 128, so that all 100 requests "
        "of a stampede are in flight at once)",
    )
    parser.add_argument(
        "--stampede", type=int, default=100, help="simultaneous requests of a stampede"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="stampede rounds per app, each a new cold key"
    )
    parser.add_argument(
        "--hung-seconds", type=int, default=10, help="seconds Redis stays SIGSTOPped"
    )
    parser.add_argument(
        "--hung-timeout",
        type=int,
        default=10,
        help="wrk --timeout while Redis is hung (default 10: slower answers are recorded, not dropped)",
    )
    parser.add_argument(
        "--profile-seconds", type=int, default=6, help="seconds of each py-spy profile"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="GUNICORN_WORKERS of the FerretDB + Redis servers and their baselines (default 2)",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="only write bench/out/results.json"
    )
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    for stale in [*OUT.glob("*.log"), *OUT.glob("profile-*")]:
        stale.unlink()
    procs = Processes()

    def on_signal(signum: int, _frame: Any) -> None:
        log(f"{signal.Signals(signum).name}: stopping every process this run started")
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    bench = Bench(args, procs)
    try:
        bench.run()
    finally:
        procs.stop_all()
        bench.cleanup()
        for leftover in OUT.glob("prometheus-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if not args.no_report:
        from bench import report

        report.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
