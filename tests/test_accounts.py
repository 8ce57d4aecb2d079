"""Logins and their tokens: refresh with reuse detection, logout, password change, account
deletion, revocation when Redis loses or cannot serve its keys, and the anonymous rate limit."""

from __future__ import annotations

import threading
import time
import uuid

import pymongo
import pytest
import redis
from bson import ObjectId

from taskapp import keys
from taskapp.cache.entry import NO_VALUE
from taskapp.extensions import cache
from taskapp.models import Activity, Session, Task, User
from tests.api import PASSWORD

REGISTER, LOGIN, REFRESH = "/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/refresh"
LOGOUT, PASSWORD_URL, ME = "/api/v1/auth/logout", "/api/v1/auth/password", "/api/v1/auth/me"
TASKS = "/api/v1/tasks"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_up(client, email: str | None = None) -> tuple[str, str]:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post(REGISTER, json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"], email


def log_in(client, email: str, password: str = PASSWORD) -> dict:
    response = client.post(LOGIN, json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refresh(client, token: str):
    return client.post(REFRESH, json={"refresh_token": token})


def cached_task(client, access: str) -> str:
    """A task of the caller whose GET was answered from the response cache: its path."""
    task = client.post(TASKS, json={"title": "cached"}, headers=bearer(access)).get_json()
    path = f"{TASKS}/{task['id']}"
    client.get(path, headers=bearer(access))
    assert client.get(path, headers=bearer(access)).headers["X-Cache"] == "HIT"
    return path


# Refresh tokens


def test_login_answers_a_refresh_token_that_a_refresh_exchanges_for_a_new_pair(client):
    _, email = sign_up(client)
    pair = log_in(client, email)
    assert set(pair) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert pair["expires_in"] == 900  # ACCESS_TOKEN_TTL's default
    renewed = refresh(client, pair["refresh_token"])
    assert renewed.status_code == 200
    body = renewed.get_json()
    assert body["refresh_token"] != pair["refresh_token"]
    assert renewed.headers["Cache-Control"] == "no-store"
    assert client.get(ME, headers=bearer(body["access_token"])).status_code == 200
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 200  # same login


def test_a_reused_refresh_token_revokes_every_token_of_its_login(client):
    _, email = sign_up(client)
    pair = log_in(client, email)
    other_login = log_in(client, email)
    renewed = refresh(client, pair["refresh_token"]).get_json()
    path = cached_task(client, renewed["access_token"])

    reused = refresh(client, pair["refresh_token"])

    assert reused.status_code == 401
    assert "already used" in reused.get_json()["detail"]
    for token in (pair["access_token"], renewed["access_token"]):
        assert client.get(path, headers=bearer(token)).status_code == 401
    assert refresh(client, renewed["refresh_token"]).status_code == 401
    # Another login of the same user is not affected.
    assert client.get(path, headers=bearer(other_login["access_token"])).status_code == 200


@pytest.mark.parametrize("kind", ["access-as-refresh", "refresh-as-access"])
def test_a_token_of_one_kind_is_not_accepted_as_the_other(client, kind):
    _, email = sign_up(client)
    pair = log_in(client, email)
    if kind == "access-as-refresh":
        assert refresh(client, pair["access_token"]).status_code == 401
    else:
        assert client.get(ME, headers=bearer(pair["refresh_token"])).status_code == 401


def _is_ferretdb(uri: str) -> bool:
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
    try:
        return "ferretdbVersion" in client.admin.command("buildInfo")
    finally:
        client.close()


def concurrent_refreshes(app, email: str, rounds: int = 10) -> list[list[int]]:
    """``rounds`` times: log in, then refresh its token from two threads at once: the statuses,
    and then, for a refresh that succeeded, its new access token's status on ``/auth/me``."""
    client = app.test_client()
    outcomes = []
    for _ in range(rounds):
        token = log_in(client, email)["refresh_token"]
        barrier = threading.Barrier(2)
        answers: list = []

        def attempt(token=token, barrier=barrier, answers=answers) -> None:
            barrier.wait()
            answers.append(refresh(app.test_client(), token))

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        after = [
            client.get(ME, headers=bearer(a.get_json()["access_token"])).status_code
            for a in answers
            if a.status_code == 200
        ]
        outcomes.append(sorted(a.status_code for a in answers) + after)
    return outcomes


def test_of_two_concurrent_refreshes_of_one_token_at_most_one_succeeds_and_the_login_ends(app):
    """Redis marks a refresh token's first presentation (SET NX): single use even where MongoDB
    loses one of two concurrent updates of a document (FerretDB 1.24, issue 16 finding 7). The
    second presentation is a reuse, which revokes the login: before the first one's rotation
    (both 401) or after it (its new tokens are refused from then on)."""
    _, email = sign_up(app.test_client())
    outcomes = concurrent_refreshes(app, email)
    assert all(outcome in ([200, 401, 401], [401, 401]) for outcome in outcomes), outcomes


def test_with_redis_down_two_concurrent_refreshes_of_one_token_at_most_one_succeeds(
    make_app, private_redis, mongodb_server_uri
):
    """Without Redis, MongoDB's conditional rotation alone decides. FerretDB 1.24 loses
    concurrent updates of one document, so only a real MongoDB (``--mongodb-uri``) can show it."""
    if _is_ferretdb(mongodb_server_uri):
        pytest.skip("FerretDB loses concurrent single-document updates; run with --mongodb-uri")
    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_COOLDOWN=60)
    _, email = sign_up(app.test_client())
    private_redis.kill()
    outcomes = concurrent_refreshes(app, email)
    assert all(outcome in ([200, 401, 401], [401, 401]) for outcome in outcomes), outcomes


@pytest.mark.parametrize("left", [600, 1209600], ids=["10-minutes-left", "just-issued"])
def test_a_refresh_claim_lives_as_long_as_the_refresh_token_it_guards(
    app, monkeypatch, redis_url, key_prefix, left
):
    """The mark of a refresh token's presentation outlives the token (its ``exp``, plus the
    clock margin), never REFRESH_TOKEN_TTL from the presentation: a token presented 10 minutes
    before it expires leaves a claim of about 11 minutes, not 14 days."""
    from types import SimpleNamespace

    from taskapp.auth import tokens

    client = app.test_client()
    user_id, email = sign_up(client)
    issued = time.time() - (app.config["REFRESH_TOKEN_TTL"] - left)
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: issued))
    token = log_in(client, email)["refresh_token"]  # issued ``left`` seconds before its exp
    monkeypatch.undo()
    assert refresh(client, token).status_code == 200
    server = redis.Redis.from_url(redis_url)
    try:
        (claim,) = server.scan_iter(match=f"{key_prefix}{{u:{user_id}}}:refreshed:*")
        ttl_ms = server.pttl(claim)
    finally:
        server.close()
    longest = (left + tokens.CLOCK_MARGIN_S) * 1000
    assert longest - 10_000 < ttl_ms <= longest, ttl_ms


