"""A separate process using the cache, driven by the process tests (python -m tests.cache_child).

Each mode prints one JSON line per event on stdout, with wall-clock times, so the parent can
compare what happened here with what it did.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import redis

from tests.cache_helpers import bare_app

_emit_lock = threading.Lock()


def emit(**event) -> None:
    line = json.dumps({"t": time.time(), **event})
    with _emit_lock:  # threads of one child must not interleave their lines
        print(line, flush=True)


def main() -> None:
    mode, url, prefix = sys.argv[1:4]
    app, cache = bare_app(
        url, prefix, CACHE_LOCK_TTL=float(sys.argv[4]) if len(sys.argv) > 4 else 5
    )
    raw = redis.Redis.from_url(url)
    with app.app_context():
        if mode == "hold-lock":
            # Take the fill lock and hang in the fetch until killed.
            def fetch():
                emit(event="fetching")
                time.sleep(60)

            cache.get_or_set("k", fetch, ttl=30)
        elif mode == "slow-fill":
            # Read the "database" (a Redis key outside the cache), slowly, and fill.
            def fetch():
                value = raw.get(prefix + "source").decode()
                emit(event="read", value=value)
                sys.stdin.readline()  # held until the parent has written and invalidated
                return value

            emit(event="filled", value=cache.get_or_set("k", fetch, ttl=30, tags=["t"]))
        elif mode == "stampede":
            # Threads of this process all miss one cold key; fetches are counted in Redis.
            threads = int(sys.argv[5])
            barrier = threading.Barrier(threads)

            def fetch():
                raw.incr(prefix + "fetches")
                time.sleep(0.3)
                return "v"

            def worker():
                with app.app_context():
                    barrier.wait()
                    value = cache.get_or_set("cold", fetch, ttl=30)
                    emit(event="got", value=value)

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        elif mode == "refresh-ahead":
            # Serve an expired "hot" entry while refreshing it in the background; the refresh
            # (counted in Redis) is held until the parent releases it, after every process read.
            def fetch():
                raw.incr(prefix + "fetches")
                raw.rpush(prefix + "fetched", json.dumps({"t": time.time(), "pid": os.getpid()}))
                while not raw.exists(prefix + "release"):
                    time.sleep(0.005)
                return "new"

            emit(
                event="served",
                pid=os.getpid(),
                value=cache.get_or_set("hot", fetch, ttl=30, refresh_ahead=True),
            )
            sys.stdin.readline()  # every process has served it: the refresh may end
        elif mode == "watch-l1":
            # Serve "k" from memory in a loop and report when the old value stops being served.
            _ = cache.local  # reaching the state starts the listener
            deadline = time.monotonic() + 10
            while not cache._state().notifier.subscribed.is_set():
                time.sleep(0.005)
            first = cache.get("{s}:k")
            assert cache.get("{s}:k") == first and len(cache.local) == 1, "k should be in memory"
            emit(event="ready", value=first)
            while time.monotonic() < deadline:
                if cache.get("{s}:k") != first:
                    emit(event="changed")
                    break
                time.sleep(0.001)
        elif mode == "flusher":
            # Apply write-behind changes to a SQLite file (a real database shared by processes).
            import sqlite3

            from taskapp.cache.writebehind import WriteBehindQueue

            path = sys.argv[5]
            write_behind = WriteBehindQueue(raw, prefix, flush_ms=100, claim_idle_ms=300)

            def apply(object_id, state):
                time.sleep(0.02)  # a slow database: a kill lands mid-batch
                with sqlite3.connect(path) as db:
                    db.execute(
                        "INSERT INTO objs(id, version, state) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
                        "state = excluded.state WHERE excluded.version > objs.version",
                        (object_id, state["version"], json.dumps(state, sort_keys=True)),
                    )
                emit(event="applied", id=object_id, version=state["version"])

            stop = threading.Event()
            threading.Timer(20, stop.set).start()
            write_behind.run(apply, stop, consumer=f"flusher-{sys.argv[6]}")
        cache.close()


if __name__ == "__main__":
    main()
