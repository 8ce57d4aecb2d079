"""The ``flask ... cache`` commands: the extension's own keys and statistics, seen from outside.

``RedisCache.init_app`` registers the group (``RedisCache.cli``, one per extension object, so an
app can add commands of its own to it). Every command runs inside an app context and uses the
app's raw Redis client; a Redis failure ends it with one line naming the (password-redacted)
URL, never a traceback, and the embedded ``memory://`` Redis, which lives inside another process,
is refused in one line.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import redis
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from taskapp.cache import stats
from taskapp.cache.client import REDIS_ERRORS, redacted
from taskapp.cache.entry import Entry, stored_payload
from taskapp.cache.state import CacheState, state_of

F = TypeVar("F", bound=Callable[..., Any])

EMBEDDED_REDIS = "memory://"
DELETE_BATCH = 500  # keys per UNLINK: big enough to be quick, small enough not to block Redis
LIST_PREVIEW = 50  # items of a list, set or stream shown by `cache get`


def command_group() -> AppGroup:
    """A ``cache`` command group holding the extension's commands."""
    group = AppGroup("cache", help="Inspect and manage the Redis cache.")
    # Commands made outside the group: each runs in an app context by ``with_appcontext``.
    for command in (cache_stats, cache_keys, cache_get, cache_ttl, cache_tags):
        group.add_command(command)
    group.add_command(cache_invalidate)
    group.add_command(cache_flush)
    return group


# -- what every command is wrapped in -------------------------------------------------------


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def redis_command(fn: F) -> F:
    """Turn a Redis failure inside the command into one line (the URL without its password) and
    exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            url = redacted(current_app.config["REDIS_URL"])
            raise click.ClickException(f"Redis unreachable at {url}: {_reason(exc)}") from None

    return wrapper  # type: ignore[return-value]


def shared_redis(fn: F) -> F:
    """Refuse to run on the embedded ``memory://`` Redis: a command would only ever see an empty
    Redis of its own, not the app's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value = current_app.config["REDIS_URL"]
        if value.startswith(EMBEDDED_REDIS):
            raise click.ClickException(
                f"REDIS_URL={value} is an in-process Redis this command would have to itself; "
                "set REDIS_URL to the server the app uses"
            )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# -- helpers --------------------------------------------------------------------------------


def _state() -> CacheState:
    return state_of(current_app)


def _client() -> Any:
    """The raw Redis client, checked to answer (so a dead server fails here, loudly)."""
    client = _state().store.client
    client.ping()
    return client


def _prefix() -> str:
    return _state().keys.prefix


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _json(raw: Any) -> Any:
    """Parsed JSON when ``raw`` is JSON, else its text."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return _text(raw)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _when(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC plus how far from now it is."""
    at = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    delta = epoch - time.time()
    relative = f"in {delta:.1f}s" if delta >= 0 else f"{-delta:.1f}s ago"
    return f"{at.replace('+00:00', 'Z')} ({relative})"


def _ttl_text(pttl: int) -> str:
    return "no expiry" if pttl == -1 else f"{pttl / 1000:.3f}s"


def _exists(client: Any, full_key: str, key: str) -> str:
    """The Redis type of ``full_key``; ClickException when there is no such key."""
    kind = _text(client.type(full_key))
    if kind == "none":
        raise click.ClickException(f"no such key: {key}")
    return kind


# -- statistics -----------------------------------------------------------------------------


def _ratio(hits: int, misses: int) -> str:
    ratio = stats.hit_ratio(hits, misses)
    return "-" if ratio is None else f"{ratio:.1%}"


def _layer_rows(counts: stats.Counts, fam: str | None) -> Iterable[tuple[str, int, int]]:
    for layer in stats.LAYERS:
        hit, miss = counts.get(f"{layer}.hit", {}), counts.get(f"{layer}.miss", {})
        if fam is None:
            yield layer, sum(hit.values()), sum(miss.values())
        elif hit.get(fam) or miss.get(fam):
            yield layer, hit.get(fam, 0), miss.get(fam, 0)


def _echo_layers(counts: stats.Counts) -> None:
    click.echo(f"{'layer':<8}{'hits':>12}{'misses':>12}{'hit ratio':>12}")
    for layer, hits, misses in _layer_rows(counts, None):
        click.echo(f"{layer:<8}{hits:>12}{misses:>12}{_ratio(hits, misses):>12}")