# Logout and password change


def test_logout_refuses_the_access_and_refresh_tokens_of_that_login_only(client):
    _, email = sign_up(client)
    pair, other = log_in(client, email), log_in(client, email)
    path = cached_task(client, pair["access_token"])
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    response = client.get(path, headers=bearer(pair["access_token"]))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert (
        client.post(TASKS, json={"title": "x"}, headers=bearer(pair["access_token"])).status_code
        == 401
    )
    assert refresh(client, pair["refresh_token"]).status_code == 401
    assert client.get(path, headers=bearer(other["access_token"])).status_code == 200


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "flask-path"])
@pytest.mark.parametrize("rate_limit", [100000, 0], ids=["rate-limit-on", "rate-limit-off"])
def test_a_logged_out_token_is_refused_for_a_cached_answer_on_either_path(
    make_app, fast_path, rate_limit
):
    app = make_app(HTTP_FAST_PATH=fast_path, RATE_LIMIT_PER_MINUTE=rate_limit)
    client = app.test_client()
    _, email = sign_up(client)
    pair = log_in(client, email)
    path = cached_task(client, pair["access_token"])
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401


def test_a_password_change_refuses_every_token_issued_before(client):
    _, email = sign_up(client)
    pair, other = log_in(client, email), log_in(client, email)
    path = cached_task(client, other["access_token"])
    change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    assert (
        client.post(PASSWORD_URL, json=change, headers=bearer(pair["access_token"])).status_code
        == 204
    )
    for old in (pair, other):
        assert client.get(path, headers=bearer(old["access_token"])).status_code == 401
        assert refresh(client, old["refresh_token"]).status_code == 401
    assert client.post(LOGIN, json={"email": email, "password": PASSWORD}).status_code == 401
    fresh = log_in(client, email, "a brand new passphrase")
    assert client.get(path, headers=bearer(fresh["access_token"])).status_code == 200


