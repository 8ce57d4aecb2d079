"""The runner's results as Markdown: medians over repeats with their min-max, what is resolved.

``write`` puts them into ``bench/results.md`` and, between the markers, ``docs/benchmarks.md``.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench/run -->", "<!-- /bench/run -->"  # around the tables in DOCS
CONNECTIONS = ("1", "16")
BARE = "bare Flask route (the reference)"
DEFAULTS = "taskapp, the defaults"
SAME_CLIENT = "taskapp, its request call replaced by one GET (same client)"
UNCACHED = "taskapp, uncached read (50 ms)"
TARGET = 2.0  # a hit with the defaults costs Redis at most this many plain GETs (the contract)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``."""
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratios(runs: dict, row: str, reference: str, c: str, field: str = "rps") -> list[float]:
    """``field`` of ``row`` over ``reference``'s, repeat by repeat (both ran in that repeat)."""
    return [a[field] / b[field] for a, b in zip(runs[row][c], runs[reference][c], strict=True)]


def verdict(values: list[float]) -> str:
    """What a row's repeat-by-repeat ratios to the defaults resolve."""
    if max(values) <= 0.95 or min(values) >= 1.05:
        return "yes, 5% or more"
    if max(values) < 1 or min(values) > 1:
        return "yes, under 5% in some repeat"
    return "no"


