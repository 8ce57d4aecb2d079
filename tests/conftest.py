"""Shared fixtures: a redis-server and a FerretDB (MongoDB wire protocol) started by the session.

``TEST_REDIS_URL`` / ``--redis-url`` and ``TEST_MONGODB_URI`` / ``--mongodb-uri`` point the tests
at servers you already run instead. Each test has a key prefix and a database of its own, and
removes only those, so tests can run in parallel (pytest-xdist: each worker starts its own
session servers).

A test that starts servers of its own (gunicorn, a private redis-server, a Redis Cluster, nginx,
Chromium) is marked ``servers``, by the fixture it asks for or by hand; ``--fast`` leaves those
out, and a test that starts one of these programs without the mark fails saying so.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest
import redis

from taskapp import create_app

# Fixtures that start servers of the test's own: asking for one (directly or through another
# fixture) marks a test ``servers``. A fixture that starts one and is missing here shows up as
# a failure of ``unmarked_tests_start_no_server``.
SERVER_FIXTURES = frozenset(
    {
        "serve",  # gunicorn (tests/test_gunicorn.py); nginx and Chromium come with it
        "browser",  # Chromium (tests/test_browser.py)
        "private_redis",
        "durable_redis",
        "make_redis",
        "redis_cluster",
        "outage",  # a redis-server (tests/test_flask_caching.py)
        "ferretdb",  # FerretDBs of a test's own (tests/test_mongodb_faults.py, ...)
        "private_mongodb",
        "private_ferretdb",
    }
)
# Programs a test not marked ``servers`` must not start (see ``unmarked_tests_start_no_server``).
SERVER_PROGRAMS = frozenset({"gunicorn", "redis-server", "nginx", "chromium", "ferretdb"})


def pytest_addoption(parser):
    parser.addoption(
        "--fast",
        action="store_true",
        help="only the tests that start no server of their own (deselects those marked servers)",
    )
    parser.addoption(
        "--redis-url",
        default=os.environ.get("TEST_REDIS_URL", ""),
        help="a redis-server you run (only the tests' keys are removed); default: start one",
    )
    parser.addoption(
        "--mongodb-uri",
        default=os.environ.get("TEST_MONGODB_URI", ""),
        help="a MongoDB (or FerretDB) you run (tests use databases of their own); default: start FerretDB",
    )


def pytest_collection_modifyitems(config, items):
    """Mark ``servers`` the tests that ask for a server fixture; with ``--fast``, leave them out."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
    if config.getoption("--fast"):
        fast = [item for item in items if item.get_closest_marker("servers") is None]
        deselected = [item for item in items if item.get_closest_marker("servers") is not None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = fast


@pytest.fixture(autouse=True)
def unmarked_tests_start_no_server(request, monkeypatch):
    """Fail a test that starts a server program without the ``servers`` mark, so ``--fast`` stays
    the tier that starts none (the session's own servers start before this fixture runs)."""
    if request.node.get_closest_marker("servers") is not None:
        return

    class Popen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            program = args if isinstance(args, str | os.PathLike) else args[0]
            if Path(str(program).split()[0]).name in SERVER_PROGRAMS:
                pytest.fail(
                    f"{request.node.nodeid} starts {program}: mark it @pytest.mark.servers",
                    pytrace=False,
                )
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Popen)


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashes():
    """argon2id at its lowest cost in the test process: the app's default (64 MiB, 3 passes) costs
    about a second per account on this suite's machines, and hundreds of tests make one. The
    hashes stay argon2id; gunicorn and other child processes keep the app's own cost."""
    from argon2 import PasswordHasher

    from taskapp import models

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        models._dummy_hash.cache_clear()
        yield
    models._dummy_hash.cache_clear()


@pytest.fixture(scope="session")
def redis_url(request) -> str:
    """The test Redis URL, probed once: a missing server fails the run instead of skipping tests.

    The session's server keeps an AOF (``appendonly yes``), as write-behind requires; a
    ``--redis-url`` of yours needs it too for the write-behind tests.
    """
    url = request.config.getoption("--redis-url")
    if not url:
        from tests.redis_server import RedisServer

        server = RedisServer(appendonly=True)
        request.addfinalizer(server.stop)
        url = server.url
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(f"no redis-server answers at {url} ({exc})", returncode=3)
    finally:
        client.close()
    return url


