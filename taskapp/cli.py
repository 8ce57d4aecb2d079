"""Command-line tools: ``flask --app taskapp users ...`` and ``flask --app taskapp cache ...``.

Every command runs inside an app context (Flask's ``AppGroup``). Inspection commands use the
cache's raw Redis client; a Redis or MongoDB failure anywhere in a command ends it with one line
naming the (password-redacted) URL, never a traceback.
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
from flask import Flask, current_app
from flask.cli import AppGroup
from pydantic import ValidationError
from pymongo.errors import PyMongoError
from werkzeug.exceptions import Conflict

from taskapp.auth.schemas import Registration
from taskapp.auth.service import find_user_by_email, register, set_role
from taskapp.cache import stats as cache_stats
from taskapp.cache.client import REDIS_ERRORS, redacted
from taskapp.cache.entry import Entry, stored_payload
from taskapp.config import EMBEDDED_MONGODB, EMBEDDED_REDIS
from taskapp.extensions import cache
from taskapp.models import ROLES
from taskapp.tasks import service as task_service
from taskapp.tasks.schemas import ListQuery

F = TypeVar("F", bound=Callable[..., Any])

DELETE_BATCH = 500  # keys per UNLINK: big enough to be quick, small enough not to block Redis
WARM_PAGES = 3
WARM_PER_PAGE = 10
LIST_PREVIEW = 50  # items of a list, set or stream shown by `cache get`

users_cli = AppGroup("users", help="Manage accounts.")
cache_cli = AppGroup("cache", help="Inspect and manage the Redis cache.")
write_behind_cli = AppGroup("write-behind", help="Run and watch the write-behind flusher.")


def init_app(app: Flask) -> None:
    """Register the ``users``, ``cache`` and ``write-behind`` command groups."""
    app.cli.add_command(users_cli)
    app.cli.add_command(cache_cli)
    app.cli.add_command(write_behind_cli)


# -- helpers --------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def backend_command(fn: F) -> F:
    """Turn a Redis or MongoDB failure inside the command into one line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            url = redacted(current_app.config["REDIS_URL"])
            raise click.ClickException(f"Redis unreachable at {url}: {_reason(exc)}") from None
        except PyMongoError as exc:
            url = redacted(current_app.config["MONGODB_URI"])
            raise click.ClickException(f"MongoDB failed at {url}: {_reason(exc)}") from None

    return wrapper  # type: ignore[return-value]


_EMBEDDED_REASONS = {
    "MONGODB_URI": (EMBEDDED_MONGODB, "an in-process MongoDB that would die with this command"),
    "REDIS_URL": (EMBEDDED_REDIS, "an in-process Redis this command would have to itself"),
}


