"""Guarantees on Redis as operators run it (issue 23): full (``maxmemory`` reached under
``noeviction``), reached by a least-privilege ACL user, misconfigured at start-up, and a
revocation-hash rebuild that spans a restore from an RDB file.

Through HTTP, as in ``test_faults.py``: gunicorn with 3 workers on FerretDB and a redis-server of
the test's own; requests over fresh connections, each answer's worker read from gunicorn's access
log. The test itself reaches Redis as its default user (every permission: SAVE, CONFIG, DEL of the
app's keys); the app reaches it as whatever user the test gives it. Each test prints one summary
line (run with ``-s`` to see those that pass). All are marked ``redis_as_deployed``:
``pytest -m redis_as_deployed`` runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from taskapp import keys
from taskapp.config import SETTINGS
from tests.history import History, clock, stale_reads
from tests.redis_server import free_port
from tests.test_deployment import PASSWORD, WORKERS, login, register
from tests.test_faults import (
    ACCESS_FORMAT,
    ACCESS_LINE,
    SECRET_KEY,
    Load,
    check,
    run_with_fault,
    send,
    wait_for_workers,
)
from tests.test_gunicorn import GUNICORN, ROOT, call, serve  # noqa: F401  (the fixture)

pytestmark = pytest.mark.redis_as_deployed

TASKS = "/api/v1/tasks"
MAXMEMORY = 16 * 1024 * 1024
FULL = 3.0  # seconds of load while Redis is full
RECOVERY = 15.0  # longest wait for every worker to use Redis again after a fault


def full_redis_args(policy: str = "noeviction") -> tuple[str, ...]:
    """redis-server arguments of a Redis with a memory limit, as operators run it."""
    return ("--maxmemory", str(MAXMEMORY), "--maxmemory-policy", policy)


def acl_user_args(name: str, password: str, *rules: str) -> tuple[str, ...]:
    """redis-server arguments making an ACL user (in the configuration, so it is there again
    after a restart, as with an ACL file: ``ACL SETUSER`` alone is not kept)."""
    return ("--user", name, "on", f">{password}", *rules)


def user_url(server, name: str, password: str) -> str:
    return f"redis://{name}:{password}@127.0.0.1:{server.port}/0"


class Ballast:
    """Keys of the test's own, outside the app's prefix, that fill a Redis to its ``maxmemory``."""

    CHUNK = 64 * 1024
    OVERSHOOT = 2 * 1024 * 1024

    def __init__(self, server) -> None:
        self.client = redis.Redis(port=server.port)
        self.names: list[str] = []

    def fill_until_refused(self) -> None:
        """Values until Redis refuses a write with OOM (``noeviction``), then one 2 MB value past
        the limit: with the limit only just reached, a key the app deletes or lets expire would
        let its next write in. Values are made by SETRANGE, a short command: Redis counts a
        client's query buffer as used memory, so a long one would be refused before it ran."""
        while not self._add_chunks(16):
            assert len(self.names) * self.CHUNK < 4 * MAXMEMORY, "Redis never refused a write"
        while True:
            try:
                self.client.setrange("ballast:overshoot", self.OVERSHOOT - 1, b"x")
                break
            except redis.exceptions.OutOfMemoryError:
                self.client.delete(self.names.pop())
        self.names.append("ballast:overshoot")
        assert self.refuses_writes()

    def fill_evicting(self) -> None:
        """Twice ``maxmemory`` of values (``allkeys-lru``: Redis evicts, the app's keys too)."""
        while len(self.names) * self.CHUNK < 2 * MAXMEMORY:
            self._add_chunks(16)
        assert int(self.client.info("stats")["evicted_keys"]) > 0

    def _add_chunks(self, count: int) -> bool:
        """``count`` more values in one round trip; True when Redis refused one (OOM)."""
        names = [f"ballast:{len(self.names) + n}" for n in range(count)]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.setrange(name, self.CHUNK - 1, b"x")
        results = pipe.execute(raise_on_error=False)
        self.names += [
            name for name, result in zip(names, results, strict=True) if result == self.CHUNK
        ]
        return any(isinstance(result, redis.exceptions.OutOfMemoryError) for result in results)

    def refuses_writes(self) -> bool:
        """True when a small write of the test's own is refused with OOM now."""
        try:
            self.client.set("ballast:probe", b"1")
        except redis.exceptions.OutOfMemoryError:
            return True
        self.client.delete("ballast:probe")
        return False

    def delete(self) -> None:
        """Free the memory: every ballast key gone."""
        for i in range(0, len(self.names), 500):
            self.client.delete(*self.names[i : i + 500])
        self.names = []
        self.client.close()