@pytest.fixture
def key_prefix(redis_url) -> str:
    """A key prefix of this test alone; its keys are deleted afterwards (SCAN, never KEYS)."""
    prefix = f"taskapp-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete the keys under ``prefix`` (SCAN, never KEYS): only a test's own keys."""
    client = redis.Redis.from_url(redis_url)
    try:
        batch = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
def mongodb_server_uri(request) -> str:
    """The test MongoDB server: ``--mongodb-uri``, else a FerretDB started for the session."""
    uri = request.config.getoption("--mongodb-uri")
    if not uri:
        from tests.ferretdb import FerretDBServer

        server = FerretDBServer()
        request.addfinalizer(server.stop)
        uri = server.url
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        pytest.exit(f"no MongoDB answers at {uri} ({exc})", returncode=3)
    finally:
        client.close()
    return uri


def database_uri(server_uri: str) -> str:
    """A database of its own on the server of ``server_uri``."""
    parts = urlsplit(server_uri)
    return urlunsplit(parts._replace(path=f"/taskapp_test_{uuid.uuid4().hex[:12]}"))


@pytest.fixture
def mongodb_uri(mongodb_server_uri):
    """A database of this test alone on the test MongoDB, dropped afterwards."""
    uri = database_uri(mongodb_server_uri)
    yield uri
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
    try:
        client.drop_database(urlsplit(uri).path.lstrip("/"))
    except pymongo.errors.PyMongoError:
        pass  # a test that stopped the server; its files go with the server's folder
    finally:
        client.close()


@pytest.fixture
def make_app(redis_url, key_prefix, mongodb_uri):
    """Build apps with the test settings; ``redis="memory"`` selects the embedded fakeredis."""
    made = []

    def factory(redis: str = "real", **overrides):
        config = {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-with-32-bytes-of-entropy!",
            "REDIS_URL": redis_url if redis == "real" else "memory://",
            "CACHE_KEY_PREFIX": key_prefix,
            "MONGODB_URI": mongodb_uri,
            "RATE_LIMIT_PER_MINUTE": 100000,
            "LOGIN_RATE_LIMIT_PER_MINUTE": 1000,
            "REGISTER_RATE_LIMIT_PER_MINUTE": 1000,
            "ANON_RATE_LIMIT_PER_MINUTE": 100000,
        }
        config.update(overrides)
        app = create_app(config)
        made.append(app)
        return app

    yield factory
    for app in made:
        from taskapp import db
        from taskapp.extensions import cache

        with app.app_context():
            cache.close()
            db.current().close()


@pytest.fixture(params=["real", "memory"])
def backend(request) -> str:
    """Run a test on the real redis-server and on the embedded memory:// backend."""
    return request.param


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def register(client):
    """Register and log in a user; return the Authorization headers."""

    from tests.api import account

    def do(email: str | None = None, **kwargs: str) -> dict[str, str]:
        return account(client, email, **kwargs)[1]

    return do


@pytest.fixture
def private_redis():
    """A redis-server of this test alone, to pause, kill and restart (restarted empty: no AOF)."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def durable_redis():
    """A redis-server of this test alone that keeps every answered write through a crash
    (``appendonly yes``, ``appendfsync always``), as write-behind's promise needs."""
    from tests.redis_server import RedisServer

    server = RedisServer(appendonly=True, appendfsync="always")
    yield server
    server.stop()


@pytest.fixture
def make_redis():
    """redis-servers of this test alone, each started with the given redis-server arguments
    (asked for before a gunicorn fixture, so stopped after gunicorn)."""
    from tests.redis_server import RedisServer

    made: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        made.append(RedisServer(*args))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster on loopback ports, shared by the cluster tests of the session."""
    from tests.redis_server import RedisClusterServers

    cluster = RedisClusterServers()
    yield cluster
    cluster.stop()
