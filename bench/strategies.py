"""Figures of the caching strategies: `.venv/bin/python -m bench.strategies [--redis-url URL]`.

Measures, against a real redis-server (default: DB 14 of 127.0.0.1:6379, under a prefix of its
own, deleted afterwards):
- how long another process keeps serving an invalidated value from its in-process layer;
- the latency of a hot key under refresh-ahead against cache-aside (TTL 1 s, 50 ms reads);
- the latency of a write-behind PATCH against an invalidating one, and its flush delay.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import redis
from bson import ObjectId

from taskapp import create_app
from taskapp.models import Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms"


def make(redis_url: str, prefix: str, **config):
    return create_app(
        {
            "SECRET_KEY": "bench-strategies-secret-key-32-bytes-long",
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": prefix,
            "MONGODB_URI": f"mongomock://localhost/bench_{uuid.uuid4().hex[:8]}",
            "RATE_LIMIT_PER_MINUTE": 0,
            **config,
        }
    )


def login(client) -> dict[str, str]:
    body = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse battery"}
    client.post("/api/v1/auth/register", json=body)
    token = client.post("/api/v1/auth/login", json=body).get_json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def l1_staleness(redis_url: str, prefix: str, rounds: int = 20) -> list[float]:
    """Seconds from an invalidation in this process to another process no longer serving it."""
    from tests.cache_helpers import bare_app, running

    app, cache = bare_app(redis_url, prefix)
    delays = []
    with running(app, cache):
        for _ in range(rounds):
            cache.set("k", "old", ttl=30, tags=["t"])
            watcher = subprocess.Popen(
                [sys.executable, "-m", "tests.cache_child", "watch-l1", redis_url, prefix],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            json.loads(watcher.stdout.readline())  # ready: "k" is in its memory
            invalidated = time.time()
            cache.invalidate_tags("t")
            changed = json.loads(watcher.stdout.readline())
            delays.append(changed["t"] - invalidated)
            watcher.kill()
            watcher.wait()
    return delays


def hot_key(redis_url: str, prefix: str, strategy: str, seconds: float = 5.0) -> list[float]:
    """Latencies of back-to-back reads of one task whose entry lives 1 s (50 ms reads)."""
    app = make(
        redis_url, prefix, TASK_READ_STRATEGY=strategy, TASK_CACHE_TTL=1, SIMULATED_DB_LATENCY_MS=50
    )
    client = app.test_client()
    headers = login(client)
    task = client.post("/api/v1/tasks", json={"title": "hot"}, headers=headers).get_json()
    headers["Cache-Control"] = "no-cache"  # skip the response cache: the task cache answers
    path = f"/api/v1/tasks/{task['id']}"
    client.get(path, headers=headers)
    durations = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        client.get(path, headers=headers)
        durations.append(time.perf_counter() - started)
    return durations


def patches(redis_url: str, prefix: str, strategy: str, count: int = 50):
    """PATCH latencies, and for write-behind the delay until MongoDB has each change."""
    app = make(redis_url, prefix, TASK_WRITE_STRATEGY=strategy, WRITE_BEHIND_FLUSH_MS=1000)
    client = app.test_client()
    headers = login(client)
    task = client.post("/api/v1/tasks", json={"title": "t"}, headers=headers).get_json()
    path = f"/api/v1/tasks/{task['id']}"
    latencies, flush_delays = [], []
    for n in range(count):
        started = time.perf_counter()
        client.patch(path, json={"title": f"title {n}"}, headers=headers)
        answered = time.perf_counter()
        latencies.append(answered - started)
        with app.app_context():
            while Task.objects(id=ObjectId(task["id"])).first().title != f"title {n}":
                time.sleep(0.0005)
        flush_delays.append(time.perf_counter() - answered)
    return latencies, flush_delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    prefix = f"bench-strategies:{uuid.uuid4().hex[:8]}:"
    rows = []
    try:
        rows.append(
            (
                "in-process layer: staleness in another process after an invalidation",
                percentiles(l1_staleness(args.redis_url, prefix)),
            )
        )
        for strategy in ("cache-aside", "refresh-ahead"):
            rows.append(
                (
                    f"hot task read, {strategy} (TTL 1 s, 50 ms query)",
                    percentiles(hot_key(args.redis_url, prefix, strategy)),
                )
            )
        for strategy in ("invalidate", "write-behind"):
            latencies, flushed = patches(args.redis_url, prefix, strategy)
            rows.append((f"PATCH latency, {strategy}", percentiles(latencies)))
            if strategy == "write-behind":
                rows.append(
                    (
                        "write-behind flush delay (PATCH answered to MongoDB has it)",
                        percentiles(flushed),
                    )
                )
    finally:
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    print("| figure | measured |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