# Which worker answered


def answered_by(server, request_ids: list[str]) -> dict[str, int]:
    """The pid of the worker that answered each request id (gunicorn logs after the response)."""
    deadline = time.monotonic() + 5
    while True:
        pids = {rid: int(pid) for pid, rid, _ in ACCESS_LINE.findall(server.output())}
        if all(rid in pids for rid in request_ids) or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def until_every_worker(
    server,
    ask: Callable[[], tuple[str, object]],
    done: Callable[[object], bool],
    at_least: int = 0,
) -> list[tuple[int | None, object]]:
    """``ask`` (one request: its request id and outcome) again and again until every worker has
    answered one outcome for which ``done`` holds (within RECOVERY seconds), and ``at_least``
    requests were made: each answer's (worker pid, outcome)."""
    asked: list[tuple[str, object]] = []
    deadline = time.monotonic() + RECOVERY
    while True:
        for _ in range(WORKERS):
            asked.append(ask())
        pids = answered_by(server, [rid for rid, _ in asked])
        answers = [(pids.get(rid), outcome) for rid, outcome in asked]
        if len({pid for pid, o in answers if done(o)}) >= WORKERS and len(answers) >= at_least:
            return answers
        assert time.monotonic() < deadline, Counter(answers)
        time.sleep(0.05)


def get_cache(server, path: str, headers: dict[str, str]) -> Callable[[], tuple[str, object]]:
    """A GET whose outcome is (status, X-Cache, title)."""

    def ask() -> tuple[str, object]:
        status, head, body, rid = send(server.port, "GET", path, headers=headers)
        title = body.get("title") if isinstance(body, dict) else None
        return rid, (status, head.get("X-Cache", ""), title)

    return ask


def hit_on_every_worker(server, path: str, headers: dict[str, str]) -> list:
    """GET ``path`` until each worker has answered it from its cache (X-Cache: HIT)."""
    return until_every_worker(server, get_cache(server, path, headers), lambda o: o[1] == "HIT")


def token_uses(server, path: str, headers: dict[str, str]) -> list[tuple[int | None, int]]:
    """GETs of ``path`` (12 at least) and POSTs of a task (6), with ``headers``, until each
    worker has answered both: each answer's (worker pid, status)."""
    statuses: list[tuple[int | None, int]] = []
    for method, target, body, count in (
        ("GET", path, None, 12),
        ("POST", TASKS, {"title": "after"}, 6),
    ):

        def ask(method=method, target=target, body=body) -> tuple[str, object]:
            status, _, _, rid = send(server.port, method, target, body, headers)
            return rid, status

        statuses += until_every_worker(server, ask, lambda status: True, at_least=count)
    return statuses


def statuses_of(answers: list[tuple[int | None, int]]) -> dict[int, int]:
    return dict(Counter(status for _, status in answers))


def bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def log_in(server, email: str) -> dict:
    """A login's token pair (the access token and its refresh token)."""
    status, _, body = call(
        server.base, "POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}
    )
    assert status == 200, body
    return body


def new_task(server, headers: dict[str, str], title: str = "0") -> str:
    """A task of the caller: its path."""
    status, _, task = call(server.base, "POST", TASKS, {"title": title}, headers)
    assert status == 201, task
    return f"{TASKS}/{task['id']}"


@pytest.fixture
def deploy(serve, key_prefix):  # noqa: F811
    """gunicorn (3 workers unless told) on the given Redis and MongoDB, without any account."""

    def run(redis_url: str, mongodb_uri: str, workers: int = WORKERS, **env: str):
        server = serve(
            REDIS_URL=redis_url,
            MONGODB_URI=mongodb_uri,
            CACHE_KEY_PREFIX=key_prefix,
            SECRET_KEY=SECRET_KEY,
            GUNICORN_WORKERS=str(workers),
            RATE_LIMIT_PER_MINUTE="100000",
            LOGIN_RATE_LIMIT_PER_MINUTE="100000",
            EXTRA_ARGS=f"--access-logformat '{ACCESS_FORMAT}'",
            **env,
        )
        if workers == WORKERS:
            wait_for_workers(server)
        return server

    return run


