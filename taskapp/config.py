"""Settings: read from the environment in one place, converted and validated at start-up."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Callable
from typing import Any

import click

from taskapp.cache import SETTINGS as CACHE_SETTINGS
from taskapp.cache import boolean, choice, int_at_least, seconds

EMBEDDED_MONGODB = "mongomock://"
EMBEDDED_REDIS = "memory://"
log = logging.getLogger("taskapp.config")

#: The shortest SECRET_KEY (in UTF-8 bytes) the app signs tokens with outside the embedded mode:
#: the 256 bits of HS256's own output, as RFC 7518 (3.2) asks of its key.
MIN_SECRET_KEY_BYTES = 32

# The most MongoDB reads one cache fill makes (a page: its items and its count; the stats: two
# aggregations), each delayed by SIMULATED_DB_LATENCY_MS. A request's MongoDB time is
# MONGODB_TIMEOUT_MS in all, so a fill takes at most that plus this many delays: the longest a
# caller waits for another caller's fill (CACHE_FILL_TIMEOUT), a wait that counts as its own
# MongoDB time.
FILL_READS = 2
# A write-behind apply is one MongoDB update, bounded by MONGODB_TIMEOUT_MS on the client's
# side; MongoDB may still run it a while after the flusher gave up waiting. The flusher's lease
# on the task (WRITE_BEHIND_APPLY_LEASE_MS) outlives it by this factor, so no other flusher
# applies the task meanwhile.
APPLY_LEASE_TIMEOUTS = 3
APPLY_LEASE_MIN_MS = 100  # the lease's floor (the cache's setting refuses less)


def _email_list(raw: str) -> list[str]:
    return [email.strip().lower() for email in raw.split(",") if email.strip()]


_ORIGIN = re.compile(r"https?://[^/\s?#@,]+")


def _origin(raw: str) -> str:
    origin = raw.strip().rstrip("/").lower()
    if not _ORIGIN.fullmatch(origin):
        raise ValueError(f"{raw.strip()!r} is not an origin like https://app.example.com")
    return origin


def _origin_list(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    return [_origin(item) for item in items if item.strip()]


# name -> (default, conversion from the environment's string): the cache extension's own table
# (one place for its defaults), with taskapp's prefix, then the app's settings.
SETTINGS: dict[str, tuple[Any, Callable[[str], Any]]] = {
    **CACHE_SETTINGS,
    "CACHE_KEY_PREFIX": ("taskapp:", str),
    "MONGODB_URI": ("mongomock://localhost/taskapp", str),
    "MONGODB_TIMEOUT_MS": (3000, int_at_least(1)),
    # Unset: derived from MONGODB_TIMEOUT_MS in _validate (see FILL_READS).
    "CACHE_FILL_TIMEOUT": (None, seconds),
    # Unset: derived from MONGODB_TIMEOUT_MS in _validate (see APPLY_LEASE_TIMEOUTS).
    "WRITE_BEHIND_APPLY_LEASE_MS": (None, int_at_least(100)),
    "SECRET_KEY": (None, str),
    "ADMIN_EMAILS": ([], _email_list),
    "CORS_ORIGINS": ([], _origin_list),
    "TASK_CACHE_TTL": (60, int_at_least(1)),
    "TASK_LIST_CACHE_TTL": (30, int_at_least(1)),
    "HTTP_CACHE_TTL": (30, int_at_least(1)),
    # Answer response-cache hits in a WSGI layer before Flask's dispatch (taskapp.fastpath);
    # off sends every request through Flask (same answers, slower hits).
    "HTTP_FAST_PATH": (True, boolean),
    "TASK_READ_STRATEGY": (
        "cache-aside",
        choice("cache-aside", "read-through", "refresh-ahead"),
    ),
    "TASK_WRITE_STRATEGY": ("invalidate", choice("invalidate", "write-through", "write-behind")),
    "RATE_LIMIT_PER_MINUTE": (600, int_at_least(0)),
    "LOGIN_RATE_LIMIT_PER_MINUTE": (10, int_at_least(0)),
    "REGISTER_RATE_LIMIT_PER_MINUTE": (10, int_at_least(0)),
    "TRUSTED_PROXIES": (0, int_at_least(0)),
    "SIMULATED_DB_LATENCY_MS": (0, int_at_least(0)),
    "ACCESS_TOKEN_TTL": (900, int_at_least(60)),
    "REFRESH_TOKEN_TTL": (1209600, int_at_least(60)),
    # Requests per client address and minute that carry no valid token (0: off).
    "ANON_RATE_LIMIT_PER_MINUTE": (120, int_at_least(0)),
    "MAX_CONTENT_LENGTH": (64 * 1024, int_at_least(1024)),
    "NEGATIVE_CACHE_TTL": (5, int_at_least(1)),
    # 1: allow write-behind on a Redis that loses what it acknowledged in a crash.
    "WRITE_BEHIND_ALLOW_VOLATILE": (False, boolean),
    # json: one JSON object per log line (taskapp.logs), each with its request id.
    "LOG_FORMAT": ("text", choice("text", "json")),
}


class ConfigError(click.ClickException, RuntimeError):
    """A setting is missing or has a value the app cannot use.

    A ``ClickException``, so ``flask --app taskapp ...`` prints it as one line and exits 1.
    """


def load(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return every setting: defaults, then the environment, then ``overrides``, validated."""
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    for name, (default, convert) in SETTINGS.items():
        if name in overrides:
            raw = overrides.pop(name)
        elif name in os.environ:
            raw = os.environ[name]
        else:
            values[name] = default
            continue
        values[name] = _convert(name, raw, convert)
    values.update(overrides)  # other Flask / Flask-Caching keys pass through untouched
    _validate(values)
    return values


