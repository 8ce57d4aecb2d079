"""What a kill -9 of Redis loses with an AOF: acknowledged writes, by ``appendfsync`` policy.

    .venv/bin/python -m bench.aof_loss [--rounds 20] [--policy everysec --policy always]

Write-behind answers a PATCH once Redis acknowledged its stage, so what Redis keeps through a
crash is what "2xx means the change reaches MongoDB" rests on. Each round starts a
redis-server (``appendonly yes``, the policy under test) in a temporary folder, INCRs one key
as fast as one client can for 0.5-2 s while another thread writes 64 MB files with fsync (the
disk load of a busy host), SIGKILLs the server, starts it again from its AOF and compares the
counter with the last value Redis acknowledged. It prints one Markdown row per policy: rounds,
rounds that lost acknowledged writes, and the most writes one round lost.

With ``everysec`` Redis postpones writing its AOF buffer while a background fsync is still
running (up to 2 s) yet keeps answering clients, so a kill in that window loses what it
acknowledged; with ``always`` it writes and syncs before it answers.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import free_port  # noqa: E402


def disk_load(folder: str, stop: threading.Event) -> None:
    """Write and fsync 64 MB files until stopped."""
    path = os.path.join(folder, "load")
    block = os.urandom(1 << 20)
    while not stop.is_set():
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())


def start(port: int, folder: str, policy: str) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
        + ["--save", "", "--appendonly", "yes", "--appendfsync", policy],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()  # answers -LOADING (an error) until the AOF is read back
            client.close()
            return process
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)


def one_round(policy: str) -> int:
    """Acknowledged writes lost by one kill -9 and restart."""
    folder = tempfile.mkdtemp(prefix="aof-loss-")
    port = free_port()
    stop = threading.Event()
    loader = threading.Thread(target=disk_load, args=(folder, stop))
    try:
        process = start(port, folder, policy)
        client = redis.Redis(port=port)
        loader.start()
        acknowledged = 0
        until = time.monotonic() + random.uniform(0.5, 2.0)
        while time.monotonic() < until:
            acknowledged = client.incr("n")
        process.send_signal(signal.SIGKILL)
        process.wait()
        client.close()
        stop.set()
        loader.join()
        process = start(port, folder, policy)
        client = redis.Redis(port=port)
        kept = int(client.get("n") or 0)
        client.close()
        process.kill()
        process.wait()
        return acknowledged - kept
    finally:
        stop.set()
        if loader.is_alive():
            loader.join()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--policy", action="append", choices=["everysec", "always"])
    args = parser.parse_args()
    policies = args.policy or ["everysec", "always"]
    print("| appendfsync | rounds | rounds losing acknowledged writes | most lost in a round |")
    print("|---|---:|---:|---:|")
    for policy in policies:
        lost = [one_round(policy) for _ in range(args.rounds)]
        print(f"| {policy} | {len(lost)} | {sum(1 for n in lost if n > 0)} | {max(lost)} |")


if __name__ == "__main__":
    main()
