"""Settings: every bad value stops start-up with a message naming the setting."""

from __future__ import annotations

import pytest
import redis

from taskapp.config import SETTINGS, ConfigError, check_redis, load

#: A value each setting refuses, by the kind of its conversion.
BAD = {
    "REDIS_CLUSTER": "maybe",
    "HTTP_FAST_PATH": "sometimes",
    "TASK_READ_STRATEGY": "read-around",
    "TASK_WRITE_STRATEGY": "write-sideways",
    "REDIS_SOCKET_TIMEOUT": "0",
    "CACHE_STALE_TTL": "-1",
    "CACHE_LOCK_TTL": "0",
    "CACHE_LOCK_WAIT": "soon",
    "CACHE_BREAKER_COOLDOWN": "0",
    "REDIS_URL": "http://cache:6379",
    "MONGODB_URI": "postgres://db/taskapp",
    "CACHE_KEY_PREFIX": "bad {prefix}",
    "LOG_FORMAT": "xml",
}
#: Settings any string is fine for in the environment alone (lists of emails; the secret, whose
#: length is checked with a real backend: see the SECRET_KEY tests below).
FREE_FORM = {"SECRET_KEY", "ADMIN_EMAILS"}


def bad_value(name: str) -> str:
    if name in BAD:
        return BAD[name]
    return "-1"  # every other setting is a whole number with a minimum of 0 or more


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", sorted(set(SETTINGS) - FREE_FORM))
def test_a_bad_value_in_the_environment_names_the_setting(monkeypatch, name):
    monkeypatch.setenv(name, bad_value(name))
    with pytest.raises(ConfigError, match=name):
        load()


@pytest.mark.parametrize("name", sorted(set(SETTINGS) - FREE_FORM - set(BAD)))
def test_a_whole_number_setting_refuses_text_naming_the_setting(monkeypatch, name):
    monkeypatch.setenv(name, "ten")
    with pytest.raises(ConfigError, match=name):
        load()


def test_good_values_are_converted(monkeypatch):
    monkeypatch.setenv("REDIS_CLUSTER", "off")
    monkeypatch.setenv("TRUSTED_PROXIES", "2")
    monkeypatch.setenv("ADMIN_EMAILS", " Ops@Example.com , ,b@example.com")
    monkeypatch.setenv("LOG_FORMAT", " JSON ")
    values = load()
    assert values["REDIS_CLUSTER"] is False
    assert values["TRUSTED_PROXIES"] == 2
    assert values["LOG_FORMAT"] == "json"
    assert values["ADMIN_EMAILS"] == ["ops@example.com", "b@example.com"]


def test_a_real_backend_without_a_secret_key_names_it(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load()


REAL_REDIS = {"REDIS_URL": "redis://cache:6379/0"}
REAL_MONGODB = {"MONGODB_URI": "mongodb://db:27017/taskapp"}


@pytest.mark.parametrize("backend", [REAL_REDIS, REAL_MONGODB], ids=["redis", "mongodb"])
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 31, id="31-ascii"),
        pytest.param("é" * 15 + "k", id="16-chars-31-bytes"),
        pytest.param(b"k" * 31, id="31-bytes-object"),
    ],
)
def test_a_secret_key_shorter_than_32_bytes_is_refused_with_a_real_backend(backend, key):
    with pytest.raises(ConfigError, match=r"^setting SECRET_KEY is too short \(31 bytes\)") as err:
        load({**backend, "SECRET_KEY": key})
    assert "\n" not in str(err.value.message)  # one line
    assert "k" * 8 not in str(err.value.message)  # the value is never printed


@pytest.mark.parametrize("backend", [REAL_REDIS, REAL_MONGODB], ids=["redis", "mongodb"])
@pytest.mark.parametrize("key", ["k" * 32, "é" * 16, b"k" * 32], ids=["ascii", "utf8", "bytes"])
def test_a_secret_key_of_32_bytes_is_accepted_with_a_real_backend(backend, key):
    assert load({**backend, "SECRET_KEY": key})["SECRET_KEY"] == key


def test_a_short_secret_key_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://db:27017/taskapp")
    monkeypatch.setenv("SECRET_KEY", "changeme")
    with pytest.raises(ConfigError, match="setting SECRET_KEY is too short"):
        load()


def test_a_short_secret_key_is_accepted_in_the_embedded_mode():
    """Demos and unit tests on memory:// and mongomock:// sign nothing anyone else holds."""
    assert load({"SECRET_KEY": "dev"})["SECRET_KEY"] == "dev"


def test_write_behind_on_a_cluster_is_refused_naming_both_settings():
    with pytest.raises(ConfigError, match="TASK_WRITE_STRATEGY.*REDIS_CLUSTER"):
        load(
            {
                "REDIS_URL": "redis://cache:6379/0",
                "REDIS_CLUSTER": "1",
                "TASK_WRITE_STRATEGY": "write-behind",
                "SECRET_KEY": "x" * 32,
            }
        )


