"""Turn bench/out/results.json into bench/results.md and bench/results.png.

``python -m bench.report`` re-renders both from the last run without measuring again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS_JSON = BENCH / "out" / "results.json"
RESULTS_MD = BENCH / "results.md"
RESULTS_PNG = BENCH / "results.png"

#: The second number of connections of every figure (the first is 1); runner.CONNECTIONS.
MANY = 16

#: Rows of the one-worker table, in order: (key in results["runs"], what the row measures).
ROWS = [
    ("raw", "a WSGI callable, no Flask: the same bytes and headers; the server's ceiling"),
    ("bare", "a fixed task JSON from a bare Flask route: the reference of the ratios"),
    ("jwt", "the bare route + one `jwt.decode` (HS256) of taskapp's bearer token"),
    ("nocache", "a 50 ms read on every request (the bench's own app)"),
    ("flask_caching", "`@cache.cached` with `CACHE_TYPE=RedisCache`, defaults"),
    ("seed_lock", "the seed lesson's `getOrSet` (SET NX lock, 100 ms polls)"),
    (
        "taskapp_http_rl",
        "GET /api/v1/tasks/<id> answered by the HTTP response layer, with the default settings: the "
        "per-user rate limit on (RATE_LIMIT_PER_MINUTE=10^9: on, never reached) and the in-process "
        "layer checked against the scope version the rate limit's call returns",
    ),
    (
        "taskapp_http",
        "the same with the rate limit off: memory checked against the scope version in one GET",
    ),
    (
        "taskapp_http_l1",
        "the same, rate limit off, L1_CACHE_COHERENCE=acked: memory checked against the versions "
        "announced on the channel, no Redis round trip",
    ),
    (
        "taskapp_http_redis",
        "the same GET, rate limit off, L1_CACHE_MAX_ITEMS=0: the HTTP response layer answers from Redis",
    ),
    (
        "taskapp_redis",
        "same GET with `Cache-Control: no-cache`, L1_CACHE_MAX_ITEMS=0: the service cache answers from Redis",
    ),
    (
        "taskapp_l1",
        "same GET with `Cache-Control: no-cache`, L1 on: the service cache answers from memory",
    ),
]
#: Rows of the table of the servers with several workers (FerretDB + Redis); keys end in _w<N>.
MULTI_ROWS = [
    ("raw", "as the one-worker row"),
    ("bare", "as the one-worker row: the reference of the ratios"),
    ("jwt", "as the one-worker row"),
    ("taskapp_http_rl", "as the one-worker row (the defaults, rate limit on)"),
    ("taskapp_http", "as the one-worker row (rate limit off)"),
    ("taskapp_http_l1", "as the one-worker row (rate limit off, acked coherence)"),
    ("taskapp_redis", "`Cache-Control: no-cache`, L1_CACHE_MAX_ITEMS=0: answered from Redis"),
    ("taskapp_l1", "`Cache-Control: no-cache`, L1 on: answered from memory"),
    (
        "taskapp_uncached0",
        "`no-cache`, L1 off, Redis refusing connections: token check + a FerretDB read per request",
    ),
    ("taskapp_uncached50", "the same + SIMULATED_DB_LATENCY_MS=50"),
]
HIT_ROWS = (
    "taskapp_http_rl",
    "taskapp_http",
    "taskapp_http_l1",
    "taskapp_http_redis",
    "taskapp_redis",
    "taskapp_l1",
)


def workers_multi(results: dict[str, Any]) -> int:
    """The worker count of the FerretDB servers (0 when the run had none)."""
    n = results["environment"].get("gunicorn_workers_multi", 0)
    return n if f"bare_w{n}" in results["runs"] else 0


def multi_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """MULTI_ROWS with their keys in this run."""
    n = workers_multi(results)
    return [(f"{key}_w{n}", what) for key, what in MULTI_ROWS] if n else []


STAMPEDE = ("flask_caching", "seed_lock", "taskapp")


def stampede_keys(results: dict[str, Any]) -> list[str]:
    """The stampedes of this run, in order: the comparison apps, taskapp on 1 and on N workers."""
    keys = [*STAMPEDE, f"taskapp_w{workers_multi(results)}"]
    return [key for key in keys if key in results["stampede"]]


def ms(us: float | None, digits: int = 2) -> str:
    return "n/a" if us is None else f"{us / 1000:.{digits}f}"


def sec_ms(seconds: float | None, digits: int = 1) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.{digits}f}"


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def figure(results: dict[str, Any], key: str, connections: int) -> dict[str, Any]:
    return results["runs"][key]["by_connections"][str(connections)]


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, what was measured, passed) for every target of the issue."""
    rows = []
    n = workers_multi(results)
    for key, name, goal in (
        ("taskapp_http_rl", "HTTP-layer hit, rate limit on (the defaults)", 1.0),
        ("taskapp_http_l1", "in-process hit (HTTP layer, acked coherence, rate limit off)", 1.2),
        ("taskapp_http_redis", "Redis-only hit (HTTP layer, L1 off, rate limit off)", 0.9),
    ):
        for suffix, workers, base in (("", 1, "bare"), (f"_w{n}", n, f"bare_w{n}")):
            if key + suffix not in results["runs"] or base not in results["runs"]:
                continue
            for c in (1, MANY):
                ratio = figure(results, key + suffix, c)["rps"] / figure(results, base, c)["rps"]
                rows.append(
                    (
                        f"{name} ≥ {goal:.2f} × bare Flask, {workers} worker"
                        f"{'s' if workers > 1 else ''}, {c} connection{'s' if c > 1 else ''}",
                        f"{ratio:.2f} ({figure(results, key + suffix, c)['rps']:.0f} vs "
                        f"{figure(results, base, c)['rps']:.0f} req/s)",
                        ratio >= goal,
                    )
                )
    for key in HIT_ROWS:
        if key not in results["runs"]:
            continue
        p50 = figure(results, key, 1)["p50_us"]
        label = results["runs"][key]["label"].removeprefix("taskapp: ")
        rows.append((f"a hit's p50 < 1 ms at 1 connection: {label}", f"{ms(p50)} ms", p50 < 1000))
    for key in ("taskapp", f"taskapp_w{n}"):
        s = results["stampede"].get(key)
        if not s:
            continue
        workers = "1 worker" if key == "taskapp" else f"{n} workers"
        fills = s["fills_per_round"]
        rows.append(
            (
                f"stampede, {workers}: exactly one fill per cold key (100 requests)",
                f"fills per round: {', '.join(str(f) for f in fills)}",
                all(f == 1 for f in fills),
            )
        )
        gaps = [r["p99_after_fill"] for r in s["per_round"] if r["p99_after_fill"] is not None]
        worst = max(gaps) if gaps else None
        rows.append(
            (
                f"stampede, {workers}: waiters' p99 within 15 ms of the fill time (every round)",
                "waiters' p99 minus the filler's latency, per round: "
                + ", ".join(f"{g * 1000:+.0f} ms" for g in gaps),
                worst is not None and worst <= 0.015,
            )
        )
    hung, ref = results["hung"].get("taskapp"), results["hung"].get("nocache")
    if hung and ref:
        ratio = hung["p50_us"] / ref["p50_us"] if ref["p50_us"] else float("inf")
        down = results["hung"].get("taskapp_down")
        context = (
            f"; taskapp's own uncached path (Redis refusing connections): {ms(down['p50_us'], 1)} ms"
            if down
            else ""
        )
        rows.append(
            (
                "Redis hung: taskapp's median within 20% of the uncached route (the no-cache app)",
                f"{ms(hung['p50_us'], 1)} ms vs {ms(ref['p50_us'], 1)} ms ({ratio:.2f}×){context}",
                hung["requests"] > 0 and ratio <= 1.2,
            )
        )
        rows.append(
            (
                "Redis hung: no 5xx from taskapp",
                (
                    f"{hung['status_5xx']} × 5xx in {hung['requests']} responses, "
                    f"{hung['timeouts']} over the wrk timeout, "
                    f"{hung['connect_errors'] + hung['read_errors'] + hung['write_errors']} socket errors"
                ),
                hung["status_5xx"] == 0 and hung["requests"] > 0,
            )
        )
    return rows


