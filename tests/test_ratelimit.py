"""Rate limits in windows of one-second counts: logins per email and address, requests per user."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from taskapp import keys
from taskapp.cache.admission import Admission
from taskapp.cache.scope_state import Window
from taskapp.extensions import cache
from tests.api import problem, rate_limits

LOGIN = "/api/v1/auth/login"
REGISTER = "/api/v1/auth/register"
TASKS = "/api/v1/tasks"
PASSWORD = "correct horse battery"


@pytest.fixture(params=[True, False], ids=["fast-path", "flask-path"])
def app(make_app, request):
    """Every per-user limit test on both paths of a response-cache hit (taskapp.fastpath)."""
    return make_app(
        LOGIN_RATE_LIMIT_PER_MINUTE=3, RATE_LIMIT_PER_MINUTE=5, HTTP_FAST_PATH=request.param
    )


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def new_account(client, email: str | None = None) -> str:
    """Register an account and return its email."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post(REGISTER, json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.get_json()
    return email


def login(client, email: str, address: str = "10.0.0.1", password: str = PASSWORD):
    return client.post(
        LOGIN,
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def bearer(client, email: str, address: str) -> dict[str, str]:
    response = login(client, email, address)
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def assert_rate_limited(response, limit: int, policy: str) -> None:
    """A problem-details 429 with Retry-After, and the RateLimit fields saying that ``policy``
    (a quota of ``limit`` a minute) has nothing left until then."""
    problem(response, 429)
    # The window is the last 61 whole seconds: the oldest request leaves it within 61 s.
    retry = int(response.headers["Retry-After"])
    assert 1 <= retry <= 61
    reported = rate_limits(response.headers)[policy]
    assert reported == {"q": limit, "w": 60, "r": 0, "t": retry}


# Logins


def test_the_fourth_login_attempt_for_one_email_is_429_from_any_address(client):
    email = new_account(client)
    # Each attempt from its own address: only the email's window can fill up.
    attempts = [
        login(client, email, "10.1.0.1").status_code,
        login(client, email, "10.1.0.2", password="wrong password").status_code,
        login(client, email, "10.1.0.3").status_code,
    ]
    limited = login(client, email, "10.1.0.4")  # a fresh address, the right password
    assert attempts == [200, 401, 200]
    assert_rate_limited(limited, 3, "login-email")
    assert "access_token" not in limited.get_json()


def test_the_email_limit_ignores_the_case_and_spaces_of_the_email(client):
    email = new_account(client)
    for n, spelling in enumerate([email, email.upper(), f"  {email}  "]):
        assert login(client, spelling, f"10.2.0.{n}").status_code == 200
    assert_rate_limited(login(client, email.title(), "10.2.0.9"), 3, "login-email")


def test_other_emails_from_an_address_at_its_limit_are_429(client):
    emails = [new_account(client) for _ in range(4)]
    statuses = [login(client, email, "10.3.0.1").status_code for email in emails[:3]]
    limited = login(client, emails[3], "10.3.0.1")  # an email never tried before
    assert statuses == [200, 200, 200]
    assert_rate_limited(limited, 3, "login-address")
    # Another address may still log that email in: the address, not the email, was limited.
    assert login(client, emails[3], "10.3.0.2").status_code == 200


def test_unknown_emails_count_towards_the_address_limit(client):
    for n in range(3):
        assert login(client, f"nobody-{n}@example.com", "10.4.0.1").status_code == 401
    assert_rate_limited(login(client, new_account(client), "10.4.0.1"), 3, "login-address")


def test_attempts_in_one_second_each_count(app, redis_client, key_prefix):
    """Counts are per second: attempts that land in the same second add to one count."""
    window = keys.login_limit("email", f"{uuid.uuid4().hex}@example.com")
    with app.app_context():
        answers = [cache.admit(Admission().limit(window, 3)).limited for _ in range(4)]
    assert [(a.allowed, a.requests) for a in answers] == [
        (True, 1),
        (True, 2),
        (True, 3),
        (False, 3),
    ]
    state = Window.decode(redis_client.get(key_prefix + window))
    assert state.total == 3 == sum(count for _, count in state.slots)
    assert len({second for second, count in state.slots if count}) == 1  # one second's slot


def test_concurrent_login_attempts_for_one_email_each_count_once(app, redis_client, key_prefix):
    client = app.test_client()
    email = new_account(client)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def attempt(address: str) -> None:
        local = app.test_client()
        barrier.wait()
        statuses.append(login(local, email, address).status_code)

    threads = [threading.Thread(target=attempt, args=(f"10.5.0.{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [200, 200]

    def total(window: str) -> int:
        return Window.decode(redis_client.get(key_prefix + window)).total

    assert total(keys.login_limit("email", email)) == 2
    for address in ("10.5.0.1", "10.5.0.2"):
        assert total(keys.login_limit("addr", address)) == 1
    # The third attempt is still allowed, the fourth is not.
    assert login(client, email, "10.5.0.3").status_code == 200
    assert_rate_limited(login(client, email, "10.5.0.4"), 3, "login-email")


def test_login_windows_are_small_strings_that_expire_with_the_window(app, redis_client, key_prefix):
    client = app.test_client()
    email = new_account(client)
    login(client, email, "10.6.0.1")
    window = key_prefix + keys.login_limit("email", email)
    assert redis_client.type(window) == b"string" and redis_client.strlen(window) <= 512
    assert 0 < redis_client.pttl(window) <= 62_000


# Requests of a user


def test_responses_carry_the_rate_limit_headers_with_a_decreasing_remaining(client):
    headers = bearer(client, new_account(client), "10.7.0.1")
    remaining = []
    for _ in range(5):
        response = client.get(TASKS, headers=headers)
        assert response.status_code == 200
        reported = rate_limits(response.headers)
        assert set(reported) == {"user"}  # a request with a valid token: the user's limit only
        assert (reported["user"]["q"], reported["user"]["w"]) == (5, 60)
        assert 1 <= reported["user"]["t"] <= 61
        remaining.append(reported["user"]["r"])
    assert remaining == [4, 3, 2, 1, 0]


def test_the_sixth_request_in_a_minute_is_429_and_other_users_are_unaffected(client):
    alice = bearer(client, new_account(client), "10.8.0.1")
    bob = bearer(client, new_account(client), "10.8.0.2")
    for _ in range(5):
        assert client.get(TASKS, headers=alice).status_code == 200
    limited = client.get(TASKS, headers=alice)
    assert_rate_limited(limited, 5, "user")
    assert client.post(TASKS, json={"title": "t"}, headers=alice).status_code == 429

    response = client.get(TASKS, headers=bob)
    assert response.status_code == 200
    assert rate_limits(response.headers)["user"]["r"] == 4


def test_a_cached_response_still_counts_towards_the_limit(client):
    headers = bearer(client, new_account(client), "10.9.0.1")
    hits = [client.get(TASKS, headers=headers).headers.get("X-Cache") for _ in range(5)]
    assert hits[1:] == ["HIT"] * 4
    assert_rate_limited(client.get(TASKS, headers=headers), 5, "user")


def test_anonymous_requests_are_not_limited_per_user(client):
    for _ in range(7):
        assert client.get("/healthz").status_code == 200


# Redis down


def test_limits_fail_open_when_redis_is_down(make_app):
    app = make_app(
        REDIS_URL="redis://127.0.0.1:1/0",
        LOGIN_RATE_LIMIT_PER_MINUTE=1,
        RATE_LIMIT_PER_MINUTE=2,
    )
    client = app.test_client()
    email = new_account(client)
    logins = [login(client, email, "10.10.0.1") for _ in range(3)]
    assert [r.status_code for r in logins] == [200, 200, 200]
    headers = {"Authorization": f"Bearer {logins[-1].get_json()['access_token']}"}
    statuses = [client.get(TASKS, headers=headers).status_code for _ in range(5)]
    assert statuses == [200] * 5


# Registration and proxies


def register_from(client, address: str, **headers: str):
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    return client.post(
        REGISTER,
        json={"email": email, "password": PASSWORD},
        headers=headers,
        environ_base={"REMOTE_ADDR": address},
    )


def test_registrations_are_limited_per_address(make_app):
    client = make_app(REGISTER_RATE_LIMIT_PER_MINUTE=2).test_client()
    statuses = [register_from(client, "10.7.0.1").status_code for _ in range(2)]
    assert statuses == [201, 201]
    assert_rate_limited(register_from(client, "10.7.0.1"), 2, "register")
    assert register_from(client, "10.7.0.2").status_code == 201


def test_behind_trusted_proxies_the_login_limit_sees_each_client(make_app):
    client = make_app(LOGIN_RATE_LIMIT_PER_MINUTE=2, TRUSTED_PROXIES=1).test_client()

    def attempt(forwarded_for: str):
        return client.post(
            LOGIN,
            json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
            headers={"X-Forwarded-For": forwarded_for},
            environ_base={"REMOTE_ADDR": "10.8.0.1"},  # the proxy
        )

    assert [attempt("203.0.113.1").status_code for _ in range(2)] == [401, 401]
    assert_rate_limited(attempt("203.0.113.1"), 2, "login-address")
    assert attempt("203.0.113.2").status_code == 401  # another client behind the same proxy
    # A client cannot escape by sending its own X-Forwarded-For: one hop is trusted, the last.
    assert_rate_limited(attempt("198.51.100.9, 203.0.113.1"), 2, "login-address")


def test_without_trusted_proxies_a_sent_x_forwarded_for_is_ignored(make_app):
    client = make_app(LOGIN_RATE_LIMIT_PER_MINUTE=2).test_client()
    statuses = [
        client.post(
            LOGIN,
            json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
            headers={"X-Forwarded-For": f"203.0.113.{n}"},
            environ_base={"REMOTE_ADDR": "10.9.0.1"},
        ).status_code
        for n in range(3)
    ]
    assert statuses == [401, 401, 429]
