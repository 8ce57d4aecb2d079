"""Prometheus metrics of the cache (names are part of the contract)."""

from prometheus_client import Counter, Histogram

CACHE_REQUESTS = Counter(
    "taskapp_cache_requests_total", "Cache lookups by layer and result", ["layer", "result"]
)
CACHE_LOCK_WAITS = Counter(
    "taskapp_cache_lock_waits_total", "Callers that waited for another caller's fill"
)
CACHE_ERRORS = Counter(
    "taskapp_cache_errors_total", "Redis operations that failed (the request was still served)"
)
CACHE_STALE_SERVED = Counter(
    "taskapp_cache_stale_served_total", "Expired entries served while one caller refreshed them"
)
CACHE_FILLS = Counter(
    "taskapp_cache_fills_total", "Fetches from the source by result of storing them", ["result"]
)
WRITE_BEHIND_RESTARTS = Counter(
    "taskapp_write_behind_restarts_total",
    "Write-behind flusher restarts after a failure (Redis or the apply function)",
)
WRITE_BEHIND_DEAD_LETTERS = Counter(
    "taskapp_write_behind_dead_letters_total",
    "Write-behind changes moved to the dead-letter stream (applied and refused too often, or "
    "unreadable)",
)
CACHE_OP_SECONDS = Histogram(
    "taskapp_cache_operation_seconds",
    "Latency of cache operations",
    ["op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

L1_HIT = CACHE_REQUESTS.labels("l1", "hit")
L1_MISS = CACHE_REQUESTS.labels("l1", "miss")
REDIS_HIT = CACHE_REQUESTS.labels("redis", "hit")
REDIS_MISS = CACHE_REQUESTS.labels("redis", "miss")
HTTP_HIT = CACHE_REQUESTS.labels("http", "hit")
HTTP_MISS = CACHE_REQUESTS.labels("http", "miss")