def test_a_password_change_with_a_wrong_current_password_is_403_and_changes_nothing(client):
    _, email = sign_up(client)
    pair = log_in(client, email)
    change = {"current_password": "not it at all", "new_password": "a brand new passphrase"}
    response = client.post(PASSWORD_URL, json=change, headers=bearer(pair["access_token"]))
    assert response.status_code == 403
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 200
    log_in(client, email)


# Account deletion


def cached_state(user_id: str, path: str) -> dict[str, bool]:
    """Which of the user's entries the cache still serves, asked through its public API: the
    task (the task service's read), the task's cached response, the activity feed."""
    task_id = path.rsplit("/", 1)[1]
    entry, lease = cache.lookup(
        keys.response(user_id, "GET", path, ""), [keys.responses_tag(user_id)]
    )
    if lease is not None:
        cache.release(lease)
    feed = cache.list_get(keys.activity(user_id), 20, lambda: ["not cached"], 100, 60)
    return {
        "task": cache.get(keys.task(user_id, task_id)) is not NO_VALUE,
        "response": entry is not None,
        "activity": feed != ["not cached"],
    }


def test_deleting_the_account_removes_its_data_and_cache_entries_and_frees_the_email(app, client):
    user_id, email = sign_up(client)
    pair = log_in(client, email)
    path = cached_task(client, pair["access_token"])
    client.get(f"{TASKS}/stats", headers=bearer(pair["access_token"]))
    client.get("/api/v1/activity", headers=bearer(pair["access_token"]))
    other_id, other_email = sign_up(client)
    other_path = cached_task(client, log_in(client, other_email)["access_token"])
    with app.app_context():
        assert cached_state(user_id, path) == {"task": True, "response": True, "activity": True}

    assert client.delete(ME, headers=bearer(pair["access_token"])).status_code == 204

    assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401
    create = client.post(TASKS, json={"title": "x"}, headers=bearer(pair["access_token"]))
    assert create.status_code == 401
    assert refresh(client, pair["refresh_token"]).status_code == 401
    with app.app_context():
        assert cached_state(user_id, path) == {"task": False, "response": False, "activity": False}
        oid = ObjectId(user_id)
        assert User.objects(id=oid).count() == 0
        assert Task.objects(owner=oid).count() == 0
        assert Activity.objects(user=oid).count() == 0
        assert Session.objects(user=oid).count() == 0
        assert Task.objects(owner=ObjectId(other_id)).count() == 1
    again_id, _ = sign_up(client, email)
    assert again_id != user_id
    assert log_in(client, email)["access_token"]
    other = log_in(client, other_email)
    assert client.get(other_path, headers=bearer(other["access_token"])).status_code == 200


# When Redis loses or cannot serve the revocations


def test_a_revoked_token_stays_refused_when_redis_loses_the_revocation_key(
    client, redis_url, key_prefix
):
    """A missing key is rebuilt from MongoDB, never read as "nothing revoked"."""
    user_id, email = sign_up(client)
    pair, other = log_in(client, email), log_in(client, email)
    path = cached_task(client, other["access_token"])
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    direct = redis.Redis.from_url(redis_url)
    key = f"{key_prefix}{keys.revocation(user_id)}"
    assert direct.delete(key) == 1  # as after a restart, a flush or an eviction
    assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401
    assert direct.exists(key)  # rebuilt
    assert client.get(path, headers=bearer(other["access_token"])).status_code == 200
    direct.delete(key)
    assert client.get(path, headers=bearer(other["access_token"])).status_code == 200
    assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401
    direct.close()