# 1. A full Redis (maxmemory reached)


def fill_while_cached(server, ballast: Ballast, policy: str) -> Callable[[Load], None]:
    """The fault: with no write in flight, every worker answers the task and the list page from
    its cache; then Redis is filled (refusing writes, or evicting); FULL seconds of load; then the
    ballast is deleted."""

    def fault(load: Load) -> None:
        with load.quiet():
            cached_everywhere(server, load, since=clock())
            if policy == "noeviction":
                ballast.fill_until_refused()
            else:
                ballast.fill_evicting()
            load.history.faults.append(clock())  # the fault began (the harness adds its end)
        time.sleep(FULL)
        if policy == "noeviction":
            assert ballast.refuses_writes()  # full all along
        ballast.delete()

    return fault


def cached_everywhere(server, load: Load, since: float) -> None:
    """Until every worker has answered both the task and the list page as a HIT (reads begun
    after ``since``): the fault then finds the task cached in every worker."""
    deadline = time.monotonic() + RECOVERY
    while True:
        hits = [op for op in load.history.snapshot() if op.start > since and op.cache == "HIT"]
        pids = answered_by(server, [])
        by_kind = {
            kind: {pids.get(op.request_id) for op in hits if op.kind == kind} - {None}
            for kind in ("read-task", "read-list")
        }
        if all(len(workers) >= WORKERS for workers in by_kind.values()):
            return
        assert time.monotonic() < deadline, by_kind
        time.sleep(0.1)


def stale_while_full(history: History) -> str:
    """Stale reads begun while Redis was full and after the memory was freed."""
    began, freed = history.faults[0], history.faults[-1]
    stale = stale_reads(history)
    full = [s for s in stale if began <= s.read.start < freed]
    after = [s for s in stale if s.read.start >= freed]
    reads_full = [op for op in history.reads() if began <= op.start < freed]
    writes_full = Counter(op.status for op in history.writes() if began <= op.start < freed)
    return (
        f"while full: {len(full)} stale of {len(reads_full)} reads, writes {dict(writes_full)}; "
        f"after freeing: {len(after)} stale"
    )


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru"])
def test_no_read_is_older_than_a_write_answered_while_redis_is_full(
    make_redis, deploy, mongodb_uri, policy
):
    """Every worker has the task cached; Redis is filled to its maxmemory by keys of others;
    a writer PATCHes and readers GET over fresh connections for FULL seconds, then the
    memory is freed. A write answered 2xx bounds every later read (a 5xx bounds nothing)."""
    redis_server = make_redis(*full_redis_args(policy))
    server = deploy(redis_server.url, mongodb_uri)
    _, email = register(server)
    headers = login(server, email)
    task_id = new_task(server, headers).rsplit("/", 1)[1]
    ballast = Ballast(redis_server)
    history = run_with_fault(server, headers, task_id, fill_while_cached(server, ballast, policy))
    name = f"full-redis-{policy}"
    print(f"[{name}] {stale_while_full(history)}")
    check(name, history)


def logout(server, pair: dict) -> int:
    return call(server.base, "POST", "/api/v1/auth/logout", headers=bearer(pair))[0]


def change_password(server, pair: dict) -> int:
    change = {"current_password": PASSWORD, "new_password": "another good passphrase"}
    return call(server.base, "POST", "/api/v1/auth/password", change, bearer(pair))[0]


def delete_account(server, pair: dict) -> int:
    return call(server.base, "DELETE", "/api/v1/auth/me", headers=bearer(pair))[0]


REVOCATIONS = {
    "logout": logout,
    "password-change": change_password,
    "account-deletion": delete_account,
}