def _echo_families(counts: stats.Counts) -> None:
    rows = [(f, *row) for f in stats.families(counts) for row in _layer_rows(counts, f)]
    if not rows:
        return
    click.echo(f"\n{'family':<12}{'layer':<8}{'hits':>12}{'misses':>12}{'hit ratio':>12}")
    for fam, layer, hits, misses in rows:
        click.echo(f"{fam:<12}{layer:<8}{hits:>12}{misses:>12}{_ratio(hits, misses):>12}")


def _echo_events(counts: stats.Counts) -> None:
    click.echo("")
    for label, event in (
        ("lock waits", stats.LOCK_WAIT),
        ("errors", stats.ERROR),
        ("stale served", stats.STALE_SERVED),
    ):
        click.echo(f"{label + ':':<16}{stats.total(counts, event)}")


def _memory_used(client: Any) -> str:
    """INFO memory used_memory_human (summed over the primaries of a cluster); "unknown" when
    the Redis user may not run INFO (a least-privilege user)."""
    primaries = getattr(client, "PRIMARIES", None)  # only RedisCluster has it
    try:
        info = client.info("memory", target_nodes=primaries) if primaries else client.info("memory")
    except redis.exceptions.NoPermissionError:
        return "unknown (the Redis user may not run INFO)"
    if "used_memory_human" in info:
        return str(info["used_memory_human"])
    nodes = [node for node in info.values() if isinstance(node, dict)]
    total = sum(int(node.get("used_memory", 0)) for node in nodes)
    return f"{total / 1024 / 1024:.2f}M over {len(nodes)} primaries"


def _echo_keys_and_memory(client: Any) -> None:
    by_family = stats.KeysByFamily(client, _prefix()).count()
    click.echo(f"\nkeys: {sum(by_family.values())}")
    for fam, number in sorted(by_family.items()):
        click.echo(f"  {fam:<14}{number:>10}")
    click.echo(f"redis memory used: {_memory_used(client)}")


def _echo_local(client: Any, hash_key: str) -> None:
    stats.prune_gauges(client, hash_key)
    sizes = stats.read_gauges(client, hash_key).get(stats.L1_SIZE, {})
    reported = "none reported"
    if sizes:
        reported = f"{int(sum(sizes.values()))} entries in {len(sizes)} processes"
    click.echo(f"in-process layer: {reported} (this process: {len(_state().l1)})")


@click.command("stats")
@click.option("--reset", is_flag=True, help="Zero the shared counters after showing them.")
@with_appcontext
@redis_command
@shared_redis
def cache_stats(reset: bool) -> None:
    """Hits, misses and hit ratio per layer and key family; keys, memory, errors."""
    client = _client()
    hash_key = _prefix() + "stats"
    counts = stats.read(client, hash_key)
    _echo_layers(counts)
    _echo_families(counts)
    _echo_events(counts)
    _echo_keys_and_memory(client)
    _echo_local(client, hash_key)
    if reset:
        client.delete(hash_key)
        click.echo("counters reset")


# -- inspection -----------------------------------------------------------------------------


@click.command("keys")
@click.argument("pattern", default="*")
@with_appcontext
@redis_command
@shared_redis
def cache_keys(pattern: str) -> None:
    """List keys of this app matching PATTERN (a glob after the prefix), with SCAN."""
    client, prefix = _client(), _prefix()
    for key in stats.scan_prefix(client, prefix, pattern):
        click.echo(_text(key)[len(prefix) :])


def _echo_entry(raw: bytes, pttl: int) -> bool:
    """Print a cache entry; False when ``raw`` is not one."""
    try:
        entry = Entry.decode(stored_payload(raw))
        value = entry.value
    except (ValueError, KeyError, TypeError):
        return False
    click.echo(_pretty(value))
    state = "fresh" if entry.is_fresh() else "stale"
    click.echo(f"ttl: {_ttl_text(pttl)}, {state} until {_when(entry.expires_at)}")
    click.echo(f"tags: {', '.join(entry.tags) if entry.tags else '(none)'}")
    click.echo(f"fetch took: {entry.fetch_seconds:.4f}s")
    if entry.meta:
        click.echo(f"meta: {json.dumps(entry.meta)}")
    return True


