"""A FerretDB server (MongoDB wire protocol on SQLite) started by the test session."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pymongo

from tests.redis_server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "scripts" / "build-ferretdb"


@functools.cache
def ferretdb_binary() -> str:
    """The FerretDB binary, built once into a cache outside the repository."""
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"building FerretDB failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


class FerretDBServer(ServerProcess):
    """One FerretDB process on a loopback port with its SQLite files and its state in a
    temporary folder (without ``--state-dir`` it writes ``state.json`` where it was started)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="taskapp-ferretdb-")
        self.log = open(Path(self.dir) / "ferretdb.log", "wb")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port and files) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                ferretdb_binary(),
                "--handler=sqlite",
                f"--state-dir={self.dir}",
                f"--sqlite-url=file:{self.dir}/",
                f"--listen-addr=127.0.0.1:{self.port}",
                "--telemetry=disable",
                "--log-level=error",
                "--debug-addr=-",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def _wait_ready(self) -> None:
        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=200)
        deadline = time.monotonic() + 30
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"FerretDB exited: {self.output()}")
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"FerretDB did not answer: {self.output()}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def output(self) -> str:
        return (Path(self.dir) / "ferretdb.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