@pytest.mark.parametrize("revocation", list(REVOCATIONS))
def test_a_revocation_answered_while_redis_is_full_is_refused_on_every_worker(
    make_redis, deploy, mongodb_uri, revocation
):
    """The token's task is a HIT on every worker; Redis is filled to its maxmemory
    (``noeviction``); the revocation is answered; the token is refused (401) by every worker,
    for a cached GET and for a POST, while Redis is full and after the memory is freed and every
    worker uses Redis again. A revocation answered 5xx bounds nothing."""
    redis_server = make_redis(*full_redis_args())
    server = deploy(redis_server.url, mongodb_uri)
    _, email = register(server)
    pair = log_in(server, email)
    path = new_task(server, bearer(pair))
    _, witness_email = register(server)  # another user: shows when every worker uses Redis again
    witness = login(server, witness_email)
    witness_path = new_task(server, witness)
    hit_on_every_worker(server, path, bearer(pair))
    hit_on_every_worker(server, witness_path, witness)
    ballast = Ballast(redis_server)
    ballast.fill_until_refused()

    status = REVOCATIONS[revocation](server, pair)
    full = token_uses(server, path, bearer(pair))
    assert ballast.refuses_writes()  # full all along
    ballast.delete()
    hit_on_every_worker(server, witness_path, witness)
    freed = token_uses(server, path, bearer(pair))

    line = (
        f"[full-redis-{revocation}] answered {status} while full; the token afterwards, while "
        f"full: {statuses_of(full)} over {len({p for p, _ in full})} workers; after freeing: "
        f"{statuses_of(freed)} over {len({p for p, _ in freed})} workers"
    )
    print(line)
    assert 200 <= status < 300 or status >= 500, line
    if status >= 500:
        return  # not answered as done: it bounds nothing
    assert {s for _, s in full} == {401}, line
    assert {s for _, s in freed} == {401}, line


# 2. A least-privilege ACL user


ACL_RULES = {  # the app user's permissions: the usual managed-Redis example, and every one
    "no-dangerous": ("~*", "&*", "+@all", "-@dangerous"),
    "all-permissions": ("~*", "&*", "+@all"),
}


@pytest.mark.parametrize("rules", list(ACL_RULES))
def test_a_user_without_dangerous_commands_keeps_the_guarantees_through_an_rdb_restore(
    make_redis, deploy, mongodb_uri, rules
):
    """The app reaches Redis as ``app`` with ``+@all -@dangerous`` (no INFO, no SAVE, no
    CONFIG: the usual managed-Redis example), or with every permission (the same test, as a
    control). The task is a HIT on every worker; an RDB snapshot is taken; the task is PATCHed
    and another login of the user logs out; Redis is killed and started from the snapshot. Once
    every worker answers from its cache again, none answers the older title (30 more reads), and
    every worker refuses the logged-out token."""
    password = "app-user-password"
    redis_server = make_redis(*acl_user_args("app", password, *ACL_RULES[rules]))
    server = deploy(user_url(redis_server, "app", password), mongodb_uri)
    _, email = register(server)
    reader, leaver = log_in(server, email), log_in(server, email)
    path = new_task(server, bearer(reader), "before")
    hit_on_every_worker(server, path, bearer(reader))
    admin = redis.Redis(port=redis_server.port)  # the default user, with every permission
    admin.save()
    admin.close()
    status, _, body = call(server.base, "PATCH", path, {"title": "after"}, bearer(reader))
    assert status == 200, body
    assert logout(server, leaver) == 204
    assert call(server.base, "GET", path, headers=bearer(leaver))[0] == 401

    redis_server.kill()
    redis_server.start()  # from the snapshot: the entries and the revocations before the PATCH

    ask = get_cache(server, path, bearer(reader))
    reads = until_every_worker(server, ask, lambda o: o[1] == "HIT")  # Redis in use again
    more = [ask() for _ in range(30)]
    pids = answered_by(server, [rid for rid, _ in more])
    reads += [(pids.get(rid), outcome) for rid, outcome in more]
    stale = [(pid, o) for pid, o in reads if o[0] == 200 and o[2] != "after"]
    refused = token_uses(server, path, bearer(leaver))
    line = (
        f"[acl-{rules}-rdb-restore] {len(stale)} of {len(reads)} reads stale "
        f"(by X-Cache {dict(Counter(o[1] for _, o in stale))}) over "
        f"{len({p for p, _ in reads})} workers; the logged-out token: {statuses_of(refused)} "
        f"over {len({p for p, _ in refused})} workers"
    )
    print(line)
    assert stale == [], line
    assert {s for _, s in refused} == {401}, line


# 3. Misconfiguration at start-up