def _contents(client: Any, full_key: str, kind: str) -> Any:
    """A JSON-able view of a non-entry key of ``kind`` (first LIST_PREVIEW items of big ones)."""
    if kind == "string":
        return _json(client.get(full_key))
    if kind == "list":
        return [_json(item) for item in client.lrange(full_key, 0, LIST_PREVIEW - 1)]
    if kind == "zset":
        members = client.zrange(full_key, 0, LIST_PREVIEW - 1, withscores=True)
        return [{"member": _text(m), "score": s} for m, s in members]
    if kind == "hash":
        return {_text(f): _json(v) for f, v in sorted(client.hgetall(full_key).items())}
    if kind == "set":
        return sorted(_text(m) for m in client.sscan_iter(full_key, count=1000))[:LIST_PREVIEW]
    if kind == "stream":
        return [
            {"id": _text(i), "fields": {_text(f): _text(v) for f, v in fields.items()}}
            for i, fields in client.xrange(full_key, count=LIST_PREVIEW)
        ]
    return f"(a {kind}; not shown)"


def _size(client: Any, full_key: str, kind: str) -> int | None:
    sizes = {
        "list": client.llen,
        "zset": client.zcard,
        "hash": client.hlen,
        "set": client.scard,
        "stream": client.xlen,
    }
    return sizes[kind](full_key) if kind in sizes else None


@click.command("get")
@click.argument("key")
@with_appcontext
@redis_command
@shared_redis
def cache_get(key: str) -> None:
    """Show a key: a cache entry's value, TTL and tags, or any other key's type and contents."""
    client = _client()
    full_key = _prefix() + key
    kind = _exists(client, full_key, key)
    pttl = client.pttl(full_key)
    if kind == "string" and _echo_entry(client.get(full_key), pttl):
        return
    size = _size(client, full_key, kind)
    click.echo(f"type: {kind}" + (f" ({size} items)" if size is not None else ""))
    click.echo(f"ttl: {_ttl_text(pttl)}")
    click.echo(_pretty(_contents(client, full_key, kind)))


@click.command("ttl")
@click.argument("key")
@with_appcontext
@redis_command
@shared_redis
def cache_ttl(key: str) -> None:
    """Show how long a key stays in Redis (and, for an entry, how long it stays fresh)."""
    client = _client()
    full_key = _prefix() + key
    kind = _exists(client, full_key, key)
    click.echo(_ttl_text(client.pttl(full_key)))
    if kind == "string":
        try:
            entry = Entry.decode(stored_payload(client.get(full_key) or b""))
        except (ValueError, KeyError, TypeError):
            return
        left = entry.expires_at - time.time()
        click.echo(f"fresh for {left:.3f}s" if left > 0 else f"stale for {-left:.3f}s")


@click.command("tags")
@click.argument("tag")
@with_appcontext
@redis_command
@shared_redis
def cache_tags(tag: str) -> None:
    """Show the tag's version: entries stored under another version of it are never served."""
    version = _client().get(_state().keys.tag_version(tag))
    click.echo(f"tag {tag}: version {_text(version) if version is not None else '(none yet)'}")


# -- changes --------------------------------------------------------------------------------


@click.command("invalidate")
@click.argument("tags", nargs=-1, required=True)
@with_appcontext
@redis_command
@shared_redis
def cache_invalidate(tags: tuple[str, ...]) -> None:
    """Remove every entry stored with any of TAGS, in every process."""
    _client()  # fail loudly: the extension would only hold the tags back for a replay
    count = _state().region.invalidate_tags(list(tags), None)
    click.echo(f"invalidated {count} {'tag' if count == 1 else 'tags'}")


def _unlink_batch(client: Any, batch: list[bytes]) -> int:
    """UNLINK a batch (every process's memory layer then finds its scope versions gone)."""
    return int(client.unlink(*batch))


@click.command("flush")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@redis_command
@shared_redis
def cache_flush(yes: bool) -> None:
    """Delete every key of this app's prefix (and nothing else), with SCAN and UNLINK.

    Write-behind changes not yet in their source are kept: they are data, not cache.
    """
    client, prefix = _client(), _prefix()
    kept = _state().write_behind().prefix_of_queue
    where = redacted(current_app.config["REDIS_URL"])
    if not yes:
        click.confirm(f"Delete every key with prefix {prefix!r} at {where}?", abort=True)
    removed, batch = 0, []
    for key in stats.scan_prefix(client, prefix):
        if key.decode().startswith(kept):
            continue
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            removed, batch = removed + _unlink_batch(client, batch), []
    if batch:
        removed += _unlink_batch(client, batch)
    _state().l1.clear()
    click.echo(f"deleted {removed} keys with prefix {prefix!r}")
