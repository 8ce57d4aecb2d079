"""The ``users`` and ``cache`` commands, through Flask's CLI runner, on a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from taskapp.cache import NO_VALUE
from taskapp.cache import stats as cache_stats
from taskapp.extensions import cache
from taskapp.models import User

TASK_KEY = "{u:abc}:task:1"
TAG = "{u:abc}:collection"


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert lines(result) == [f"Error: {text}"], result.output
    assert "Traceback" not in result.output


@pytest.fixture
def stored(app):
    """One tagged entry under TASK_KEY, stored for 60 s."""
    with app.app_context():
        cache.set(TASK_KEY, {"title": "write tests", "done": False}, ttl=60, tags=[TAG])
    return TASK_KEY


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# users


def test_users_create_with_password_option_stores_the_role(app, runner):
    args = ["users", "create", "Ada@Example.com", "--password", "long enough pw", "--role", "admin"]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert "created ada@example.com" in result.output
    with app.app_context():
        user = User.objects(email="ada@example.com").first()
        assert user.role == "admin"
        assert user.check_password("long enough pw")


def test_users_create_prompts_for_the_password_twice(app, runner):
    result = runner.invoke(
        args=["users", "create", "bob@example.com"], input="a secret phrase\na secret phrase\n"
    )
    assert result.exit_code == 0, result.output
    assert "a secret phrase" not in result.output  # hidden input
    with app.app_context():
        user = User.objects(email="bob@example.com").first()
        assert user.role == "user"
        assert user.check_password("a secret phrase")


def test_users_create_twice_fails_in_one_line(runner):
    args = ["users", "create", "carol@example.com", "--password", "long enough pw"]
    assert runner.invoke(args=args).exit_code == 0
    assert_one_line_error(
        runner.invoke(args=args), "an account with email carol@example.com already exists"
    )


@pytest.mark.parametrize(
    "email, password", [("not-an-email", "long enough pw"), ("dan@example.com", "short")]
)
def test_users_create_rejects_bad_input(runner, email, password):
    result = runner.invoke(args=["users", "create", email, "--password", password])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_users_set_role_changes_the_role_in_mongodb(app, runner):
    runner.invoke(args=["users", "create", "eve@example.com", "--password", "long enough pw"])
    result = runner.invoke(args=["users", "set-role", "eve@example.com", "admin"])
    assert result.exit_code == 0, result.output
    assert "eve@example.com is now admin" in result.output
    with app.app_context():
        assert User.objects(email="eve@example.com").first().role == "admin"
    runner.invoke(args=["users", "set-role", "eve@example.com", "user"])
    with app.app_context():
        assert User.objects(email="eve@example.com").first().role == "user"


def test_users_set_role_of_unknown_email_fails(runner):
    result = runner.invoke(args=["users", "set-role", "nobody@example.com", "admin"])
    assert_one_line_error(result, "no user with email nobody@example.com")


def test_users_set_role_rejects_unknown_roles(runner):
    result = runner.invoke(args=["users", "set-role", "x@example.com", "root"])
    assert result.exit_code == 2


# cache inspection


def test_cache_keys_lists_keys_without_the_prefix(runner, stored):
    result = runner.invoke(args=["cache", "keys"])
    assert result.exit_code == 0, result.output
    assert TASK_KEY in lines(result)
    assert f"tagv:{TAG}" in lines(result)


def test_cache_keys_matches_a_pattern_after_the_prefix(runner, stored):
    result = runner.invoke(args=["cache", "keys", "tagv:*"])
    assert result.exit_code == 0, result.output
    assert lines(result) == [f"tagv:{TAG}"]


def test_cache_get_shows_value_ttl_and_tags(runner, stored):
    result = runner.invoke(args=["cache", "get", TASK_KEY])
    assert result.exit_code == 0, result.output
    assert '"title": "write tests"' in result.output
    assert f"tags: {TAG}" in result.output
    assert "ttl: " in result.output and "fresh until" in result.output


def test_cache_get_shows_other_types_by_content(runner, stored, raw, key_prefix):
    raw.rpush(key_prefix + "feed", b'{"n":1}', b'{"n":2}')
    result = runner.invoke(args=["cache", "get", "feed"])
    assert result.exit_code == 0, result.output
    assert "type: list (2 items)" in result.output
    assert '"n": 2' in result.output
    raw.zadd(key_prefix + "ranks", {"first": 1})
    result = runner.invoke(args=["cache", "get", "ranks"])
    assert "type: zset (1 items)" in result.output
    assert "first" in result.output


def test_cache_get_of_a_missing_key_fails_in_one_line(runner):
    result = runner.invoke(args=["cache", "get", "nope"])
    assert_one_line_error(result, "no such key: nope")


def test_cache_ttl_shows_the_remaining_seconds(runner, stored):
    result = runner.invoke(args=["cache", "ttl", TASK_KEY])
    assert result.exit_code == 0, result.output
    redis_ttl, freshness = lines(result)
    assert 55 <= float(redis_ttl.rstrip("s")) <= 60
    assert freshness.startswith("fresh for ")
    assert_one_line_error(runner.invoke(args=["cache", "ttl", "nope"]), "no such key: nope")


def test_cache_tags_shows_the_tags_version(runner, stored):
    result = runner.invoke(args=["cache", "tags", TAG])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"tag {TAG}: version ")
    assert "(none yet)" in runner.invoke(args=["cache", "tags", "{u:abc}:other"]).output


def test_cache_invalidate_removes_the_tagged_entries(app, runner, stored):
    before = runner.invoke(args=["cache", "tags", TAG]).output
    result = runner.invoke(args=["cache", "invalidate", TAG, "{u:abc}:other"])
    assert result.exit_code == 0, result.output
    assert "invalidated 2 tags" in result.output
    assert runner.invoke(args=["cache", "tags", TAG]).output != before
    with app.test_request_context():
        assert cache.get(TASK_KEY) is NO_VALUE  # the entry is stored under the old version


def test_cache_flush_deletes_only_the_apps_prefix(runner, stored, raw, key_prefix):
    foreign = f"taskapp-other-test:{uuid.uuid4().hex}:keep"
    raw.set(foreign, b"mine")
    try:
        result = runner.invoke(args=["cache", "flush", "--yes"])
        assert result.exit_code == 0, result.output
        assert "deleted 4 keys" in result.output  # the entry, its, its tag's and scope's versions
        assert list(raw.scan_iter(match=key_prefix + "*", count=1000)) == []
        assert raw.get(foreign) == b"mine"
    finally:
        raw.delete(foreign)


def test_cache_flush_asks_first(runner, stored, raw, key_prefix):
    result = runner.invoke(args=["cache", "flush"], input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert raw.exists(key_prefix + TASK_KEY)


def test_cache_stats_shows_layers_families_and_keys(app, runner, stored):
    recorder = cache_stats.StatsRecorder()
    for event, family in [("redis.hit", "task")] * 3 + [("redis.miss", "task"), ("error", None)]:
        recorder.record(event, family)
    with app.app_context():
        recorder.flush(cache.client, cache.keys.prefix + "stats", {cache_stats.L1_SIZE: 7})
    result = runner.invoke(args=["cache", "stats"])
    assert result.exit_code == 0, result.output
    rows: dict[str, list[str]] = {}
    for line in lines(result):  # the first row of each name: the tables come first
        rows.setdefault(line.split()[0], line.split()[1:])
    assert rows["l1"] == ["0", "0", "-"]
    assert rows["redis"] == ["3", "1", "75.0%"]
    assert rows["http"] == ["0", "0", "-"]
    assert "task" in rows and rows["task"] == ["redis", "3", "1", "75.0%"]
    assert "errors:         1" in result.output
    assert "keys: 5" in result.output  # the entry, 3 versions (its, its tag's, its scope's), stats
    assert "redis memory used: " in result.output
    assert "in-process layer: 7 entries in 1 processes" in result.output


def test_cache_warm_fills_a_users_pages_and_stats(client, runner, register):
    headers = register("warm@example.com")
    client.post("/api/v1/tasks", json={"title": "one"}, headers=headers)
    result = runner.invoke(args=["cache", "warm", "warm@example.com"])
    assert result.exit_code == 0, result.output
    keys = lines(runner.invoke(args=["cache", "keys", "{u:*}:*"]))
    for page in (1, 2, 3):
        assert any(key.endswith(f":tasks:{page}:10:any") for key in keys), keys
    assert any(key.endswith(":stats") for key in keys), keys
    assert_one_line_error(
        runner.invoke(args=["cache", "warm", "nobody@example.com"]),
        "no user with email nobody@example.com",
    )


# Redis down


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "stats"],
        ["cache", "keys"],
        ["cache", "get", "k"],
        ["cache", "ttl", "k"],
        ["cache", "tags", "t"],
        ["cache", "invalidate", "t"],
        ["cache", "flush", "--yes"],
        ["cache", "warm", "a@example.com"],
    ],
)
def test_unreachable_redis_fails_in_one_line_without_the_password(make_app, args):
    app = make_app(REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 1, result.output
    assert len(lines(result)) == 1, result.output
    assert lines(result)[0].startswith("Error: Redis unreachable at redis://127.0.0.1:1/0: ")
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


# Redis Cluster


def test_keys_stats_and_flush_cover_every_primary_of_a_cluster(make_app, redis_cluster, key_prefix):
    app = make_app(REDIS_URL=redis_cluster.url, REDIS_CLUSTER=True)
    runner = app.test_cli_runner()
    users = [f"u{i}" for i in range(12)]  # hash tags spread over the three primaries
    with app.app_context():
        for user in users:
            cache.set(f"{{u:{user}}}:task:1", {"user": user}, ttl=60)
        nodes = {cache.client.get_node_from_key(f"{key_prefix}{{u:{u}}}").name for u in users}
    assert len(nodes) > 1  # the entries really live on more than one primary

    listed = lines(runner.invoke(args=["cache", "keys", "{u:*}:task:*"]))
    assert sorted(listed) == sorted(f"{{u:{user}}}:task:1" for user in users)
    result = runner.invoke(args=["cache", "stats"])
    assert result.exit_code == 0, result.output
    assert "keys: 36" in result.output  # each entry, its version and its scope's
    assert "over 3 primaries" in result.output
    result = runner.invoke(args=["cache", "flush", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted 36 keys" in result.output
    assert lines(runner.invoke(args=["cache", "keys"])) == []


def test_unreachable_mongodb_fails_in_one_line(redis_url, key_prefix):
    from taskapp import create_app

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-with-32-bytes-of-entropy!",
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": key_prefix,
            "MONGODB_URI": "mongodb://user:hunter2@127.0.0.1:1/taskapp_cli_test",
            "MONGODB_TIMEOUT_MS": 500,  # refused at once; the default 3 s per try took 12 s
        }
    )
    try:
        result = app.test_cli_runner().invoke(
            args=["users", "create", "f@example.com", "--password", "long enough pw"]
        )
    finally:
        with app.app_context():
            cache.close()
    assert result.exit_code == 1, result.output
    assert len(lines(result)) == 1, result.output
    assert lines(result)[0].startswith("Error: MongoDB failed at mongodb://127.0.0.1:1/")
    assert "hunter2" not in result.output


def test_cache_stats_counts_the_apps_own_traffic(client, runner, register):
    headers = register()
    task = client.post("/api/v1/tasks", json={"title": "counted"}, headers=headers).get_json()
    for _ in range(3):
        assert client.get(f"/api/v1/tasks/{task['id']}", headers=headers).status_code == 200
    deadline = time.monotonic() + 5  # the listener thread flushes counts every second
    while True:
        result = runner.invoke(args=["cache", "stats"])
        rows = {line.split()[0]: line.split()[1:] for line in reversed(lines(result))}
        if rows["http"][0] == "2" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows["http"][:2] == ["2", "1"]  # a miss, then two hits from the response cache


def test_write_behind_status_and_run_apply_the_queued_changes_a_flush_keeps(make_app):
    from bson import ObjectId

    from taskapp.models import Task
    from taskapp.tasks import service as task_service
    from taskapp.tasks.schemas import TaskCreate, TaskUpdate

    app = make_app(TASK_WRITE_STRATEGY="write-behind")
    runner = app.test_cli_runner()
    with app.app_context():  # not a serving process: no flusher thread in it
        user_id = str(ObjectId())
        task = task_service.create_task(user_id, TaskCreate(title="before"))
        task_service.update_task(user_id, task["id"], TaskUpdate(title="after"))
        assert Task.objects(id=ObjectId(task["id"])).first().title == "before"
    status = runner.invoke(args=["write-behind", "status"])
    assert status.exit_code == 0, status.output
    assert "queued changes:  1" in status.output
    assert runner.invoke(args=["cache", "flush", "--yes"]).exit_code == 0  # keeps the queue
    assert "queued changes:  1" in runner.invoke(args=["write-behind", "status"]).output
    run = runner.invoke(args=["write-behind", "run", "--seconds", "1"])
    assert run.exit_code == 0, run.output
    with app.app_context():
        assert Task.objects(id=ObjectId(task["id"])).first().title == "after"
    drained = runner.invoke(args=["write-behind", "status"]).output
    assert "queued changes:  0" in drained
    assert "oldest pending:  -" in drained  # none, not "0 ms"
    assert "dead letters:    0" in drained
    # Only `write-behind run` flushed: a CLI run starts no flusher of its own.
    assert "taskapp-write-behind" not in {thread.name for thread in threading.enumerate()}


# embedded backends: the data commands refuse them


@pytest.mark.parametrize(
    "args",
    [
        ["users", "create", "ada@example.com", "--password", "long enough pw"],
        ["users", "set-role", "ada@example.com", "admin"],
        ["cache", "warm", "ada@example.com"],
        ["write-behind", "run", "--seconds", "0.1"],
    ],
)
def test_data_commands_refuse_the_embedded_mongodb_in_one_line(make_app, args):
    app = make_app(MONGODB_URI="mongomock://localhost/taskapp")
    result = app.test_cli_runner().invoke(args=args)
    assert_one_line_error(
        result,
        "MONGODB_URI=mongomock://localhost/taskapp is an in-process MongoDB that would die with "
        "this command; set MONGODB_URI to the server the app uses",
    )


@pytest.mark.parametrize(
    "args",
    [["cache", "stats"], ["cache", "keys"], ["cache", "get", "k"], ["cache", "flush", "--yes"]]
    + [["cache", "invalidate", "t"], ["write-behind", "status"]],
)
def test_cache_commands_refuse_the_embedded_redis_in_one_line(make_app, args):
    app = make_app(redis="memory")
    result = app.test_cli_runner().invoke(args=args)
    assert_one_line_error(
        result,
        "REDIS_URL=memory:// is an in-process Redis this command would have to itself; "
        "set REDIS_URL to the server the app uses",
    )


def test_a_bad_setting_stops_the_cli_in_one_line(tmp_path):
    env = {**os.environ, "TASK_CACHE_TTL": "soon"}
    flask = Path(sys.executable).parent / "flask"
    result = subprocess.run(
        [str(flask), "--app", "taskapp", "cache", "stats"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: setting TASK_CACHE_TTL='soon' is invalid: invalid literal for int() with base 10: 'soon'"
    ]
