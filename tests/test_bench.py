"""The bench's report: its tables from a run's results, and the docs holding what bench/run wrote."""

from __future__ import annotations

from bench import report


def one_slice(rps: float, redis_us: float | None = None) -> dict:
    """A wrk slice as the runner records it (Redis's cost only for rows that use Redis)."""
    found = {"rps": rps, "p50_us": 1000, "non_2xx_3xx": 0, "socket_errors": 0}
    if redis_us is not None:
        found |= {"redis_us": redis_us, "fcalls": 1.0, "commands": 5.0, "b2b_us": 10.0}
    return found


def results(defaults_us: list[float]) -> dict:
    """A run of 3 repeats: the defaults at ``defaults_us`` of Redis CPU per hit, a GET at 20."""

    def row(rps: float, redis_us: list[float] | None = None) -> dict:
        us = redis_us or [None] * 3
        return {c: [one_slice(rps, x) for x in us] for c in report.CONNECTIONS}

    runs = {
        report.BARE: row(1000),
        report.DEFAULTS: row(1100, defaults_us),
        report.SAME_CLIENT: row(1200, [20.0] * 3),
        report.UNCACHED: row(10),
    }
    args = {"smoke": False, "repeats": 3, "seconds": 2, "pages": 5000, "stampede": 100}
    write = {"keys": 9, "patch_ms": 7.0, "redis_busy_us": 300, "longest_us": 100}
    return {
        "args": args | {"write_repeats": 1, "hung_seconds": 0},
        "date": "today",
        "git": "abc",
        "load_before": [1.0],
        "load_after": [1.0],
        "idle": [1000.0, 5.0],
        "throughput": runs,
        "writes": {"1": [write | {"longest": "FCALL invalidate"}]},
        "stampede": [{"db_reads": 1.0, "ok": 100}],
    }


def cost_row(text: str) -> str:
    """The defaults' line of the Redis cost table."""
    return next(x for x in text.splitlines() if x.startswith(f"| {report.DEFAULTS} | 1.00 | 5.00"))


def test_report_sets_the_defaults_against_a_same_client_get_repeat_by_repeat() -> None:
    text = report.markdown(results([36.0, 40.0, 44.0]))
    row = cost_row(text)
    assert "| 2.00 (1.80-2.20) / 2.00 (1.80-2.20) |" in row  # × the same-client GET
    assert "| 4.00 (3.60-4.40) / 4.00 (3.60-4.40) |" in row  # × a GET back to back
    assert row.endswith("| not resolved / not resolved |")
    assert "| 1.10 (1.10-1.10) |" in text  # speed, × bare Flask
    assert cost_row(report.markdown(results([30.0, 34.0, 38.0]))).endswith("| yes / yes |")
    assert cost_row(report.markdown(results([41.0, 42.0, 50.0]))).endswith("| no / no |")


def test_docs_hold_the_tables_bench_run_last_wrote() -> None:
    written = report.for_docs((report.ROOT / "bench" / "results.md").read_text())
    docs = report.DOCS.read_text()
    assert docs.count(report.BEGIN) == docs.count(report.END) == 1
    assert docs.split(report.BEGIN)[1].split(report.END)[0].strip() == written.strip()