def test_a_revoked_token_stays_refused_when_redis_comes_back_from_an_older_snapshot(
    make_app, private_redis
):
    """A revocation hash restored from disk (built before the logout, by an earlier run of the
    server) counts as missing: it is rebuilt from MongoDB, never read as "nothing revoked"."""
    import time

    from taskapp.extensions import cache

    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_COOLDOWN=0.2)
    client = app.test_client()
    _, email = sign_up(client)
    pair = log_in(client, email)
    path = cached_task(client, pair["access_token"])  # the user's revocation hash is built
    redis.Redis.from_url(private_redis.url).save()  # the snapshot: nothing revoked yet
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    private_redis.kill()
    private_redis.start()  # from the snapshot: the hash, without the logout
    statuses = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        statuses.append(client.get(path, headers=bearer(pair["access_token"])).status_code)
        time.sleep(0.05)
    with app.app_context():
        assert not cache.degraded  # the last answers were checked in Redis, not in MongoDB
    assert set(statuses) == {401}


def test_while_redis_is_down_revoked_tokens_are_refused_by_mongodb(make_app, private_redis):
    app = make_app(REDIS_URL=private_redis.url, CACHE_BREAKER_COOLDOWN=0.5)
    client = app.test_client()
    _, email = sign_up(client)
    pair, other = log_in(client, email), log_in(client, email)
    path = cached_task(client, other["access_token"])
    private_redis.kill()
    try:
        assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
        assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401
        assert client.get(path, headers=bearer(other["access_token"])).status_code == 200
        change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
        third = log_in(client, email)
        response = client.post(PASSWORD_URL, json=change, headers=bearer(third["access_token"]))
        assert response.status_code == 204
        assert client.get(path, headers=bearer(other["access_token"])).status_code == 401
        fresh = log_in(client, email, "a brand new passphrase")
        assert client.get(path, headers=bearer(fresh["access_token"])).status_code == 200
    finally:
        private_redis.start()
    # Redis came back empty: the revocation key is rebuilt from MongoDB.
    assert client.get(path, headers=bearer(pair["access_token"])).status_code == 401


# Sessions in MongoDB: deleted by later logins once no token of theirs can be used