def shared_backends(*settings: str) -> Callable[[F], F]:
    """Refuse to run on an embedded backend: its data lives inside one process, not this one's.

    ``flask --app taskapp users create`` on ``mongomock://`` would report success into a database
    that is gone when the command exits; a cache command on ``memory://`` would only ever see an
    empty Redis of its own.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name in settings:
                scheme, reason = _EMBEDDED_REASONS[name]
                value = current_app.config[name]
                if value.startswith(scheme):
                    raise click.ClickException(
                        f"{name}={value} is {reason}; set {name} to the server the app uses"
                    )
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _client() -> Any:
    """The raw Redis client, checked to answer (so a dead server fails here, loudly)."""
    client = cache.client
    client.ping()
    return client


def _prefix() -> str:
    return cache.keys.prefix


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


def _user_by_email(email: str) -> Any:
    user = find_user_by_email(email)
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


# -- users ----------------------------------------------------------------------------------


@users_cli.command("create")
@click.argument("email")
@click.option(
    "--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Asked if omitted."
)
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@backend_command
@shared_backends("MONGODB_URI")
def users_create(email: str, password: str, role: str) -> None:
    """Create an account."""
    try:
        valid = Registration(email=email, password=password)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise click.BadParameter(error["msg"], param_hint=str(error["loc"][0])) from None
    try:
        user = register(valid.email, valid.password, role=role)
    except Conflict:
        raise click.ClickException(f"an account with email {valid.email} already exists") from None
    click.echo(f"created {user.email} (id {user.id}, role {user.role})")


@users_cli.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@backend_command
@shared_backends("MONGODB_URI")
def users_set_role(email: str, role: str) -> None:
    """Give an account a role (effective on its next request)."""
    user = set_role(str(_user_by_email(email).id), role)
    if user is None:  # deleted between the lookup and the update
        raise click.ClickException(f"no user with email {email}")
    click.echo(f"{user.email} is now {user.role}")


# -- cache: statistics ----------------------------------------------------------------------


def _ratio(hits: int, misses: int) -> str:
    ratio = cache_stats.hit_ratio(hits, misses)
    return "-" if ratio is None else f"{ratio:.1%}"


def _layer_rows(counts: cache_stats.Counts, fam: str | None) -> Iterable[tuple[str, int, int]]:
    for layer in cache_stats.LAYERS:
        hit, miss = counts.get(f"{layer}.hit", {}), counts.get(f"{layer}.miss", {})
        if fam is None:
            yield layer, sum(hit.values()), sum(miss.values())
        elif hit.get(fam) or miss.get(fam):
            yield layer, hit.get(fam, 0), miss.get(fam, 0)


def _echo_layers(counts: cache_stats.Counts) -> None:
    click.echo(f"{'layer':<8}{'hits':>12}{'misses':>12}{'hit ratio':>12}")
    for layer, hits, misses in _layer_rows(counts, None):
        click.echo(f"{layer:<8}{hits:>12}{misses:>12}{_ratio(hits, misses):>12}")


def _echo_families(counts: cache_stats.Counts) -> None:
    rows = [(f, *row) for f in cache_stats.families(counts) for row in _layer_rows(counts, f)]
    if not rows:
        return
    click.echo(f"\n{'family':<12}{'layer':<8}{'hits':>12}{'misses':>12}{'hit ratio':>12}")
    for fam, layer, hits, misses in rows:
        click.echo(f"{fam:<12}{layer:<8}{hits:>12}{misses:>12}{_ratio(hits, misses):>12}")


def _echo_events(counts: cache_stats.Counts) -> None:
    click.echo("")
    for label, event in (
        ("lock waits", cache_stats.LOCK_WAIT),
        ("errors", cache_stats.ERROR),
        ("stale served", cache_stats.STALE_SERVED),
    ):
        click.echo(f"{label + ':':<16}{cache_stats.total(counts, event)}")


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
    by_family = cache_stats.KeysByFamily(client, _prefix()).count()
    click.echo(f"\nkeys: {sum(by_family.values())}")
    for fam, number in sorted(by_family.items()):
        click.echo(f"  {fam:<14}{number:>10}")
    click.echo(f"redis memory used: {_memory_used(client)}")


def _echo_local(client: Any, hash_key: str) -> None:
    cache_stats.prune_gauges(client, hash_key)
    sizes = cache_stats.read_gauges(client, hash_key).get(cache_stats.L1_SIZE, {})
    reported = "none reported"
    if sizes:
        reported = f"{int(sum(sizes.values()))} entries in {len(sizes)} processes"
    click.echo(f"in-process layer: {reported} (this process: {len(cache.local)})")


@cache_cli.command("stats")
@click.option("--reset", is_flag=True, help="Zero the shared counters after showing them.")
@backend_command
@shared_backends("REDIS_URL")
def cache_stats_command(reset: bool) -> None:
    """Hits, misses and hit ratio per layer and key family; keys, memory, errors."""
    client = _client()
    hash_key = _prefix() + "stats"
    counts = cache_stats.read(client, hash_key)
    _echo_layers(counts)
    _echo_families(counts)
    _echo_events(counts)
    _echo_keys_and_memory(client)
    _echo_local(client, hash_key)
    if reset:
        client.delete(hash_key)
        click.echo("counters reset")


# -- cache: inspection ----------------------------------------------------------------------


@cache_cli.command("keys")
@click.argument("pattern", default="*")
@backend_command
@shared_backends("REDIS_URL")
def cache_keys(pattern: str) -> None:
    """List keys of this app matching PATTERN (a glob after the prefix), with SCAN."""
    client, prefix = _client(), _prefix()
    for key in cache_stats.scan_prefix(client, prefix, pattern):
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


@cache_cli.command("get")
@click.argument("key")
@backend_command
@shared_backends("REDIS_URL")
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


@cache_cli.command("ttl")
@click.argument("key")
@backend_command
@shared_backends("REDIS_URL")
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


@cache_cli.command("tags")
@click.argument("tag")
@backend_command
@shared_backends("REDIS_URL")
def cache_tags(tag: str) -> None:
    """Show the tag's version: entries stored under another version of it are never served."""
    version = _client().get(cache.keys.tag_version(tag))
    click.echo(f"tag {tag}: version {_text(version) if version is not None else '(none yet)'}")


