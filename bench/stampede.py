"""A cold-key stampede: N requests sent at once, each on its own fresh connection.

One thread drives every connection through a selector: the connections are opened first (so
connecting is not timed), then the N requests are written back to back (about 10 µs apart) and
the answers read as they come. A thread per request would add its own queueing to the figures:
N Python threads waking together on 2 shared cores take milliseconds to parse N answers.

Run by bench/runner.py; usable alone:
``python -m bench.stampede http://127.0.0.1:8000/api/v1/tasks/<id> --token T -n 100``.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from typing import Any
from urllib.parse import urlsplit


def stampede(
    url: str, n: int = 100, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Send ``n`` simultaneous GETs of ``url``; one result per request: status, X-Cache, seconds.

    The latency of a request is from just before its bytes are written to its last body byte.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    results: list[dict[str, Any]] = [
        {"status": 0, "x_cache": "", "seconds": float("nan"), "error": "no answer"}
        for _ in range(n)
    ]
    sockets = [socket.create_connection((host, port), timeout=timeout) for _ in range(n)]
    selector = selectors.DefaultSelector()
    started = [0.0] * n
    received = [bytearray() for _ in range(n)]
    try:
        for i, sock in enumerate(sockets):
            started[i] = time.perf_counter()
            sock.sendall(request)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, i)
        pending = n
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                i = key.data
                try:
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                now = time.perf_counter()
                received[i] += chunk
                answer = _complete(bytes(received[i]))
                if answer is None and chunk:
                    continue
                selector.unregister(key.fileobj)
                pending -= 1
                if answer is None:
                    results[i]["error"] = "connection closed before the whole answer"
                    continue
                status, x_cache = answer
                results[i] = {"status": status, "x_cache": x_cache, "seconds": now - started[i]}
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    return results


def _complete(raw: bytes) -> tuple[int, str] | None:
    """(status, X-Cache) once ``raw`` holds a whole answer (headers and Content-Length bytes)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if len(body) < int(fields.get("content-length", "0")):
        return None
    return int(status_line.split()[1]), fields.get("x-cache", "")


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
