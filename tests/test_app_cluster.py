"""The whole API on a real 3-master Redis Cluster: every key of a user in one slot, no CROSSSLOT."""

from __future__ import annotations

import uuid

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from taskapp import keys
from taskapp.cache.scope_state import Window
from taskapp.extensions import cache
from tests import api
from tests.api import cache_errors

TASKS = "/api/v1/tasks"
STATS = "/api/v1/tasks/stats"
ACTIVITY = "/api/v1/activity"


@pytest.fixture
def app(make_app, redis_cluster, key_prefix):
    app = make_app(REDIS_URL=redis_cluster.url, REDIS_CLUSTER=True)
    yield app
    with app.app_context():
        cache.close()  # first, so no background flush writes a key after the clean-up
    # conftest cleans the single test server only: SCAN every master of the cluster.
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        for key in list(client.scan_iter(match=key_prefix + "*", count=1000)):
            client.delete(key)
        assert list(client.scan_iter(match=key_prefix + "*")) == []
    finally:
        client.close()


def account(client) -> tuple[str, str, dict[str, str]]:
    """Register and log in a new user: their id, email and Authorization headers."""
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    user_id, headers = api.account(client, email)
    return user_id, email, headers


def node_of(app, user_id: str) -> str:
    """The cluster node that holds a user's keys."""
    with app.app_context():
        full_key = cache.keys.entry(keys.task(user_id, "0" * 24))
        node = cache.client.get_node_from_key(full_key)
        return f"{node.host}:{node.port}"


def exercise(client, headers, title: str) -> tuple[dict, set[str]]:
    """Every route of one user, asserting each answer: the task left behind, every task id used."""
    response = client.post(TASKS, json={"title": title, "priority": "high"}, headers=headers)
    assert response.status_code == 201
    task = response.get_json()
    doomed = client.post(TASKS, json={"title": f"{title} (doomed)"}, headers=headers).get_json()
    url = f"{TASKS}/{task['id']}"

    first, second = client.get(url, headers=headers), client.get(url, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.get_json() == second.get_json() == task

    response = client.patch(url, json={"completed": True}, headers=headers)
    assert response.status_code == 200
    changed = response.get_json()
    assert changed["completed"] is True
    response = client.get(url, headers=headers)
    assert response.headers["X-Cache"] == "MISS"
    assert response.get_json() == changed

    for _ in range(2):
        page = client.get(f"{TASKS}?per_page=5", headers=headers).get_json()
        assert [item["title"] for item in page["items"]] == [f"{title} (doomed)", title]
        stats = client.get(STATS, headers=headers).get_json()
        assert stats == {"total": 2, "completed": 1, "open": 1, "overdue": 0}
    assert client.get(STATS, headers=headers).headers["X-Cache"] == "HIT"

    feed = client.get(ACTIVITY, headers=headers).get_json()["items"]
    assert [item["action"] for item in feed] == ["updated", "created", "created"]

    assert client.delete(f"{TASKS}/{doomed['id']}", headers=headers).status_code == 204
    assert client.get(f"{TASKS}/{doomed['id']}", headers=headers).status_code == 404
    assert client.get(STATS, headers=headers).get_json()["total"] == 1
    feed = client.get(ACTIVITY, headers=headers).get_json()["items"]
    assert [item["action"] for item in feed] == ["deleted", "updated", "created", "created"]
    return changed, {task["id"], doomed["id"]}


def test_the_api_on_a_redis_cluster_keeps_users_apart_without_a_redis_error(
    app, client, key_prefix
):
    errors_before = cache_errors()
    alice_id, alice_email, alice = account(client)
    # A second user whose keys live on another master, so both paths of the cluster client run.
    for _ in range(20):
        bob_id, _, bob = account(client)
        if node_of(app, bob_id) != node_of(app, alice_id):
            break
    else:
        pytest.fail("no user landed on a second cluster node in 20 tries")
    assert key_slot(f"{{u:{alice_id}}}".encode()) != key_slot(f"{{u:{bob_id}}}".encode())

    alice_task, alice_ids = exercise(client, alice, "alice's task")
    bob_task, bob_ids = exercise(client, bob, "bob's task")

    # Each user sees only their own data, cached or not.
    for user, own, own_ids, other in (
        (alice, alice_task, alice_ids, bob_task),
        (bob, bob_task, bob_ids, alice_task),
    ):
        assert client.get(f"{TASKS}/{other['id']}", headers=user).status_code == 404
        assert (
            client.patch(
                f"{TASKS}/{other['id']}", json={"title": "hijacked"}, headers=user
            ).status_code
            == 404
        )
        assert client.delete(f"{TASKS}/{other['id']}", headers=user).status_code == 404
        for _ in range(2):
            page = client.get(TASKS, headers=user).get_json()
            assert [item["id"] for item in page["items"]] == [own["id"]]
            assert client.get(f"{TASKS}/{own['id']}", headers=user).get_json() == own
        feed = client.get(ACTIVITY, headers=user).get_json()["items"]
        assert {item["task_id"] for item in feed} == own_ids

    with app.app_context():
        # The login limiter ran on the cluster: one attempt in the window of alice's email.
        window = cache.keys.entry(keys.login_limit("email", alice_email))
        assert Window.decode(cache.client.get(window)).total == 1
        # The user's keys all share the user's slot (what keeps every script in one slot).
        for user_id in (alice_id, bob_id):
            tag = f"{{u:{user_id}}}"
            user_keys = [
                k.decode() for k in cache.client.scan_iter(match=f"{key_prefix}*{tag}*", count=1000)
            ]
            assert any(":http:" in k for k in user_keys)
            assert {key_slot(k.encode()) for k in user_keys} == {key_slot(tag.encode())}
        assert not cache.degraded
    assert cache_errors() == errors_before, "a Redis operation failed on the cluster"
