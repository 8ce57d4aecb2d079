"""The production server: the real gunicorn with gunicorn.conf.py serving wsgi:app."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from taskapp.request_id import WELL_FORMED
from tests.api import PROBLEM_JSON, problem_of

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_TIMEOUT = 30.0
GRACEFUL_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(base: str, method: str, path: str, body=None, headers=None):
    """(status, headers, parsed JSON or text) of one request; never raises for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    text = raw.decode()
    media_type = head.get("Content-Type", "").partition(";")[0].strip()
    is_json = media_type == "application/json" or media_type.endswith("+json")
    return status, head, json.loads(text) if is_json and text else text


class Server:
    """A gunicorn process with its log in a file (a pipe nobody reads could block it)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env.update(env, GUNICORN_BIND=f"127.0.0.1:{self.port}", GUNICORN_THREADS="2")
        self.log = open(log_path, "wb")
        extra = shlex.split(full_env.pop("EXTRA_ARGS", ""))
        app = full_env.pop("APP_MODULE", "wsgi:app")
        self.proc = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", app, *extra],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if call(self.base, "GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"gunicorn not healthy after {START_TIMEOUT}s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM (so the master removes its metrics directory), SIGKILL if that is not enough."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(GRACEFUL_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    started: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(env, tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def real_redis_env(redis_url, key_prefix) -> dict[str, str]:
    """Settings for a server on the test Redis, under this test's prefix (removed afterwards)."""
    return {
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": key_prefix,
        "SECRET_KEY": "gunicorn-test-secret-key-with-32-bytes!!",
        "MONGODB_URI": "mongomock://localhost/taskapp_gunicorn_test",
    }


def test_serves_the_api_with_metrics_and_stops_gracefully(serve, real_redis_env):
    server = serve(**real_redis_env)
    creds = {"email": "gunicorn@example.com", "password": "correct horse battery"}
    assert call(server.base, "POST", "/api/v1/auth/register", creds)[0] == 201
    status, _, login = call(server.base, "POST", "/api/v1/auth/login", creds)
    assert status == 200, login
    auth = {"Authorization": f"Bearer {login['access_token']}"}
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "serve it"}, auth)
    assert status == 201, task

    first = call(server.base, "GET", f"/api/v1/tasks/{task['id']}", headers=auth)
    second = call(server.base, "GET", f"/api/v1/tasks/{task['id']}", headers=auth)
    assert first[0] == second[0] == 200
    assert first[2] == second[2] == task
    assert second[1]["X-Cache"] == "HIT"

    status, _, metrics = call(server.base, "GET", "/metrics")
    assert status == 200
    reads = re.search(r"^taskapp_db_reads_total(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
    assert reads is not None, metrics
    assert float(reads.group(1)) >= 1

    metrics_dir = re.search(r"prometheus multiprocess directory: (\S+)", server.output()).group(1)
    assert Path(metrics_dir).is_dir()
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(GRACEFUL_TIMEOUT + 5) == 0
    assert time.monotonic() - started < GRACEFUL_TIMEOUT
    assert not Path(metrics_dir).exists()  # the directory the config made is removed on exit


def test_embedded_redis_forces_one_worker(serve, real_redis_env):
    server = serve(
        **{**real_redis_env, "REDIS_URL": "memory://", "GUNICORN_WORKERS": "3"},
        EXTRA_ARGS="--log-level debug",
    )
    assert "workers = 1: embedded data lives in one process" in server.output()
    assert "REDIS_URL=memory://" in server.output()
    # The master logs its worker count once it has spawned them all (a debug line).
    deadline = time.monotonic() + START_TIMEOUT
    while not (counted := re.search(r"\] (\d+) workers", server.output())):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    assert counted.group(1) == "1"
    assert server.output().count("Booting worker") == 1


def load_config(monkeypatch, tmp_path, **env: str) -> dict:
    """gunicorn.conf.py's settings under ``env`` (a metrics directory given, so none is made)."""
    for name in ("MONGODB_URI", "REDIS_URL", "GUNICORN_WORKERS", "GUNICORN_BIND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GUNICORN_THREADS", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("SECRET_KEY", "gunicorn-test-secret-key-with-32-bytes!!")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_config_defaults(monkeypatch, tmp_path):
    config = load_config(
        monkeypatch, tmp_path, MONGODB_URI="mongodb://db/taskapp", REDIS_URL="redis://cache:6379/0"
    )
    assert config["bind"] == "0.0.0.0:8000"
    assert config["worker_class"] == "gthread"
    assert config["threads"] == 4
    assert 1 <= config["workers"] <= config["MAX_AUTO_WORKERS"]
    assert config["workers"] == min(2 * (os.cpu_count() or 1) + 1, config["MAX_AUTO_WORKERS"])
    assert (config["timeout"], config["graceful_timeout"], config["keepalive"]) == (30, 20, 5)
    assert config["preload_app"] is False


def test_config_takes_workers_and_bind_from_the_environment(monkeypatch, tmp_path):
    config = load_config(
        monkeypatch,
        tmp_path,
        MONGODB_URI="mongodb://db/taskapp",
        REDIS_URL="redis://cache:6379/0",
        GUNICORN_WORKERS="5",
        GUNICORN_BIND="127.0.0.1:9000",
        GUNICORN_THREADS="8",
    )
    assert (config["workers"], config["bind"], config["threads"]) == (5, "127.0.0.1:9000", 8)


@pytest.mark.parametrize(
    "env",
    [
        {},  # both defaults are embedded
        {"MONGODB_URI": "mongomock://localhost/x", "REDIS_URL": "redis://cache:6379/0"},
        {"MONGODB_URI": "mongodb://db/taskapp", "REDIS_URL": "memory://"},
    ],
)
def test_config_forces_one_worker_for_embedded_backends(monkeypatch, tmp_path, env):
    config = load_config(monkeypatch, tmp_path, GUNICORN_WORKERS="4", **env)
    assert config["workers"] == 1


@pytest.mark.parametrize("name", ["GUNICORN_WORKERS", "GUNICORN_THREADS"])
@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_config_rejects_bad_counts_naming_the_setting(monkeypatch, tmp_path, name, value):
    with pytest.raises(SystemExit, match=f"setting {name}="):
        load_config(monkeypatch, tmp_path, **{name: value})


@pytest.mark.servers  # gunicorn starts (and stops at its config)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MONGODB_URI": "postgres://db/x"}, "setting MONGODB_URI='postgres://db/x' is invalid"),
        ({"MONGODB_URI": "mongodb://db/x", "SECRET_KEY": ""}, "setting SECRET_KEY is required"),
        (
            {"MONGODB_URI": "mongodb://db/x", "SECRET_KEY": "changeme"},
            "setting SECRET_KEY is too short (8 bytes)",
        ),
        ({"TASK_CACHE_TTL": "soon"}, "setting TASK_CACHE_TTL='soon' is invalid"),
        ({"CORS_ORIGINS": "app.example.com"}, "setting CORS_ORIGINS='app.example.com' is invalid"),
    ],
)
def test_a_bad_setting_stops_gunicorn_with_one_line_and_status_1(env, message):
    full_env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "MONGODB_URI")}
    full_env.update(env, GUNICORN_BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"taskapp: {message}")


