"""Hostile clients and the caches: bad tokens, stale roles, secrets in keys, shared responses."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
import redis
from bson import ObjectId

from taskapp.models import User
from tests import api

SECRET = "test-secret-key-with-32-bytes-of-entropy!"  # make_app's SECRET_KEY
TASKS = "/api/v1/tasks"
STATS = "/api/v1/tasks/stats"
ACTIVITY = "/api/v1/activity"
PASSWORD = api.PASSWORD


@pytest.fixture(params=[True, False], ids=["fast-path", "flask-path"])
def app(make_app, request):
    """Every security test on both paths of a response-cache hit (taskapp.fastpath)."""
    return make_app(ADMIN_EMAILS="root@example.com,chief@example.com", HTTP_FAST_PATH=request.param)


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def account(client, email: str | None = None, password: str = PASSWORD) -> dict:
    """Register and log in: the user's id, email, token and Authorization headers."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    user_id, headers = api.account(client, email, password)
    token = headers["Authorization"].removeprefix("Bearer ")
    return {"id": user_id, "email": email, "token": token, "headers": headers}


def create(client, headers, title: str = "a task") -> dict:
    response = client.post(TASKS, json={"title": title}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def all_keys(redis_client, prefix: str) -> list[str]:
    return [k.decode() for k in redis_client.scan_iter(match=prefix + "*", count=1000)]


def claims(sub: str, **changes) -> dict:
    now = int(time.time())
    values = {"sub": sub, "sid": str(ObjectId()), "gen": 0, "typ": "access", "iat": now}
    values["exp"] = now + 600
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def tampered(token: str, sub: str) -> str:
    """The token with its payload replaced (another expiry, same user), the signature kept."""
    header, _, signature = token.split(".")
    payload = jwt.encode(claims(sub, exp=int(time.time()) + 99_999), SECRET, "HS256").split(".")[1]
    return f"{header}.{payload}.{signature}"


BAD_TOKENS = {
    "expired": lambda uid, token: jwt.encode(
        claims(uid, exp=int(time.time()) - 5), SECRET, "HS256"
    ),
    "wrongly-signed": lambda uid, token: jwt.encode(
        claims(uid), "another-secret-with-32-bytes-of-entropy", "HS256"
    ),
    "alg-none": lambda uid, token: jwt.encode(claims(uid), None, "none"),
    "alg-none-keeping-the-signature": lambda uid, token: (
        jwt.encode(claims(uid), None, "none") + token.split(".")[2]
    ),
    "tampered-payload": lambda uid, token: tampered(token, uid),
    "missing-exp": lambda uid, token: jwt.encode(claims(uid, exp=None), SECRET, "HS256"),
    "truncated-signature": lambda uid, token: token[:-4],
}


# Tokens and the response cache


@pytest.mark.parametrize("path", [TASKS, STATS, "task"])
def test_a_bad_token_is_401_even_for_a_url_cached_for_its_user(client, path):
    user = account(client)
    task = create(client, user["headers"], "cached secret")
    url = f"{TASKS}/{task['id']}" if path == "task" else path
    assert client.get(url, headers=user["headers"]).status_code == 200
    assert client.get(url, headers=user["headers"]).headers["X-Cache"] == "HIT"

    served = {}
    for kind, make in BAD_TOKENS.items():
        response = client.get(
            url, headers={"Authorization": f"Bearer {make(user['id'], user['token'])}"}
        )
        if (
            response.status_code != 401
            or response.get_json()["status"] != 401
            or "X-Cache" in response.headers
            or "ETag" in response.headers
            or b"cached secret" in response.data
        ):
            served[kind] = (response.status_code, dict(response.headers))
    assert served == {}, f"bad tokens not refused with a plain 401: {served}"
    assert client.get(url, headers=user["headers"]).headers["X-Cache"] == "HIT"  # still cached


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer"}])
def test_an_anonymous_get_of_a_cached_url_is_401(client, headers):
    user = account(client)
    create(client, user["headers"], "cached secret")
    for _ in range(2):
        assert client.get(TASKS, headers=user["headers"]).status_code == 200
    response = client.get(TASKS, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["status"] == 401
    assert b"cached secret" not in response.data
    assert "X-Cache" not in response.headers


# Roles


def test_a_demoted_admin_is_403_on_the_very_next_request(client):
    root = account(client, "root@example.com")
    chief = account(client, "chief@example.com")
    alice = account(client)
    admin_url = f"/api/v1/admin/users/{alice['id']}/tasks"
    for _ in range(2):  # warm every cache the admin route might use
        assert client.get(admin_url, headers=chief["headers"]).status_code == 200

    response = client.patch(
        f"/api/v1/admin/users/{chief['id']}", json={"role": "user"}, headers=root["headers"]
    )
    assert response.status_code == 200
    assert response.get_json()["role"] == "user"

    response = client.get(admin_url, headers=chief["headers"])  # same token, minted as admin
    assert response.status_code == 403
    assert response.get_json()["status"] == 403
    response = client.patch(
        f"/api/v1/admin/users/{root['id']}", json={"role": "user"}, headers=chief["headers"]
    )
    assert response.status_code == 403


def test_a_promoted_user_is_admin_on_the_very_next_request(client):
    root = account(client, "root@example.com")
    alice = account(client)
    admin_url = f"/api/v1/admin/users/{root['id']}/tasks"
    assert client.get(admin_url, headers=alice["headers"]).status_code == 403

    response = client.patch(
        f"/api/v1/admin/users/{alice['id']}", json={"role": "admin"}, headers=root["headers"]
    )
    assert response.status_code == 200

    assert client.get(admin_url, headers=alice["headers"]).status_code == 200


# What Redis holds


@pytest.fixture
def exercised(client, key_prefix):
    """An account used through every route that touches Redis, with an email that has a tag."""
    email = "eve+tag@example.com"
    user = account(client, email)
    assert (
        client.post(
            "/api/v1/auth/login", json={"email": email, "password": "wrong password"}
        ).status_code
        == 401
    )
    task = create(client, user["headers"], "first")
    create(client, user["headers"], "second")
    query = "page=1&per_page=10&completed=true"
    for url in (
        f"{TASKS}?{query}",
        f"{TASKS}?page=1&per_page=10&completed=false",
        f"{TASKS}/{task['id']}",
        STATS,
        f"{ACTIVITY}?limit=20",
    ):
        for _ in range(2):
            assert client.get(url, headers=user["headers"]).status_code == 200
    assert (
        client.patch(
            f"{TASKS}/{task['id']}", json={"completed": True}, headers=user["headers"]
        ).status_code
        == 200
    )
    assert client.get(f"{TASKS}?{query}", headers=user["headers"]).status_code == 200
    with client.application.app_context():
        password_hash = User.objects(email=email).first().password_hash
    return {**user, "query": query, "password_hash": password_hash}


def test_no_token_password_hash_email_or_raw_query_string_is_part_of_a_redis_key(
    app, exercised, redis_client, key_prefix
):
    found = all_keys(redis_client, key_prefix)
    assert any(":http:" in k for k in found)  # the response cache was used
    assert any(k.startswith(key_prefix + "login:email:") for k in found)  # and the limiter
    token = exercised["token"]
    hash_parts = [p for p in exercised["password_hash"].split("$") if len(p) >= 8]
    query = exercised["query"]
    forbidden = [
        token,
        *token.split("."),
        exercised["password_hash"],
        *hash_parts,
        exercised["email"],
        "eve+tag",
        "example.com",
        "127.0.0.1",
        query,
        "&".join(sorted(query.split("&"))),
        "per_page=",
        "completed=",
    ]
    for key in found:
        for secret in forbidden:
            assert secret not in key, f"{secret!r} is part of the Redis key {key!r}"


def test_no_password_hash_is_in_any_cached_value(app, exercised, redis_client, key_prefix):
    salt_and_hash = [p for p in exercised["password_hash"].split("$") if len(p) >= 16]
    values = []
    for key in all_keys(redis_client, key_prefix):
        kind = redis_client.type(key).decode()
        if kind == "string":
            values.append(redis_client.get(key))
        elif kind == "list":
            values += redis_client.lrange(key, 0, -1)
        elif kind == "zset":
            values += redis_client.zrange(key, 0, -1)
        elif kind == "hash":
            for field, value in redis_client.hgetall(key).items():
                values += [field, value]
        elif kind == "set":
            values += list(redis_client.smembers(key))
    assert values
    for value in values:
        assert b"$argon2" not in value
        for part in salt_and_hash:
            assert part.encode() not in value
        assert exercised["token"].encode() not in value


# ETags and shared responses


def test_an_etag_of_one_user_never_answers_304_to_another(client):
    alice, bob = account(client), account(client)
    first = client.get(TASKS, headers=alice["headers"])
    etag = first.headers["ETag"]
    assert first.get_json() == {"items": [], "page": 1, "per_page": 10, "total": 0}

    for expected_cache in ("MISS", "HIT"):
        response = client.get(TASKS, headers={**bob["headers"], "If-None-Match": etag})
        assert response.status_code == 200
        assert response.headers["X-Cache"] == expected_cache
        assert response.get_json() == first.get_json()  # identical bodies, distinct ETags
        assert response.headers["ETag"] != etag


def test_a_users_own_current_etag_answers_304_with_an_empty_body(client):
    alice = account(client)
    etag = client.get(TASKS, headers=alice["headers"]).headers["ETag"]
    response = client.get(TASKS, headers={**alice["headers"], "If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "private, no-cache"
    assert "Authorization" in response.headers["Vary"]

    create(client, alice["headers"])  # the list changed: the old ETag is stale
    response = client.get(TASKS, headers={**alice["headers"], "If-None-Match": etag})
    assert response.status_code == 200
    assert response.get_json()["total"] == 1


def test_a_response_cached_for_one_user_is_never_served_to_another(client):
    alice, bob = account(client), account(client)
    task = create(client, alice["headers"], "alice's secret")
    for url in (TASKS, STATS, ACTIVITY, f"{TASKS}/{task['id']}"):
        assert client.get(url, headers=alice["headers"]).headers["X-Cache"] == "MISS"
        assert client.get(url, headers=alice["headers"]).headers["X-Cache"] == "HIT"

    response = client.get(TASKS, headers=bob["headers"])
    assert response.headers["X-Cache"] == "MISS"
    assert response.get_json()["total"] == 0
    response = client.get(STATS, headers=bob["headers"])
    assert response.headers["X-Cache"] == "MISS"
    assert response.get_json()["total"] == 0
    response = client.get(ACTIVITY, headers=bob["headers"])
    assert response.get_json() == {"items": []}
    response = client.get(f"{TASKS}/{task['id']}", headers=bob["headers"])
    assert response.status_code == 404
    for url in (TASKS, STATS, ACTIVITY, f"{TASKS}/{task['id']}"):
        response = client.get(url, headers=bob["headers"])
        assert b"alice's secret" not in response.data


@pytest.mark.parametrize("path", [TASKS, STATS, ACTIVITY, "task"])
def test_cached_gets_are_private_no_cache_and_vary_on_authorization(client, path):
    user = account(client)
    task = create(client, user["headers"])
    url = f"{TASKS}/{task['id']}" if path == "task" else path
    for expected in ("MISS", "HIT"):
        response = client.get(url, headers=user["headers"])
        assert response.status_code == 200
        assert response.headers["X-Cache"] == expected
        assert response.headers["Cache-Control"] == "private, no-cache"
        assert "Authorization" in response.headers["Vary"]
        assert response.headers["ETag"].startswith('"')


def test_a_response_other_than_200_is_never_stored(client, redis_client, key_prefix):
    user = account(client)
    missing = f"{TASKS}/{ObjectId()}"
    for url in (missing, missing, f"{TASKS}?per_page=1000", f"{TASKS}?per_page=1000"):
        response = client.get(url, headers=user["headers"])
        assert response.status_code in (404, 422)
        assert "X-Cache" not in response.headers
    entries = key_prefix + "{u:"  # responses, not the versions and locks derived from their keys
    assert [
        k for k in all_keys(redis_client, key_prefix) if k.startswith(entries) and ":http:" in k
    ] == []

    assert client.get(TASKS, headers=user["headers"]).status_code == 200  # the check can fail
    assert [
        k for k in all_keys(redis_client, key_prefix) if k.startswith(entries) and ":http:" in k
    ] != []
