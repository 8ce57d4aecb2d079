"""A private redis-server for tests that pause (SIGSTOP), kill and restart it."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis


def free_port() -> int:
    """A free TCP port below 50000 (a cluster node also needs its port + 10000 for its bus)."""
    while True:
        port = random.randint(20000, 49999)
        if _free(port) and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ServerProcess:
    """Faults of a server the tests started (its ``process``): hang it, resume it, kill it."""

    process: subprocess.Popen

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open and nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: connections are refused until ``start`` (the server's files stay)."""
        self.process.kill()
        self.process.wait(5)


class RedisServer(ServerProcess):
    """One redis-server process on a loopback port, owned by the test that made it."""

    def __init__(
        self, *extra: str, appendonly: bool = False, appendfsync: str = "everysec"
    ) -> None:
        """``appendonly``: keep what is acknowledged in an AOF (as write-behind requires; a
        restart then loads it back), else nothing survives a restart. ``appendfsync``: when the
        AOF is written and synced (``always``: before each answer, so a crash loses nothing
        acknowledged; ``everysec``, Redis's default, can lose the last second or two)."""
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="taskapp-redis-")
        self.extra = extra
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on the same port and wait until it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--dir",
                self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A Redis Cluster of three masters on loopback ports, made with ``redis-cli --cluster create``;
    ``replicas`` per master (asynchronous copies, promoted when their master fails)."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            )
            for _ in range(masters * (1 + replicas))
        ]
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            while client.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.05)
            client.close()

    @property
    def url(self) -> str:
        """A seed node's URL (REDIS_CLUSTER=1 discovers the rest)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