def _convert(name: str, raw: Any, convert: Callable[[str], Any]) -> Any:
    if not isinstance(raw, str):
        return raw  # create_app(config) may pass typed values
    try:
        return convert(raw)
    except ValueError as exc:
        raise ConfigError(f"setting {name}={raw!r} is invalid: {exc}") from None


def _validate(values: dict[str, Any]) -> None:
    if values["CACHE_FILL_TIMEOUT"] is None:
        delays_ms = FILL_READS * values["SIMULATED_DB_LATENCY_MS"]
        values["CACHE_FILL_TIMEOUT"] = (values["MONGODB_TIMEOUT_MS"] + delays_ms) / 1000
    if values["WRITE_BEHIND_APPLY_LEASE_MS"] is None:
        values["WRITE_BEHIND_APPLY_LEASE_MS"] = max(
            APPLY_LEASE_MIN_MS, APPLY_LEASE_TIMEOUTS * values["MONGODB_TIMEOUT_MS"]
        )
    redis_url = values["REDIS_URL"]
    if not redis_url.startswith((EMBEDDED_REDIS, "redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"setting REDIS_URL={redis_url!r} is invalid: use redis://, rediss://, unix:// or memory://"
        )
    mongo_uri = values["MONGODB_URI"]
    if not mongo_uri.startswith((EMBEDDED_MONGODB, "mongodb://", "mongodb+srv://")):
        raise ConfigError(
            f"setting MONGODB_URI={mongo_uri!r} is invalid: use mongodb://, mongodb+srv:// "
            "or mongomock://"
        )
    if values["REDIS_CLUSTER"] and redis_url.startswith(EMBEDDED_REDIS):
        raise ConfigError("setting REDIS_CLUSTER=1 needs a real REDIS_URL, not memory://")
    if values["REDIS_CLUSTER"] and values["TASK_WRITE_STRATEGY"] == "write-behind":
        raise ConfigError(
            "setting TASK_WRITE_STRATEGY=write-behind is not supported with REDIS_CLUSTER=1 "
            "(its stream and pending states are updated together in one script)"
        )
    real_backend = not redis_url.startswith(EMBEDDED_REDIS) or not mongo_uri.startswith(
        EMBEDDED_MONGODB
    )
    if not values["SECRET_KEY"]:
        if real_backend:
            raise ConfigError(
                "setting SECRET_KEY is required when a real Redis or MongoDB is configured"
            )
        values["SECRET_KEY"] = secrets.token_urlsafe(32)
    elif real_backend:
        _check_secret_key(values["SECRET_KEY"])
    try:  # again for a list passed to create_app(config)
        values["CORS_ORIGINS"] = _origin_list(values["CORS_ORIGINS"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"setting CORS_ORIGINS is invalid: {exc}") from None
    prefix = values["CACHE_KEY_PREFIX"]
    if not prefix or any(c in prefix for c in "{}* ?"):
        raise ConfigError(
            f"setting CACHE_KEY_PREFIX={prefix!r} is invalid: non-empty, without braces, "
            "spaces or glob characters"
        )


def _check_secret_key(key: str | bytes) -> None:
    """Refuse a SECRET_KEY shorter than MIN_SECRET_KEY_BYTES (a short key can be guessed offline
    from one token); its value is never printed."""
    size = len(key.encode() if isinstance(key, str) else key)
    if size < MIN_SECRET_KEY_BYTES:
        raise ConfigError(
            f"setting SECRET_KEY is too short ({size} bytes): use at least "
            f"{MIN_SECRET_KEY_BYTES} random bytes when a real Redis or MongoDB is configured, "
            "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def check_redis(values: dict[str, Any]) -> None:
    """Check the configured Redis before serving (``taskapp.cache.preflight``): a refusal (a
    wrong password, a missing permission, no appendonly under write-behind) stops start-up with
    one line; a Redis that is down only logs a warning."""
    from taskapp.cache import CacheSettings, RedisRefused, check_server

    durable = (
        values["TASK_WRITE_STRATEGY"] == "write-behind"
        and not values["WRITE_BEHIND_ALLOW_VOLATILE"]
    )
    try:
        check_server(CacheSettings.from_config(dict(values)), durable=durable)
    except RedisRefused as exc:
        raise ConfigError(str(exc)) from None