def speed(runs: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The speed table, what the run resolves, and each row against the defaults."""
    lines = [
        "| row | req/s, 1 conn | × bare Flask, 1 conn | req/s, 16 conn | × bare Flask, 16 conn "
        "| p50 ms, 1 conn |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row, by_c in runs.items():
        rps = [f"{median(r['rps'] for r in by_c[c]):.0f}" for c in CONNECTIONS]
        x = [spread(ratios(runs, row, BARE, c)) for c in CONNECTIONS]
        p50 = median(r["p50_us"] for r in by_c["1"]) / 1000
        lines.append(f"| {row} | {rps[0]} | {x[0]} | {rps[1]} | {x[1]} | {p50:.2f} |")
    failed = sum(
        r["non_2xx_3xx"] + r["socket_errors"] for x in runs.values() for c in x.values() for r in c
    )
    bare = [[r["rps"] for r in runs[BARE][c]] for c in CONNECTIONS]
    noise = [(max(x) - min(x)) / median(x) for x in bare]
    n = len(bare[0])
    lines += [
        "",
        f"Failed answers (non-2xx or socket errors) in every slice: {failed}. Bare Flask's own "
        f"req/s moved {noise[0]:.0%} (1 connection) and {noise[1]:.0%} (16) from its slowest to "
        "its fastest repeat: smaller differences, or inside a row's min-max, are not resolved. "
        "Each row against the defaults, resolved when every repeat falls on the same side of 1 "
        f"(rows that do not differ would still do so {2 * 0.5**n:.0%} of the time with {n} repeats):",
        "",
        "| row ÷ the defaults, same repeat (under 1: the defaults are faster) | 1 conn "
        "| resolved | 16 conn | resolved |",
        "|---|---:|---|---:|---|",
    ]
    for row in [r for r in runs if r not in (BARE, DEFAULTS, UNCACHED)]:
        cells = [
            f"{spread(x)} | {verdict(x)}"
            for x in (ratios(runs, row, DEFAULTS, c) for c in CONNECTIONS)
        ]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    return lines


def against_target(values: list[float]) -> str:
    """Where repeat-by-repeat cost ratios fall against the target."""
    if max(values) <= TARGET:
        return "yes"
    return "no" if min(values) > TARGET else "not resolved"


def redis_cost(runs: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Redis's CPU and commands per hit of each row, against a plain GET two ways."""
    rows = [row for row, by_c in runs.items() if "redis_us" in by_c["1"][0]]

    def cost(row: str, c: str, same_client: bool) -> list[float]:
        """``row``'s Redis CPU per hit over the same-client GET's in the same repeat, or over
        that of the GETs sent back to back after each slice."""
        if same_client:
            return ratios(runs, row, SAME_CLIENT, c, "redis_us")
        return [r["redis_us"] / r["b2b_us"] for r in runs[row][c]]

    lines = [
        "| row (1 / 16 connections) | FCALLs per hit | other commands per hit | Redis CPU µs per "
        "hit | × a same-client GET | × a GET back to back | within 2x a same-client GET in "
        "every repeat |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        slices = runs[row]["1"] + runs[row]["16"]
        cells = [f"{median(r[k] for r in slices):.2f}" for k in ("fcalls", "commands")]
        per_c = [
            (
                spread([r["redis_us"] for r in runs[row][c]], "{:.1f}"),
                spread(cost(row, c, True)),
                spread(cost(row, c, False)),
                against_target(cost(row, c, True)),
            )
            for c in CONNECTIONS
        ]
        cells += [" / ".join(x) for x in zip(*per_c, strict=True)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    b2b = [spread([r["b2b_us"] for x in rows for r in runs[x][c]], "{:.1f}") for c in CONNECTIONS]
    paced = [spread(cost(SAME_CLIENT, c, False)) for c in CONNECTIONS]
    defaults = [cost(DEFAULTS, c, True) for c in CONNECTIONS]
    lines += [
        f"| plain GETs back to back (the bench's redis-py) | 0 | 1 | {' / '.join(b2b)} | | | |",
        "",
        f"**The defaults against the target** ({TARGET:g}x a plain GET of the same client): "
        f"{spread(defaults[0])} at 1 connection, {spread(defaults[1])} at 16; within "
        f"{TARGET:g}x in every repeat: {against_target(defaults[0])} / "
        f"{against_target(defaults[1])}. A GET paced by HTTP requests (the same-client row) cost "
        f"Redis {paced[0]} (1 connection) and {paced[1]} (16) times a GET sent back to back.",
    ]
    return lines


def writes(results: dict[str, list[dict]]) -> list[str]:
    """The write-cost table: one line per page count."""
    lines = [
        "| cached list pages of the user | keys in Redis | PATCH ms | Redis busy during the PATCH, µs "
        "| its longest command, µs | that command |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for pages, runs in results.items():
        cells = [
            f"{median(r['keys'] for r in runs):.0f}",
            spread([r["patch_ms"] for r in runs], "{:.1f}"),
            spread([r["redis_busy_us"] for r in runs], "{:.0f}"),
            spread([r["longest_us"] for r in runs], "{:.0f}"),
            ", ".join(sorted({r["longest"] for r in runs})),
        ]
        lines.append(f"| {pages} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole of results.md."""
    args, stampede, hung = results["args"], results["stampede"], results.get("hung")
    lines = [
        f"# Bench: {'smoke run (not a measurement)' if args['smoke'] else 'results'}",
        "",
        "What each table measures and how to read it: [benchmarks](../docs/benchmarks.md).",
        "",
        f"{results['date']}, commit {results['git']}, `bench/run` with {args['repeats']} repeats of "
        f"{args['seconds']:g} s slices per row and connection count; load average "
        f"{results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after the repeats "
        "(2 cores). Medians over the repeats; in brackets the min-max over the repeats.",
        "",
        "## Cached GET of one task (1 gunicorn worker)",
        "",
        *speed(results["throughput"]),
        "",
        "## Redis's cost of a hit",
        "",
        *redis_cost(results["throughput"]),
        "",
        f"While no row ran, Redis spent {results['idle'][0]:.0f} µs of CPU and ran "
        f"{results['idle'][1]:.1f} commands a second (its timer, the idle servers, one INFO): "
        "every row's figures include that.",
        "",
        f"## A write with 1 and with {args['pages']} cached list pages",
        "",
        *writes(results["writes"]),
        "",
        "## Cold-key stampede, Redis hung",
        "",
        f"- {args['stampede']} GETs at once on a task nobody has read, {len(stampede)} rounds: "
        f"database reads per round {[int(r['db_reads']) for r in stampede]}, 200 answers per "
        f"round {[r['ok'] for r in stampede]}.",
    ]
    if hung:
        lines.append(
            f"- Redis stopped (SIGSTOP) for {args['hung_seconds']} s under wrk at 16 connections "
            f"(rate limit off): {hung['requests']} answers, {hung['non_2xx_3xx']} non-2xx, "
            f"{hung['socket_errors']} socket errors or timeouts; latency p50 "
            f"{hung['p50_us'] / 1000:.1f} ms, p99 {hung['p99_us'] / 1000:.1f} ms, max "
            f"{hung['max_us'] / 1000:.1f} ms."
        )
    return "\n".join(lines) + "\n"


def for_docs(text: str) -> str:
    """results.md as docs/benchmarks.md holds it: from its figures on, headings a level down."""
    body = text.split("\n", 4)[4]
    return "\n".join("#" + x if x.startswith("## ") else x for x in body.splitlines())


def write(results: dict[str, Any], smoke: Path | None = None) -> None:
    """The tables into bench/results.md and docs/benchmarks.md (into ``smoke`` alone if given)."""
    text = markdown(results)
    if smoke is not None:
        smoke.write_text(text)
        return
    (ROOT / "bench" / "results.md").write_text(text)
    head, rest = DOCS.read_text().split(BEGIN)
    tail = rest.split(END)[1]
    DOCS.write_text(f"{head}{BEGIN}\n\n{for_docs(text)}\n\n{END}{tail}")