def session_of(pair: dict) -> ObjectId:
    """The id of the login (session) a token pair belongs to."""
    import jwt

    return ObjectId(jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"])


def move_back(app, session_id: ObjectId, seconds: float) -> None:
    """Make a session's expiry (and revocation) ``seconds`` older: time passing, for MongoDB."""
    from datetime import timedelta

    with app.app_context():
        session = Session.objects.get(id=session_id)
        changes = {"expires_at": session.expires_at - timedelta(seconds=seconds)}
        if session.revoked_at is not None:
            changes["revoked_at"] = session.revoked_at - timedelta(seconds=seconds)
        Session.objects(id=session_id).update(**{f"set__{k}": v for k, v in changes.items()})


def stored_sessions(app, *session_ids: ObjectId) -> set[ObjectId]:
    with app.app_context():
        return {s.id for s in Session.objects(id__in=session_ids)}


@pytest.fixture
def purge_each_login(monkeypatch):
    """Every login purges (not one per process and minute), so a test sees each purge."""
    from taskapp.auth import service

    monkeypatch.setattr(service, "PURGE_INTERVAL_S", 0.0)


def test_a_login_deletes_the_sessions_no_token_can_use_any_more(app, purge_each_login):
    """A session is deleted ACCESS_TOKEN_TTL (plus the clock margin) after its refresh token
    expired, when its access tokens have expired too; not before. FerretDB 1.24 has no TTL
    index, so later logins (of any user) delete it."""
    from taskapp.auth.tokens import CLOCK_MARGIN_S

    client = app.test_client()
    _, email = sign_up(client)
    dead, kept, live = (session_of(log_in(client, email)) for _ in range(3))
    grace = app.config["ACCESS_TOKEN_TTL"] + CLOCK_MARGIN_S
    refresh_ttl = app.config["REFRESH_TOKEN_TTL"]
    move_back(app, dead, refresh_ttl + grace + 5)  # refresh token expired grace + 5 s ago
    move_back(app, kept, refresh_ttl + grace - 30)  # 30 s before it may go
    log_in(client, sign_up(client)[1])  # another user's login
    assert stored_sessions(app, dead, kept, live) == {kept, live}


def test_a_process_purges_once_a_minute_unless_a_purge_found_a_full_batch(make_app, monkeypatch):
    """The purge's query scans every session on FerretDB 1.24: one login per process and
    PURGE_INTERVAL_S runs it, and every login while purges find full batches."""
    from taskapp.auth import service

    monkeypatch.setattr(service, "PURGE_BATCH", 2)
    app = make_app()
    _, email = sign_up(app.test_client())
    dead = [session_of(log_in(app.test_client(), email)) for _ in range(6)]
    for session_id in dead[:5]:
        move_back(app, session_id, app.config["REFRESH_TOKEN_TTL"] + 3600)
    client = make_app().test_client()  # another process: its first login purges
    remaining = []
    for _ in range(4):
        log_in(client, email)
        remaining.append(len(stored_sessions(app, *dead[:5])))
    assert remaining == [3, 1, 0, 0]  # 2 each while a batch was full; the third found 1
    move_back(app, dead[5], app.config["REFRESH_TOKEN_TTL"] + 3600)
    log_in(client, email)
    assert stored_sessions(app, dead[5]) == {dead[5]}  # not due: within the minute


def test_the_sessions_purge_query_has_its_index_on_the_test_mongodb(app):
    """The purge's range query on ``expires_at`` is served by an index (a plain one: FerretDB
    1.24, the test MongoDB by default, refuses ``expireAfterSeconds``)."""
    from taskapp import db

    with app.app_context():
        indexes = db.current().database["sessions"].index_information()
    assert [("expires_at", 1)] in [index["key"] for index in indexes.values()], indexes


def test_a_revoked_session_is_kept_while_a_revocation_rebuild_reads_it_then_deleted(
    app, redis_url, key_prefix, purge_each_login
):
    """A logout ends the refresh token at once; its access token lives up to ACCESS_TOKEN_TTL
    more, so the session stays as long as a rebuild of the revocation hash reads it (revoked
    within ACCESS_TOKEN_TTL), and is deleted by a login after that (plus the clock margin)."""
    from taskapp.auth.tokens import CLOCK_MARGIN_S

    client = app.test_client()
    user_id, email = sign_up(client)
    pair = log_in(client, email)
    session_id = session_of(pair)
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    move_back(app, session_id, app.config["ACCESS_TOKEN_TTL"] - 30)  # revoked 14.5 min ago
    log_in(client, email)
    assert stored_sessions(app, session_id) == {session_id}
    direct = redis.Redis.from_url(redis_url)
    try:
        assert direct.delete(f"{key_prefix}{keys.revocation(user_id)}") == 1
    finally:
        direct.close()
    assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 401  # rebuilt
    move_back(app, session_id, 30 + CLOCK_MARGIN_S + 5)
    log_in(client, email)
    assert stored_sessions(app, session_id) == set()


# Requests without a valid token


def test_requests_without_a_valid_token_are_limited_per_client_address(make_app):
    app = make_app(ANON_RATE_LIMIT_PER_MINUTE=5, TRUSTED_PROXIES=1)
    client = app.test_client()
    _, email = sign_up(client)  # one request of the address 127.0.0.1
    pair = log_in(client, email)  # two
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    statuses = [
        client.get(TASKS, headers={**forwarded, "Authorization": "Bearer nonsense"}).status_code
        for _ in range(5)
    ]
    limited = client.post(LOGIN, json={"email": email, "password": PASSWORD}, headers=forwarded)
    assert statuses == [401] * 5
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.get_json()["status"] == 429
    # A valid token is not limited by its address; another address has its own window;
    # liveness probes are never limited.
    valid = {**forwarded, **bearer(pair["access_token"])}
    assert client.get(TASKS, headers=valid).status_code == 200
    assert client.get(TASKS, headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 401
    assert client.get("/healthz", headers=forwarded).status_code == 200


def test_a_revoked_token_counts_as_no_token_for_the_anonymous_limit(make_app):
    app = make_app(ANON_RATE_LIMIT_PER_MINUTE=3)
    client = app.test_client()
    _, email = sign_up(client)
    pair = log_in(client, email)
    assert client.post(LOGOUT, headers=bearer(pair["access_token"])).status_code == 204
    statuses = [
        client.get(TASKS, headers=bearer(pair["access_token"])).status_code for _ in range(2)
    ]
    assert statuses == [401, 429]  # register and login were the first two of the address