def test_a_waiter_waits_at_most_as_long_as_a_fill_can_take_unless_told_otherwise(monkeypatch):
    """CACHE_FILL_TIMEOUT follows the MongoDB bound: a fill's request has MONGODB_TIMEOUT_MS
    of MongoDB time in all (plus the simulated latency of its two reads)."""
    monkeypatch.setenv("MONGODB_TIMEOUT_MS", "1500")
    monkeypatch.setenv("SIMULATED_DB_LATENCY_MS", "250")
    assert load()["CACHE_FILL_TIMEOUT"] == 2.0
    monkeypatch.setenv("CACHE_FILL_TIMEOUT", "20")
    assert load()["CACHE_FILL_TIMEOUT"] == 20.0


APPENDONLY = "setting TASK_WRITE_STRATEGY=write-behind needs a Redis with appendonly yes"
WRITE_BEHIND = {"TASK_WRITE_STRATEGY": "write-behind", "SECRET_KEY": "x" * 32}


def started(overrides: dict) -> dict:
    """The settings, checked as start-up checks them: read, then the Redis they name."""
    values = load(overrides)
    check_redis(values)
    return values


def test_write_behind_on_the_embedded_redis_is_refused_naming_appendonly():
    with pytest.raises(ConfigError, match=f"^{APPENDONLY}: REDIS_URL='memory://'"):
        started({**WRITE_BEHIND, "REDIS_URL": "memory://"})
    allowed = started(
        {**WRITE_BEHIND, "REDIS_URL": "memory://", "WRITE_BEHIND_ALLOW_VOLATILE": "1"}
    )
    assert allowed["WRITE_BEHIND_ALLOW_VOLATILE"] is True


def test_write_behind_on_a_redis_without_appendonly_is_refused_unless_allowed(
    private_redis, durable_redis
):
    with pytest.raises(ConfigError, match=f"^{APPENDONLY}: .*appendonly no.*ALLOW_VOLATILE=1$"):
        started({**WRITE_BEHIND, "REDIS_URL": private_redis.url})
    started({**WRITE_BEHIND, "REDIS_URL": private_redis.url, "WRITE_BEHIND_ALLOW_VOLATILE": "1"})
    started({**WRITE_BEHIND, "REDIS_URL": durable_redis.url})
    started({"REDIS_URL": private_redis.url, "SECRET_KEY": "x" * 32})  # other strategies: no need


@pytest.mark.servers  # a redis-server of its own, evicting
def test_write_behind_on_a_redis_that_may_evict_its_queue_is_refused_unless_allowed():
    """allkeys-* may evict any key, the write-behind queue's too (it has no expiry): answered
    changes would be lost (tests/test_faults.py measured it); volatile-* never evicts it."""
    from tests.redis_server import RedisServer

    evicting = RedisServer(
        "--maxmemory-policy", "allkeys-lru", appendonly=True, appendfsync="always"
    )
    try:
        with pytest.raises(
            ConfigError,
            match="^setting TASK_WRITE_STRATEGY=write-behind needs a Redis that never evicts its "
            "queue: .*maxmemory-policy allkeys-lru.*ALLOW_VOLATILE=1$",
        ):
            started({**WRITE_BEHIND, "REDIS_URL": evicting.url})
        started({**WRITE_BEHIND, "REDIS_URL": evicting.url, "WRITE_BEHIND_ALLOW_VOLATILE": "1"})
        redis.Redis(port=evicting.port).config_set("maxmemory-policy", "volatile-lru")
        started({**WRITE_BEHIND, "REDIS_URL": evicting.url})
    finally:
        evicting.stop()


def test_write_behind_on_a_redis_that_may_lose_its_last_second_is_started_with_a_warning(
    durable_redis, caplog
):
    from tests.redis_server import RedisServer

    everysec = RedisServer(appendonly=True)  # Redis's default appendfsync
    try:
        started({**WRITE_BEHIND, "REDIS_URL": everysec.url})
    finally:
        everysec.stop()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "appendfsync everysec" in warned[0], warned
    assert "appendfsync always makes every answered change reach MongoDB" in warned[0]
    caplog.clear()
    started({**WRITE_BEHIND, "REDIS_URL": durable_redis.url})  # appendfsync always
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        (["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], "taskapp: "),
        (["flask", "--app", "taskapp", "write-behind", "status"], "Error: "),
    ],
    ids=["gunicorn", "cli"],
)
def test_gunicorn_and_the_cli_stop_with_one_line_naming_appendonly(private_redis, command, prefix):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.redis_server import free_port

    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(
        WRITE_BEHIND,
        REDIS_URL=private_redis.url,
        MONGODB_URI="mongodb://127.0.0.1:1/unused",
        GUNICORN_BIND=f"127.0.0.1:{free_port()}",
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prefix}{APPENDONLY}: the Redis at {private_redis.url}")
