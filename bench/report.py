"""``bench/results.md`` from the runner's results: medians over repeats, with their spread."""

from __future__ import annotations

from statistics import median
from typing import Any

CONNECTIONS = ("1", "16")


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``."""
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratios(runs: dict, row: str, reference: str, c: str) -> list[float]:
    """Req/s of ``row`` over ``reference``, repeat by repeat (both ran in the same repeat)."""
    return [a["rps"] / b["rps"] for a, b in zip(runs[row][c], runs[reference][c], strict=True)]


def verdict(values: list[float]) -> str:
    """What a row's repeat-by-repeat ratios to the defaults resolve."""
    if max(values) <= 0.95 or min(values) >= 1.05:
        return "yes, 5% or more"
    if max(values) < 1 or min(values) > 1:
        return "yes, under 5% in some repeat"
    return "no"


def throughput(runs: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The rows' table, what the run resolves, and each setting against the defaults."""
    bare, defaults = list(runs)[0], list(runs)[2]
    lines = [
        "| row | req/s, 1 conn | × bare Flask, 1 conn | req/s, 16 conn | × bare Flask, 16 conn | p50 ms, 1 conn |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row, by_c in runs.items():
        cells = []
        for c in CONNECTIONS:
            cells += [
                f"{median(r['rps'] for r in by_c[c]):.0f}",
                spread(ratios(runs, row, bare, c)),
            ]
        cells.append(f"{median(r['p50_us'] for r in by_c['1']) / 1000:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    failed = sum(
        r["non_2xx_3xx"] + r["socket_errors"]
        for by_c in runs.values()
        for c in by_c.values()
        for r in c
    )
    noise = [
        (max(r["rps"] for r in runs[bare][c]) - min(r["rps"] for r in runs[bare][c]))
        / median(r["rps"] for r in runs[bare][c])
        for c in CONNECTIONS
    ]
    lines += [
        "",
        f"Failed answers (non-2xx or socket errors) in every slice: {failed}.",
        "",
        f"**What this run resolves:** bare Flask's own req/s moved by {noise[0]:.0%} (1 connection) "
        f"and {noise[1]:.0%} (16 connections) from its slowest to its fastest repeat. A difference "
        "between two rows smaller than that, or inside a row's min-max range of ratios, is not "
        "resolved by this run. Below, each setting against the defaults, repeat by repeat: "
        "resolved when every repeat falls on the same side of 1 (two rows that do not differ "
        f"would still do so {2 * 0.5 ** len(runs[bare]['1']):.0%} of the time with "
        f"{len(runs[bare]['1'])} repeats).",
        "",
        "| row ÷ the defaults, same repeat (under 1: the defaults are faster) | 1 conn "
        "| resolved | 16 conn | resolved |",
        "|---|---:|---|---:|---|",
    ]
    for row in [r for r in list(runs)[3:] if "uncached" not in r]:
        cells = []
        for c in CONNECTIONS:
            values = ratios(runs, row, defaults, c)
            cells += [spread(values), verdict(values)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
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
    args = results["args"]
    title = "Smoke run (not a measurement)" if args["smoke"] else "Results"
    stampede = results["stampede"]
    lines = [
        f"# Bench: {title}",
        "",
        f"{results['date']}, commit {results['git']}, `bench/run` with {args['repeats']} repeats of "
        f"{args['seconds']:g} s slices per row and connection count; load average "
        f"{results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after the repeats. "
        "Medians over the repeats; in brackets the min-max over the repeats.",
        "",
        "## Cached GET of one task (1 gunicorn worker)",
        "",
        *throughput(results["throughput"]),
        "",
        "## A write with 1 and with many cached list pages",
        "",
        f"One user, one task; before each PATCH the user's list is read with that many distinct "
        f"`due_before` values; PATCHes per page count: {args['write_repeats']}, the counts alternating. Redis "
        "times from `SLOWLOG` (every command logged during the PATCH).",
        "",
        *writes(results["writes"]),
        "",
        "## Cold-key stampede",
        "",
        f"{args['stampede']} GETs released at once on a task nobody has read (50 ms database "
        f"reads), {len(stampede)} rounds: database reads per round "
        f"{[int(r['db_reads']) for r in stampede]}, 200 answers per round {[r['ok'] for r in stampede]}.",
    ]
    if "hung" in results:
        hung = results["hung"]
        uncached = list(results["throughput"].values())[-1]["16"]
        lines += [
            "",
            "## Redis hung",
            "",
            f"The bench's redis-server stopped (SIGSTOP) for {args['hung_seconds']} s under wrk at 16 "
            f"connections (taskapp, rate limit off): {hung['requests']} answers, "
            f"{hung['non_2xx_3xx']} non-2xx, {hung['socket_errors']} socket errors or timeouts, p50 "
            f"{hung['p50_us'] / 1000:.1f} ms, p99 {hung['p99_us'] / 1000:.1f} ms, max "
            f"{hung['max_us'] / 1000:.1f} ms (its uncached read at 16 connections above: p50 "
            f"{median(r['p50_us'] for r in uncached) / 1000:.1f} ms).",
        ]
    return "\n".join(lines) + "\n"