MISCONFIGURATIONS = {
    # name: (redis-server arguments, the app's user and password, what the one line must say)
    "wrong-password": (
        acl_user_args("app", "the-right-password", "~*", "&*", "+@all"),
        ("app", "a-wrong-password"),
        r"WRONGPASS|invalid (username-)?password",
    ),
    "no-password": ((), None, r"NOAUTH|authenticat|password"),
    "no-scripting": (
        acl_user_args("app", "app-user-password", "~*", "&*", "+@all", "-@scripting"),
        ("app", "app-user-password"),
        r"NOPERM.*(@?scripting|fcall|function|eval)",
    ),
}


#: Log lines at INFO level (gunicorn's own, and the app's ``cache on ...``): not about a failure.
INFO_LINE = re.compile(r"\[INFO\]| INFO ")


def redis_app_url(redis_server, name: str) -> str:
    """The URL the app is given for the misconfiguration ``name`` (the server prepared for it)."""
    _, credentials, _ = MISCONFIGURATIONS[name]
    if credentials is None:  # the server asks for a password that the URL does not carry
        admin = redis.Redis(port=redis_server.port)
        admin.config_set("requirepass", "the-admin-password")
        admin.close()
        return redis_server.url
    return user_url(redis_server, *credentials)


def run_until_exit(
    command: list[str], env: dict[str, str], base: str | None
) -> tuple[int | None, str, object]:
    """Run ``command`` until it exits: its status, its output and None. A server that answers
    ``/readyz`` meanwhile has started: it is stopped, and its status is None, with that answer."""
    log_path = Path(env["LOG_PATH"])
    ready = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 40
        try:
            while proc.poll() is None and ready is None and time.monotonic() < deadline:
                if base is not None:
                    try:
                        status, _, body = call(base, "GET", "/readyz")
                        ready = (status, body)
                    except OSError:
                        pass
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(25)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                status = None
            else:
                status = proc.returncode
    return status, log_path.read_text(errors="replace"), ready


@pytest.mark.parametrize("command", ["gunicorn", "cli"])
@pytest.mark.parametrize("name", list(MISCONFIGURATIONS))
def test_a_wrong_password_or_a_denied_command_stops_start_up_with_one_line(
    make_redis, mongodb_uri, tmp_path, name, command
):
    """gunicorn's master (3 workers asked for) and ``flask --app taskapp cache stats`` exit
    with status 1 and one line naming the cause, without a traceback or the password."""
    args, credentials, cause = MISCONFIGURATIONS[name]
    redis_server = make_redis(*args)
    url = redis_app_url(redis_server, name)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    env.update(
        REDIS_URL=url,
        MONGODB_URI=mongodb_uri,
        SECRET_KEY=SECRET_KEY,
        GUNICORN_WORKERS=str(WORKERS),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_ACCESSLOG="off",
        LOG_PATH=str(tmp_path / f"{command}.log"),
    )
    if command == "gunicorn":
        argv, base = (
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            f"http://127.0.0.1:{port}",
        )
    else:
        argv, base = (
            [str(Path(sys.executable).parent / "flask"), "--app", "taskapp", "cache", "stats"],
            None,
        )
    status, output, ready = run_until_exit(argv, env, base)
    lines = [line for line in output.strip().splitlines() if not INFO_LINE.search(line)]
    summary = (
        f"[misconfigured-{name}-{command}] exit status {status}, {len(lines)} lines "
        f"(besides INFO): {lines[:4]}; /readyz answered {ready}"
    )
    print(summary)
    assert status not in (None, 0), summary  # None: it started and served
    if command == "cli":
        assert status == 1, summary
    assert len(lines) == 1, summary
    assert re.search(cause, lines[0], re.IGNORECASE), summary
    assert "Traceback" not in output
    if credentials is not None:
        assert credentials[1] not in output


def test_a_redis_down_at_start_up_still_lets_gunicorn_start_and_serve_from_mongodb(
    deploy, mongodb_uri
):
    """Nothing listens at REDIS_URL: the master starts its 3 workers, which serve every request
    from MongoDB (``/readyz`` says degraded)."""
    server = deploy(f"redis://127.0.0.1:{free_port()}/0", mongodb_uri)
    _, email = register(server)
    headers = login(server, email)
    path = new_task(server, headers, "made without redis")
    answers = until_every_worker(server, get_cache(server, path, headers), lambda o: True)
    status, _, ready = call(server.base, "GET", "/readyz")
    print(
        f"[redis-down-at-start] reads {dict(Counter(o for _, o in answers))} over "
        f"{len({p for p, _ in answers})} workers; /readyz {status} {ready}"
    )
    assert {o for _, o in answers} == {(200, "MISS", "made without redis")}
    assert (status, ready["status"]) == (200, "degraded")