def worker_pids(master_pid: int) -> list[int]:
    """The pids of a gunicorn master's children, read from /proc."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_workers_on_the_command_line_are_held_to_one_with_an_embedded_backend(serve):
    server = serve(MONGODB_URI="mongomock://localhost/x", REDIS_URL="memory://", EXTRA_ARGS="-w 3")
    assert "kept at 1 worker, not 3" in server.output()
    server.proc.send_signal(signal.SIGTTIN)  # asking for one more at run time is refused too
    deadline = time.monotonic() + 10
    while "kept at 1 worker, not 2" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    # The master has handled TTIN (it logged the refusal); its spawn round follows in the same
    # loop iteration, so a second worker would be a child now.
    call(server.base, "GET", "/healthz")
    assert len(worker_pids(server.proc.pid)) == 1
    assert server.output().count("Booting worker") == 1


def test_requests_gunicorn_refuses_itself_get_problem_details(serve, real_redis_env):
    server = serve(**real_redis_env)
    status, head, body = call(server.base, "GET", "/healthz", headers={"X-Big": "x" * 9000})
    assert status == 431
    assert head["Content-Type"] == PROBLEM_JSON
    assert WELL_FORMED.fullmatch(head["X-Request-ID"])
    problem_of(body, 431)
    status, head, body = call(server.base, "GET", "/healthz?" + "a" * 5000)
    assert (status, head["Content-Type"]) == (414, PROBLEM_JSON)
    problem_of(body, 414)


def test_each_worker_freezes_what_loading_the_app_made(monkeypatch, tmp_path):
    """Full collections then skip the app's own objects (30-50 ms pauses under a stampede)."""
    import gc

    config = load_config(monkeypatch, tmp_path, MONGODB_URI="mongodb://db/taskapp")
    assert gc.get_freeze_count() == 0
    try:
        config["post_worker_init"](None)
        assert gc.get_freeze_count() > 10_000  # the modules and objects loaded so far
    finally:
        gc.unfreeze()
