"""What a kill -9 of Redis loses with an AOF: acknowledged writes, by ``appendfsync`` policy.

    .venv/bin/python -m bench.aof_loss [--rounds 20] [--policy everysec --policy always]

Write-behind's "2xx means the change reaches MongoDB" rests on what Redis keeps through a crash.
Each round INCRs one key of a redis-server (``appendonly yes``) for 0.5-2 s while a thread
writes 64 MB files with fsync (a busy host's disk), SIGKILLs it, restarts it from its AOF and
compares the counter with the last value acknowledged. With ``everysec`` Redis postpones its
AOF write while a background fsync runs (up to 2 s) yet keeps answering; ``always`` syncs first.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_server import RedisServer  # noqa: E402


def disk_load(folder: str, stop: threading.Event) -> None:
    """Write and fsync 64 MB files until stopped."""
    block = os.urandom(1 << 20)
    while not stop.is_set():
        with open(os.path.join(folder, "load"), "wb") as f:
            for _ in range(64):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())


def one_round(policy: str) -> int:
    """Acknowledged writes lost by one kill -9 and restart."""
    server, stop = RedisServer(appendonly=True, appendfsync=policy), threading.Event()
    loader = threading.Thread(target=disk_load, args=(server.dir, stop))
    loader.start()
    try:
        with redis.Redis(port=server.port) as client:
            acknowledged, until = 0, time.monotonic() + random.uniform(0.5, 2.0)
            while time.monotonic() < until:
                acknowledged = client.incr("n")
            server.kill()
        stop.set()
        loader.join()
        server.start()  # from its AOF: waits until the server answers
        with redis.Redis(port=server.port) as client:
            return acknowledged - int(client.get("n") or 0)
    finally:
        stop.set()
        loader.join()
        server.stop()


def main() -> None:
    """One row per policy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--policy", action="append", choices=["everysec", "always"])
    args = parser.parse_args()
    print("| appendfsync | rounds | rounds losing acknowledged writes | most lost in a round |")
    print("|---|---:|---:|---:|")
    for policy in args.policy or ["everysec", "always"]:
        lost = [one_round(policy) for _ in range(args.rounds)]
        print(f"| {policy} | {len(lost)} | {sum(1 for n in lost if n > 0)} | {max(lost)} |")


if __name__ == "__main__":
    main()