# 4. A revocation-hash rebuild that spans a restore from an RDB file


DB_LATENCY_MS = 2000  # each MongoDB read of the slow host: a rebuild takes two


def wait_for_key(client, key: str, timeout: float = 10.0) -> float:
    """The time ``key`` appeared in Redis (polled every few ms)."""
    deadline = time.monotonic() + timeout
    while not client.exists(key):
        assert time.monotonic() < deadline, f"{key} never appeared"
        time.sleep(0.005)
    return time.monotonic()


@pytest.mark.parametrize("revocation", ["logout", "account-deletion"])
def test_a_revocation_made_while_a_rebuild_spans_an_rdb_restore_stays_refused(
    make_redis, deploy, mongodb_uri, key_prefix, revocation
):
    """Two hosts on one Redis and one MongoDB: the fast one (3 workers) and a slow one (1 worker,
    each MongoDB read 2 s). The user's revocation hash is missing (evicted); a request on the
    slow host rebuilds it: the build marks the hash, reads the user (2 s) and its revoked logins
    (2 s), then records. An RDB snapshot is taken once the hash is marked. Meanwhile the fast
    host answers the revocation, after the build read what it revokes (a logout: once the
    revoked logins were read; an account deletion removes the logins, so any time after the
    user was read). Redis is then killed and started from the snapshot (the mark, without the
    revocation) before the build records. Every worker of both hosts must refuse the token."""
    redis_server = make_redis()
    fast = deploy(redis_server.url, mongodb_uri)
    slow = deploy(
        redis_server.url, mongodb_uri, workers=1, SIMULATED_DB_LATENCY_MS=str(DB_LATENCY_MS)
    )
    user_id, email = register(fast)
    staying, revoked = log_in(fast, email), log_in(fast, email)
    if revocation == "account-deletion":
        staying = revoked  # every token of the user is refused
    path = new_task(fast, bearer(staying))
    _, witness_email = register(fast)  # another user: shows when every worker uses Redis again
    witness = login(fast, witness_email)
    witness_path = new_task(fast, witness)
    hit_on_every_worker(fast, path, bearer(staying))
    hit_on_every_worker(fast, witness_path, witness)
    admin = redis.Redis(port=redis_server.port)
    key = key_prefix + keys.revocation(user_id)
    assert admin.delete(key) == 1  # as after an eviction

    rebuild = threading.Thread(target=send, args=(slow.port, "GET", path, None, bearer(staying)))
    rebuild.start()
    marked = wait_for_key(admin, key)  # the slow host's build began
    admin.save()
    if revocation == "logout":
        # After the build's second read was taken (its answer then travels for 2 s).
        time.sleep(max(0.0, marked + DB_LATENCY_MS / 1000 + 0.5 - time.monotonic()))
        assert logout(fast, revoked) == 204
    else:
        assert delete_account(fast, revoked) == 204
    assert call(fast.base, "GET", TASKS, headers=bearer(revoked))[0] == 401
    redis_server.kill()
    redis_server.start()  # from the snapshot: the hash marked, without the revocation
    restarted = time.monotonic() - marked
    assert rebuild.is_alive(), f"the build recorded before the restore ({restarted:.2f} s)"
    rebuild.join(4 * DB_LATENCY_MS / 1000 + 10)  # the build recorded

    hit_on_every_worker(fast, witness_path, witness)
    refused = token_uses(fast, path, bearer(revoked))
    on_slow = call(slow.base, "GET", TASKS, headers=bearer(revoked))[0]
    line = (
        f"[rebuild-across-rdb-restore-{revocation}] restored {restarted:.2f} s into the build; "
        f"the revoked token: {statuses_of(refused)} over {len({p for p, _ in refused})} workers "
        f"of the fast host, {on_slow} on the slow host"
    )
    print(line)
    assert {s for _, s in refused} == {401}, line
    assert on_slow == 401, line