def main_table(
    results: dict[str, Any], rows: list[tuple[str, str]] = ROWS, bare_key: str = "bare"
) -> list[str]:
    """Every figure of ``rows``; ratios to ``bare_key`` (the bare Flask route, same workers)."""
    lines = [
        (
            f"| row | what it measures | req/s, 1 conn | p50 / p99 ms, 1 conn | req/s, {MANY} conn | p50 / p99 ms, {MANY} conn "
            f"| × bare (1 / {MANY}) | CPU µs per request, all workers (1 / {MANY}) | DB reads per 1,000 | non-2xx |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bare = {c: figure(results, bare_key, c)["rps"] for c in (1, MANY)}
    for key, what in rows:
        if key not in results["runs"]:
            continue
        run = results["runs"][key]
        one, many = figure(results, key, 1), figure(results, key, MANY)
        reads = (
            (one["db_reads"] + many["db_reads"]) * 1000 / max(one["requests"] + many["requests"], 1)
        )
        lines.append(
            f"| {run['label']} | {what} | {one['rps']:.0f} | {ms(one['p50_us'])} / {ms(one['p99_us'])} "
            f"| {many['rps']:.0f} | {ms(many['p50_us'], 1)} / {ms(many['p99_us'], 1)} "
            f"| {one['rps'] / bare[1]:.2f} / {many['rps'] / bare[MANY]:.2f} "
            f"| {one.get('cpu_us_per_request', 0):.0f} / {many.get('cpu_us_per_request', 0):.0f} | {reads:.2f} "
            f"| {one['non_2xx_3xx'] + many['non_2xx_3xx']} |"
        )
    return lines


def spread_table(results: dict[str, Any]) -> list[str]:
    lines = [
        f"| row | req/s of each slice, 1 conn | req/s of each slice, {MANY} conn |",
        "|---|---|---|",
    ]
    for key, _ in ROWS + multi_rows(results):
        if key in results["runs"]:
            one, many = figure(results, key, 1), figure(results, key, MANY)
            lines.append(
                f"| {row_label(results, key)} | {', '.join(f'{x:.0f}' for x in one['rps_slices'])} "
                f"| {', '.join(f'{x:.0f}' for x in many['rps_slices'])} |"
            )
    return lines


def row_label(results: dict[str, Any], key: str) -> str:
    """The row's label with its worker count."""
    run = results["runs"][key]
    workers = run.get("workers", 1)
    return f"{run['label']} [{workers} worker{'s' if workers > 1 else ''}]"


def side_by_side(results: dict[str, Any]) -> list[str]:
    """The rows measured at both worker counts, next to each other."""
    n = workers_multi(results)
    if not n:
        return []
    lines = [
        (
            f"| row | 1 worker: req/s, 1 / {MANY} conn | × bare Flask, 1 worker | {n} workers: req/s, "
            f"1 / {MANY} conn | × bare Flask, {n} workers | {n} workers ÷ 1 worker, 1 / {MANY} conn |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    bare1 = {c: figure(results, "bare", c)["rps"] for c in (1, MANY)}
    baren = {c: figure(results, f"bare_w{n}", c)["rps"] for c in (1, MANY)}
    for key, _ in MULTI_ROWS:
        many = f"{key}_w{n}"
        if many not in results["runs"]:
            continue
        b = {c: figure(results, many, c)["rps"] for c in (1, MANY)}
        if key in results["runs"]:
            a = {c: figure(results, key, c)["rps"] for c in (1, MANY)}
            one = (
                f"{a[1]:.0f} / {a[MANY]:.0f} | {a[1] / bare1[1]:.2f} / {a[MANY] / bare1[MANY]:.2f}"
            )
            scale = f"{b[1] / a[1]:.2f} / {b[MANY] / a[MANY]:.2f}"
        else:
            one, scale = "– | –", "–"
        lines.append(
            f"| {results['runs'][many]['label']} | {one} | {b[1]:.0f} / {b[MANY]:.0f} "
            f"| {b[1] / baren[1]:.2f} / {b[MANY] / baren[MANY]:.2f} | {scale} |"
        )
    return lines


def stampede_table(results: dict[str, Any]) -> list[str]:
    lines = [
        (
            "| app | fills (DB reads) per round | filler's latency, median ms | waiters | waiters' p50 ms "
            "| waiters' p99 ms | waiters' p99 − fill, per round, ms | statuses |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for key in stampede_keys(results):
        s = results["stampede"].get(key)
        if not s:
            continue
        gaps = [r["p99_after_fill"] for r in s["per_round"]]
        gap = ", ".join("n/a" if g is None else f"{g * 1000:+.0f}" for g in gaps)
        statuses = ", ".join(f"{n} × {code}" for code, n in s["statuses"].items())
        lines.append(
            f"| {s['label']} | {', '.join(str(f) for f in s['fills_per_round'])} | "
            f"{sec_ms(s['fill_seconds_median'])} | {s['waiters']} | {sec_ms(s['waiter_p50'])} | "
            f"{sec_ms(s['waiter_p99'])} | {gap} | {statuses} |"
        )
    return lines


def hung_table(results: dict[str, Any]) -> list[str]:
    lines = [
        (
            "| app | responses in the window | req/s | p50 ms | p99 ms | max ms | 5xx | over wrk timeout "
            "| socket errors | cache errors counted |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("nocache", "taskapp_down", "taskapp", "flask_caching"):
        h = results["hung"].get(key)
        if not h:
            continue
        empty = h["requests"] == 0
        lines.append(
            f"| {h['label']} | {h['requests']} | {h['rps']:.0f} | {'n/a' if empty else ms(h['p50_us'], 1)} "
            f"| {'n/a' if empty else ms(h['p99_us'], 1)} | {'n/a' if empty else ms(h['max_us'], 1)} "
            f"| {h['status_5xx']} | {h['timeouts']} "
            f"| {h['connect_errors'] + h['read_errors'] + h['write_errors']} "
            f"| {int(h['cache_errors']) if 'cache_errors' in h else '–'} |"
        )
    return lines


def profile_section(results: dict[str, Any]) -> list[str]:
    profiles = results.get("profiles") or {}
    if not profiles:
        return ["No profile in this run (py-spy missing or `--no-profile`)."]
    lines = []
    cpu = [
        k
        for k in ("taskapp_http_rl", "taskapp_http_l1", "taskapp_http_redis", "bare", "raw")
        if k in profiles
    ]
    if cpu:
        lines += [
            (
                "CPU per request: py-spy `--gil` (only the thread holding the GIL is sampled) on the one "
                "gunicorn worker while wrk sends one request at a time. Shares are of all samples; a part "
                "includes what it calls, so parts overlap. The µs are the share times the worker's "
                "measured CPU per request: an estimate (py-spy's GIL attribution is approximate, and the "
                "worker's main loop is shared by all requests)."
            ),
            "",
            "| part of the request | " + " | ".join(profiles[k]["label"] for k in cpu) + " |",
            "|---|" + "---:|" * len(cpu),
        ]
        labels = [label for label, _ in profiles[cpu[0]]["components"]]
        # The worker's CPU per request at one connection (from the throughput phase) turns shares
        # into an estimate of microseconds per request.
        per_request = {k: figure(results, k, 1).get("cpu_us_per_request") for k in cpu}
        for label in labels:
            cells = []
            for k in cpu:
                share = dict(profiles[k]["components"]).get(label, 0.0)
                us = f" ≈ {share * per_request[k] / 100:.0f} µs" if per_request[k] and share else ""
                cells.append(f"{share:.1f}%{us}")
            if any(not c.startswith("0.0%") for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append(
            "| worker CPU per request, 1 connection (throughput phase) | "
            + " | ".join(f"{per_request[k]:.0f} µs" if per_request[k] else "?" for k in cpu)
            + " |"
        )
        lines.append("| samples | " + " | ".join(str(profiles[k]["samples"]) for k in cpu) + " |")
        top = profiles.get("taskapp_http_rl")
        if top:
            lines += [
                "",
                "Top functions by own CPU time, HTTP-layer hit with the rate limit on "
                "(`bench/out/profile-taskapp_http_rl.txt` has more):",
                "",
            ]
            lines += [f"- {share:.1f}% {name}" for name, share in top["top_self"][:12]]
    wall = profiles.get(f"taskapp_http_rl_c{MANY}_wall")
    if wall:
        lines += [
            "",
            (
                f"Where threads are at {MANY} connections (py-spy without `--gil`: every thread not idle, so "
                "also threads waiting for a lock or the GIL), HTTP-layer hit, rate limit on:"
            ),
            "",
        ]
        lines += [f"- {share:.1f}% {name}" for name, share in wall["top_self"][:8]]
    return lines


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    bare_many = figure(results, "bare", MANY)["rps"]
    out = [
        "# taskapp benchmark results",
        "",
        (
            f"Made by `bench/run` on {env['date']}, commit `{env['git']}`"
            f"{' with uncommitted changes in taskapp/' if env.get('git_dirty') else ''}, "
            f"in {env.get('wall_seconds', 0):.0f} s. Every figure below comes from this one run, with the "
            "same servers and settings. Raw numbers: `bench/out/results.json` (not committed); the chart: "
            "`bench/results.png`."
        ),
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {m} | {verdict(ok)} |" for t, m, ok in targets(results)]
    out += [
        "",
        "## Throughput and latency",
        "",
        (
            f"wrk `-t1 -c1` and `-t2 -c{MANY}`, {env['slices']} slices of {env['slice_seconds']} s each "
            f"({env['slices'] * env['slice_seconds']} s per figure), after a {env['warmup_s']} s warm-up. "
            "req/s is all requests over all slices; p50 and p99 are the median slice's. "
            "DB reads per 1,000 requests: `taskapp_db_reads_total` from `/metrics` before and after each "
            "slice for taskapp, the app's own fetch counter for the others. Entries expire during the run "
            "(TASK_CACHE_TTL 60 s, HTTP_CACHE_TTL 30 s, L1_CACHE_TTL 5 s; 60 s in the other apps), so "
            "a cached row can show a few refills."
        ),
        "",
    ]
    n = workers_multi(results)
    out += [
        (
            "Every row of both tables was measured in the same interleaved slices, under the same "
            "gunicorn settings; ratios are to the bare Flask route with the same number of workers, "
            "at the same number of connections."
        ),
        "",
        "### One worker (taskapp on the embedded MongoDB)",
        "",
    ]
    out += main_table(results)
    if n:
        out += [
            "",
            f"### {n} workers, taskapp on FerretDB and the bench's redis-server",
            "",
            (
                f"GUNICORN_WORKERS={n}; taskapp's MONGODB_URI is the run's own FerretDB (SQLite "
                "backend, a database per server), so the workers share their data and the cache is "
                "coherent across them. Hit rows: SIMULATED_DB_LATENCY_MS=50, as the one-worker rows "
                "(a hit does not read the database). taskapp's uncached read: every taskapp read "
                "route is cached, so this server's REDIS_URL points at a closed port (the breaker "
                "stays open), the in-process layer is off and the request says `no-cache`: each GET "
                "verifies the token and reads FerretDB, with no simulated delay (the real read "
                "cost) and with 50 ms."
            ),
            "",
        ]
        out += main_table(results, multi_rows(results), f"bare_w{n}")
        out += [
            "",
            f"### Side by side: 1 and {n} workers",
            "",
            (
                "The one-worker taskapp rows run on the embedded MongoDB, the others on FerretDB; "
                "a hit reads neither. The machine has "
                f"{results['environment']['cpus']} CPUs, shared with wrk and the other servers, so "
                f"{n} workers cannot give {n}× at one connection (one request at a time)."
            ),
            "",
        ]
        out += side_by_side(results)
    out += [
        "",
        (
            "Throughput of each slice (slices of all rows were taken in turn, so a busy moment on the "
            "machine shows in every row's spread):"
        ),
        "",
    ]
    out += spread_table(results)
    out += [
        "",
        "## Cold-key stampede",
        "",
        (
            f"{env['stampede_requests']} connections, opened first, each send one GET for a key that "
            "was never cached, written back to back by one client thread (about 10 µs apart; answers "
            f"read through a selector, so the client adds no queueing of its own); {env['stampede_rounds']} "
            "rounds per app, a new key each round (taskapp: a task just created through the API; the "
            "others: a new id), after one burst that is not counted (a fresh gunicorn worker starts a "
            "thread per request in flight on its first burst). A fill is a read of the database, "
            "counted on the server. The filler is the response marked `X-Cache: MISS`; the others are "
            "the waiters. Latencies are measured by the client, from sending to the last byte; a "
            "waiter can be answered before the filler (the fill is stored before the filler's answer "
            "is written)."
        ),
        "",
    ]
    out += stampede_table(results)
    out += [
        "",
        "## Redis hung",
        "",
        (
            f"The bench redis-server is stopped with SIGSTOP (it keeps its sockets, so connections and "
            f"writes succeed and nothing ever answers) for the {env['hung_seconds']} s of a wrk run at {MANY} "
            f"connections (`--timeout {env['hung_timeout']}s`), then resumed with SIGCONT (always, in a "
            "`finally`). The same task GET as the HTTP-layer rows. References, under the same wrk "
            "settings: the no-cache app (the uncached route of the targets), and a taskapp server whose "
            "REDIS_URL points at a closed port, so its breaker stays open and every GET takes taskapp's "
            "own uncached path (token check, a mongomock query, the 50 ms delay). Flask-Caching's "
            f"client has redis-py's default socket timeout (5 s in redis-py {env['redis_py']}): each "
            "request waits for it, then Flask-Caching logs the error and runs the view."
        ),
        "",
    ]
    out += hung_table(results)
    out += ["", "## Where the time goes on a cached GET", ""]
    out += profile_section(results)
    load = results.get("load_before") or [0, 0, 0]
    out += [
        "",
        "## Setup, method and limits",
        "",
        (
            f"- Machine: {env['cpus']} CPUs ({env['cpu']}); load average {load[0]:.1f} when the "
            "measurements began"
            + (
                f" and {results['load_after_throughput'][0]:.1f} when the throughput phase ended"
                if results.get("load_after_throughput")
                else ""
            )
            + ". wrk, the client of the stampede and every server share these cores, "
            "and anything else running on the machine adds noise (see the spread of the slices)."
        ),
        (
            f"- Software: Python {env['python']}, gunicorn {env['gunicorn']}, Flask {env['flask']}, "
            f"Flask-Caching {env['flask_caching']}, redis-py {env['redis_py']}, {env['redis_server']}, "
            f"{env['wrk']}."
        ),
        (
            f"- Servers: each app is served by `gunicorn -c gunicorn.conf.py` (gthread) with "
            f"GUNICORN_THREADS={env['gunicorn_threads']} (GUNICORN_WORKERS=1 in the one-worker table), "
            "and the access log off (`GUNICORN_ACCESSLOG=off`, as a deployment behind a proxy that logs; "
            "with it on, formatting the line is about a sixth of a hit's time, in every row alike). "
            "taskapp runs with `MONGODB_URI=mongomock://localhost/bench`, the embedded store, which "
            "keeps its data in one process, so gunicorn.conf.py forces one worker: the comparison apps "
            "get one worker too. Enough threads that all requests of a stampede are in flight at once. "
            "Every figure of the one-worker table is therefore one Python process, bounded by one "
            f"GIL. The other table's servers run GUNICORN_WORKERS={env.get('gunicorn_workers_multi', '?')} "
            "with the same threads, taskapp on the run's own FerretDB 1.24.2 (built by "
            "`scripts/build-ferretdb`, SQLite files in a temporary folder removed afterwards) and "
            "the run's redis-server; the raw WSGI, bare Flask and Flask + PyJWT apps are served "
            "again at that worker count."
        ),
        (
            f"- Settings of every server: REDIS_URL pointing at the run's own redis-server on a free "
            f"loopback port (never 127.0.0.1:6379), SECRET_KEY set, SIMULATED_DB_LATENCY_MS="
            f"{env['db_latency_ms']} (0 for taskapp's uncached read without the simulated delay), "
            "RATE_LIMIT_PER_MINUTE=0 except in the rate-limit-on row (10^9: on, never reached). "
            "The per-user rate limit is off elsewhere because "
            "wrk sends thousands of requests a second as one user: with the default 600 per minute "
            "almost every request would be a 429, and the limiter's own Redis round trip (a sorted-set "
            "script per request) would be part of every figure. With it on, a request costs one more "
            "Redis round trip, except a response-cache hit, whose lookup runs in the limiter's call."
        ),
        (
            "- Seeding: register, log in and create a task through the HTTP API of each taskapp server. "
            f"The comparison apps serve that task's exact JSON ({results.get('payload_bytes', '?')} bytes)"
            + (
                "; before measuring, the run compared the raw WSGI, bare Flask and PyJWT answers "
                "with taskapp's bytes: "
                + (
                    "identical."
                    if not results["baselines_with_other_bytes"]
                    else "different in " + ", ".join(results["baselines_with_other_bytes"]) + "."
                )
                if "baselines_with_other_bytes" in results
                else "."
            )
        ),
        (
            "- No-cache row: taskapp has no route that always reads MongoDB (`Cache-Control: no-cache` "
            "only skips the HTTP layer; the service cache still answers), so the row is the bench's own "
            "`nocache` app in `bench/apps.py`: the same 50 ms read (a sleep) on every request. It does "
            "no authentication and no MongoDB query, so it is slightly cheaper than a real uncached "
            "taskapp read. taskapp's own uncached read is in the table of the servers with several "
            "workers: a server whose Redis refuses connections, with the in-process layer off, so "
            "every GET checks the token, finds the breaker open and reads FerretDB."
        ),
        (
            "- The comparison apps do no authentication, except the Flask + PyJWT row, which decodes "
            "taskapp's own bearer token (HS256, `exp`, `iat` and `sub` required) as taskapp's token "
            "check does. taskapp verifies the token on every request, builds per-user keys and counts "
            "metrics. wrk sends the same `Authorization` header to the raw, bare and PyJWT rows."
        ),
        (
            "- `Cache-Control: no-cache` rows: the HTTP layer neither looks up nor stores the "
            "response, so the service cache below answers (from memory, or from Redis with "
            "L1_CACHE_MAX_ITEMS=0); the view, its JSON encoding and the response's ETag are part of "
            "these rows."
        ),
        (
            "- The HTTP-layer hit row is itself served from memory: a response entry is kept in the "
            "in-process layer like any other entry."
        ),
        (
            f"- Throughput ratios use the bare Flask route with the same number of workers at the "
            f"same number of connections ({bare_many:.0f} req/s at {MANY} with one worker)."
        ),
    ]
    return "\n".join(out) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, _ in ROWS + multi_rows(results) if k in results["runs"]]
    labels = [row_label(results, k) for k in keys]
    n = workers_multi(results)
    fig, axes = plt.subplots(
        2, 2, figsize=(16, 16), gridspec_kw={"height_ratios": [max(len(keys), 7) / 7, 1]}
    )
    fig.suptitle(
        f"taskapp benchmark, {results['environment']['date']} — 1"
        + (f" and {n} gunicorn workers" if n else " gunicorn worker")
        + f", {results['environment']['gunicorn_threads']} threads each",
        fontsize=13,
    )

    # (a) throughput
    ax = axes[0][0]
    ys = range(len(keys))
    height = 0.38
    one = [figure(results, k, 1)["rps"] for k in keys]
    many = [figure(results, k, MANY)["rps"] for k in keys]
    ax.barh([y - height / 2 for y in ys], one, height, label="1 connection", color="#8fb3d9")
    ax.barh(
        [y + height / 2 for y in ys], many, height, label=f"{MANY} connections", color="#1f5f99"
    )
    for y, (a, b) in enumerate(zip(one, many, strict=False)):
        ax.text(a, y - height / 2, f" {a:.0f}", va="center", fontsize=8)
        ax.text(b, y + height / 2, f" {b:.0f}", va="center", fontsize=8)
    ax.axvline(
        figure(results, "bare", MANY)["rps"],
        color="#c0392b",
        ls="--",
        lw=1,
        label=f"bare Flask, 1 worker ({MANY} conn)",
    )
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (higher is better)")
    ax.set_title("Throughput")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.set_xlim(0, max(one + many) * 1.15)

    # (b) latency at 1 connection
    ax = axes[0][1]
    p50 = [figure(results, k, 1)["p50_us"] / 1000 for k in keys]
    p99 = [figure(results, k, 1)["p99_us"] / 1000 for k in keys]
    ax.barh([y - height / 2 for y in ys], p50, height, label="p50", color="#7fbf7f")
    ax.barh([y + height / 2 for y in ys], p99, height, label="p99", color="#2e7d32")
    for y, (a, b) in enumerate(zip(p50, p99, strict=False)):
        ax.text(a, y - height / 2, f" {a:.2f}", va="center", fontsize=8)
        ax.text(b, y + height / 2, f" {b:.2f}", va="center", fontsize=8)
    ax.axvline(1.0, color="#c0392b", ls="--", lw=1, label="1 ms (hit p50 target)")
    ax.set_xscale("log")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency at 1 connection, ms (log scale; lower is better)")
    ax.set_title("Latency, one request at a time")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.set_xlim(min(p50) / 1.5, max(p99) * 2.5)

    # (c) stampede
    ax = axes[1][0]
    names = stampede_keys(results)
    st = [results["stampede"][k] for k in names]
    xs = range(len(names))
    width = 0.25
    fill = [(s["fill_seconds_median"] or 0) * 1000 for s in st]
    w50 = [(s["waiter_p50"] or 0) * 1000 for s in st]
    w99 = [(s["waiter_p99"] or 0) * 1000 for s in st]
    ax.bar([x - width for x in xs], fill, width, label="filler's latency (median)", color="#f0b27a")
    ax.bar(list(xs), w50, width, label="waiters' p50", color="#a569bd")
    ax.bar([x + width for x in xs], w99, width, label="waiters' p99", color="#6c3483")
    top = max(fill + w50 + w99 + [1])
    ticks = []
    for s in st:
        fills = s["fills_per_round"]
        span = f"{min(fills)}" if min(fills) == max(fills) else f"{min(fills)}–{max(fills)}"
        ticks.append(f"{s['label']}\n{span} fill{'' if span == '1' else 's'} (DB reads)\nper round")
    for x, values in zip(xs, zip(fill, w50, w99, strict=False), strict=False):
        for dx, v in zip((-width, 0, width), values, strict=False):
            ax.text(x + dx, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top * 1.12)
    ax.set_xticks(list(xs), ticks, fontsize=9)
    ax.set_ylabel("ms (lower is better)")
    ax.set_title(
        f"Cold-key stampede: {results['environment']['stampede_requests']} simultaneous GETs, "
        f"{results['environment']['stampede_rounds']} rounds"
    )
    ax.legend(fontsize=8, loc="upper left")

    # (d) Redis hung
    ax = axes[1][1]
    names = [
        k for k in ("nocache", "taskapp_down", "taskapp", "flask_caching") if k in results["hung"]
    ]
    hs = [results["hung"][k] for k in names]
    xs = range(len(names))
    med = [h["p50_us"] / 1000 if h["requests"] else 0 for h in hs]
    p99h = [h["p99_us"] / 1000 if h["requests"] else 0 for h in hs]
    ax.bar([x - 0.2 for x in xs], med, 0.4, label="p50", color="#5dade2")
    ax.bar([x + 0.2 for x in xs], p99h, 0.4, label="p99", color="#1b4f72")
    ax.set_yscale("log")
    for x, h, m, p in zip(xs, hs, med, p99h, strict=False):
        ax.text(x - 0.2, max(m, 1), f"{m:.0f}", ha="center", va="bottom", fontsize=8)
        ax.text(x + 0.2, max(p, 1), f"{p:.0f}", ha="center", va="bottom", fontsize=8)
        note = f"{h['requests']} responses\n{h['status_5xx']} × 5xx"
        if h["timeouts"]:
            note += f"\n{h['timeouts']} over the wrk timeout"
        ax.text(x, max(m, p, 1) * 1.6, note, ha="center", va="bottom", fontsize=8)
    ticks = {
        "nocache": "no-cache app\n(reference)",
        "taskapp_down": "taskapp,\nRedis refusing\n(reference)",
        "taskapp": "taskapp,\nRedis hung",
        "flask_caching": "Flask-Caching,\nRedis hung",
    }
    ax.set_xticks(list(xs), [ticks[k] for k in names], fontsize=9)
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_ylim(1, max(p99h + [100]) * 8)
    ax.set_title(
        f"Redis hung (SIGSTOP) for {results['environment']['hung_seconds']} s, wrk -c{MANY}"
    )
    ax.legend(fontsize=8, loc="upper left")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    results = json.loads(RESULTS_JSON.read_text())
    RESULTS_MD.write_text(markdown(results))
    chart(results, RESULTS_PNG)
    print(f"[bench] results: {RESULTS_MD} and {RESULTS_PNG}")
    for target, measured, ok in targets(results):
        print(f"[bench]   {'PASS' if ok else 'FAIL'}  {target}: {measured}")


if __name__ == "__main__":
    main()