# -- cache: changes -------------------------------------------------------------------------


@cache_cli.command("invalidate")
@click.argument("tags", nargs=-1, required=True)
@backend_command
@shared_backends("REDIS_URL")
def cache_invalidate(tags: tuple[str, ...]) -> None:
    """Remove every entry stored with any of TAGS, in every process."""
    _client()  # fail loudly: the extension would only hold the tags back for a replay
    count = cache.invalidate_tags(*tags)
    click.echo(f"invalidated {count} {'tag' if count == 1 else 'tags'}")


def _unlink_batch(client: Any, batch: list[bytes]) -> int:
    """UNLINK a batch (every process's memory layer then finds its scope versions gone)."""
    return int(client.unlink(*batch))


@cache_cli.command("flush")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@backend_command
@shared_backends("REDIS_URL")
def cache_flush(yes: bool) -> None:
    """Delete every key of this app's prefix (and nothing else), with SCAN and UNLINK.

    Write-behind changes not yet in MongoDB are kept: they are data, not cache.
    """
    client, prefix = _client(), _prefix()
    kept = cache.write_behind().prefix_of_queue
    where = redacted(current_app.config["REDIS_URL"])
    if not yes:
        click.confirm(f"Delete every key with prefix {prefix!r} at {where}?", abort=True)
    removed, batch = 0, []
    for key in cache_stats.scan_prefix(client, prefix):
        if key.decode().startswith(kept):
            continue
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            removed, batch = removed + _unlink_batch(client, batch), []
    if batch:
        removed += _unlink_batch(client, batch)
    cache.local.clear()
    click.echo(f"deleted {removed} keys with prefix {prefix!r}")


@cache_cli.command("warm")
@click.argument("email")
@backend_command
@shared_backends("MONGODB_URI", "REDIS_URL")
def cache_warm(email: str) -> None:
    """Fill a user's first pages of tasks and their stats, as their requests would."""
    _client()
    user_id = str(_user_by_email(email).id)
    for page in range(1, WARM_PAGES + 1):
        task_service.list_tasks(user_id, ListQuery(page=page, per_page=WARM_PER_PAGE))
    task_service.stats(user_id)
    click.echo(f"warmed {WARM_PAGES} pages of tasks and the stats of {email}")


@write_behind_cli.command("run")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: never).")
@backend_command
@shared_backends("MONGODB_URI", "REDIS_URL")
def write_behind_run(seconds: float | None) -> None:
    """Apply queued write-behind changes to MongoDB until stopped (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    _client()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if seconds is not None:
        threading.Timer(seconds, stop.set).start()
    click.echo("write-behind flusher running; Ctrl-C to stop")
    try:
        cache.write_behind().run(task_service.apply_pending, stop)
    except KeyboardInterrupt:
        stop.set()
    click.echo("write-behind flusher stopped")


@write_behind_cli.command("status")
@backend_command
@shared_backends("REDIS_URL")
def write_behind_status() -> None:
    """Pending changes, consumers and lag of the write-behind flushers, and the dead letters
    (changes that failed too often, kept for an operator: how many, and the newest few)."""
    _client()
    status = cache.write_behind().status()
    click.echo(f"queued changes:  {status['stream_length']}")
    click.echo(f"pending (read, not yet applied): {status['pending']}")
    click.echo(f"lag (never read): {status['lag'] if status['lag'] is not None else '-'}")
    oldest = status["oldest_pending_ms"]
    click.echo(f"oldest pending:  {'-' if oldest is None else f'{oldest} ms'}")
    for consumer in status["consumers"]:
        click.echo(
            f"consumer {consumer['name']}: {consumer['pending']} pending, idle {consumer['idle_ms']} ms"
        )
    click.echo(f"dead letters:    {status['dead_letters']}")
    for dead in status["newest_dead_letters"]:
        fields = dead["fields"]
        click.echo(
            f"dead letter {dead['id']}: object {fields.get('id', '?')} version "
            f"{fields.get('version', '?')}, {fields.get('attempts', '?')} attempts: "
            f"{fields.get('error', '?')}"
        )
