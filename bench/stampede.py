"""A cold-key stampede: N threads, one barrier, each sends one GET on its own fresh connection.

Run by bench/runner.py; usable alone:
``python -m bench.stampede http://127.0.0.1:8000/api/v1/tasks/<id> --token T -n 100``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def stampede(
    url: str, n: int = 100, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Send ``n`` simultaneous GETs of ``url``; one result per request: status, X-Cache, seconds.

    Each thread opens its connection before the barrier (so connecting is not timed), then all
    send at once; the latency is from just before the request is written to the last body byte.
    """
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    barrier = threading.Barrier(n)
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.connect()
            barrier.wait()
            started = time.perf_counter()
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            response.read()
            seconds = time.perf_counter() - started
            results[i] = {
                "status": response.status,
                "x_cache": response.getheader("X-Cache", ""),
                "seconds": seconds,
            }
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            results[i] = {"status": 0, "x_cache": "", "seconds": float("nan"), "error": repr(exc)}
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--token")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    print(json.dumps(stampede(args.url, args.n, headers), indent=1))


if __name__ == "__main__":
    main()
