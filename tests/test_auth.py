"""Registration, login and access tokens."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from bson import ObjectId

from taskapp.models import User
from tests.api import problem

SECRET = "test-secret-key-with-32-bytes-of-entropy!"  # the make_app fixture's SECRET_KEY
PASSWORD = "correct horse battery"
ME = "/api/v1/tasks"  # any protected route


def register(client, email="alice@example.com", password=PASSWORD):
    return client.post("/api/v1/auth/register", json={"email": email, "password": password})


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_for(user_id: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"sub": user_id, "sid": str(ObjectId()), "gen": 0, "typ": "access", "iat": now}
    return {**claims, "exp": now + 600, **overrides}


# Registration


def test_register_creates_an_account_and_returns_its_id_and_email(client, app):
    response = register(client)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "email"}
    assert body["email"] == "alice@example.com"
    with app.app_context():
        assert str(User.objects.get(email="alice@example.com").id) == body["id"]


def test_register_stores_the_email_lowercased(client):
    response = register(client, email="Alice@Example.COM")
    assert response.get_json()["email"] == "alice@example.com"
    assert login(client, email="ALICE@example.com").status_code == 200


def test_register_stores_an_argon2_hash_never_the_password(client, app):
    register(client)
    with app.app_context():
        user = User.objects.get(email="alice@example.com")
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


def test_register_of_an_existing_email_is_409_whatever_its_case(client):
    assert register(client).status_code == 201
    response = register(client, email="ALICE@example.com", password="another password")
    assert response.status_code == 409
    assert response.get_json()["status"] == 409


def test_register_gives_the_admin_role_to_admin_emails_only(make_app):
    app = make_app(ADMIN_EMAILS="Boss@Example.com, other@example.com")
    client = app.test_client()
    register(client, email="boss@example.com")
    register(client, email="alice@example.com")
    with app.app_context():
        assert User.objects.get(email="boss@example.com").role == "admin"
        assert User.objects.get(email="alice@example.com").role == "user"


def test_admin_emails_trust_whoever_registers_the_address_when_it_is_registered(make_app):
    """No proof of owning the address is asked: the first registration of a listed address is an
    admin, and so is a new one after that account was deleted. The list is read at registration
    only: an app without it leaves the stored role as it is."""
    app = make_app(ADMIN_EMAILS="boss@example.com")
    client = app.test_client()
    register(client, email="boss@example.com", password="the first registrant's")
    first = bearer(
        login(client, "boss@example.com", "the first registrant's").get_json()["access_token"]
    )
    assert client.get("/api/v1/auth/me", headers=first).get_json()["role"] == "admin"
    assert client.delete("/api/v1/auth/me", headers=first).status_code == 204
    register(client, email="boss@example.com", password="the next registrant's")
    later = make_app(ADMIN_EMAILS="")  # the same database, the address no longer listed
    with later.app_context():
        assert User.objects.get(email="boss@example.com").role == "admin"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "alice@example.com"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": 42, "password": PASSWORD}, "email"),
        ({"email": "alice@example.com", "password": "short"}, "password"),
        ({"email": "alice@example.com", "password": 12345678}, "password"),
        ({"email": "alice@example.com", "password": "x" * 1025}, "password"),
        ({"email": "alice@example.com", "password": PASSWORD, "role": "admin"}, "role"),
    ],
)
def test_register_with_invalid_fields_is_422_naming_the_field(client, payload, field):
    response = client.post("/api/v1/auth/register", json=payload)
    body = problem(response, 422)  # a JSON object, well-formed but invalid: as on /tasks
    assert f"'{field}'" in body["detail"]
    assert f"/{field}" in [error.get("pointer") for error in body["errors"]]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("", "application/json", 400),
        ('["alice@example.com"]', "application/json", 400),
        ("null", "application/json", 400),
        ("email=alice@example.com", "application/x-www-form-urlencoded", 415),
    ],
)
def test_register_with_a_body_that_is_not_a_json_object_is_rejected(
    client, data, content_type, status
):
    response = client.post("/api/v1/auth/register", data=data, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["status"] == status


# Login


def test_login_returns_a_bearer_token_that_opens_protected_routes(client, app):
    register(client)
    response = login(client)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == app.config["ACCESS_TOKEN_TTL"]
    assert client.get(ME, headers=bearer(body["access_token"])).status_code == 200


def test_login_token_expires_after_the_access_token_ttl(make_app):
    app = make_app(ACCESS_TOKEN_TTL=120)
    client = app.test_client()
    register(client)
    token = login(client).get_json()["access_token"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120
    assert abs(claims["iat"] - time.time()) < 5


def test_login_with_a_wrong_password_or_an_unknown_email_is_the_same_401(client):
    register(client)
    wrong_password = login(client, password="not the password")
    unknown_email = login(client, email="nobody@example.com")
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.get_json() == unknown_email.get_json()


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"email": "alice@example.com"},
        {"password": PASSWORD},
        {"email": "", "password": PASSWORD},
        {"email": ["alice@example.com"], "password": PASSWORD},
        {"email": "alice@example.com", "password": None},
    ],
)
def test_login_with_missing_or_mistyped_fields_is_422(client, payload):
    response = client.post("/api/v1/auth/login", json=payload)
    assert response.status_code == 422
    assert response.get_json()["status"] == 422


def test_login_attempts_over_the_limit_are_429_with_retry_after(make_app):
    app = make_app(LOGIN_RATE_LIMIT_PER_MINUTE=3)
    client = app.test_client()
    register(client)
    statuses = [login(client, password="wrong password").status_code for _ in range(3)]
    limited = login(client)  # even the right password waits once the limit is reached
    assert statuses == [401, 401, 401]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.get_json()["status"] == 429


def test_auth_responses_are_never_stored_by_clients_or_proxies(client):
    assert register(client).headers["Cache-Control"] == "no-store"
    assert login(client).headers["Cache-Control"] == "no-store"


# Tokens


@pytest.fixture
def user_id(client) -> str:
    return register(client).get_json()["id"]


def test_a_valid_token_is_accepted(client, user_id):
    token = jwt.encode(claims_for(user_id), SECRET, algorithm="HS256")
    assert client.get(ME, headers=bearer(token)).status_code == 200


def test_a_token_accepted_once_is_refused_when_it_expires(client, user_id):
    """Signatures are checked once per token, but its expiry on every use."""
    expires = int(time.time()) + 2
    token = jwt.encode(claims_for(user_id, exp=expires), SECRET, algorithm="HS256")
    assert client.get(ME, headers=bearer(token)).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert client.get(ME, headers=bearer(token)).status_code == 401


def test_a_token_of_another_secret_is_refused_after_the_same_token_passed_elsewhere(
    client, make_app, user_id
):
    """The memo is keyed by the secret too: one app's valid token is nothing to another app."""
    token = jwt.encode(claims_for(user_id), SECRET, algorithm="HS256")
    assert client.get(ME, headers=bearer(token)).status_code == 200
    other = make_app(SECRET_KEY="another-secret-key-with-32-bytes-of-it!")
    assert other.test_client().get(ME, headers=bearer(token)).status_code == 401


def test_a_request_without_a_token_is_401_with_a_bearer_challenge(client):
    response = client.get(ME)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert response.get_json()["status"] == 401


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(
            lambda uid: jwt.encode(claims_for(uid, exp=int(time.time()) - 1), SECRET, "HS256"),
            id="expired",
        ),
        pytest.param(
            lambda uid: jwt.encode(claims_for(uid), "another-secret-of-32-bytes-length!!", "HS256"),
            id="wrong-signature",
        ),
        pytest.param(lambda uid: jwt.encode(claims_for(uid), None, "none"), id="alg-none"),
        pytest.param(lambda uid: jwt.encode(claims_for(uid), SECRET, "HS512"), id="other-alg"),
        pytest.param(
            lambda uid: _tampered(jwt.encode(claims_for(uid), SECRET, "HS256")), id="tampered"
        ),
        pytest.param(
            lambda uid: jwt.encode({"sub": uid, "iat": int(time.time())}, SECRET, "HS256"),
            id="no-exp",
        ),
        pytest.param(
            lambda uid: jwt.encode({"sub": uid, "exp": int(time.time()) + 60}, SECRET, "HS256"),
            id="no-iat",
        ),
        pytest.param(
            lambda uid: jwt.encode(claims_for(uid, sub=None), SECRET, "HS256"), id="no-sub"
        ),
        pytest.param(
            lambda uid: jwt.encode(claims_for("not-an-object-id"), SECRET, "HS256"),
            id="sub-not-an-object-id",
        ),
        pytest.param(lambda uid: "not.a.jwt", id="garbage"),
    ],
)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 attempt
def test_an_invalid_token_is_401(client, user_id, make_token):
    response = client.get(ME, headers=bearer(make_token(user_id)))
    assert response.status_code == 401
    assert response.get_json()["status"] == 401


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc"])
def test_an_authorization_header_without_a_bearer_token_is_401(client, header):
    assert client.get(ME, headers={"Authorization": header}).status_code == 401


def test_the_bearer_scheme_is_case_insensitive(client, user_id):
    token = jwt.encode(claims_for(user_id), SECRET, algorithm="HS256")
    assert client.get(ME, headers={"Authorization": f"bearer {token}"}).status_code == 200


def _tampered(token: str) -> str:
    """The token with its payload swapped for another user's, the signature kept."""
    header, _, signature = token.split(".")
    other = jwt.encode(claims_for(str(ObjectId())), SECRET, "HS256").split(".")[1]
    return f"{header}.{other}.{signature}"


def test_concurrent_registrations_of_one_email_create_exactly_one_account(app):
    def attempt(_):
        return register(app.test_client(), email="race@example.com").status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = sorted(pool.map(attempt, range(4)))
    assert statuses == [201, 409, 409, 409]
    with app.app_context():
        assert User.objects(email="race@example.com").count() == 1


# The caller's account


def test_me_returns_the_callers_id_email_and_role(client):
    user_id = register(client, "Carol@Example.com").get_json()["id"]
    token = login(client, "carol@example.com").get_json()["access_token"]
    response = client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"id": user_id, "email": "carol@example.com", "role": "user"}
    assert response.headers["Cache-Control"] == "no-store"
    assert "X-Cache" not in response.headers


def test_me_reads_the_role_from_mongodb_on_every_request(client, app):
    register(client)
    token = login(client).get_json()["access_token"]
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["role"] == "user"
    with app.app_context():
        User.objects(email="alice@example.com").update(set__role="admin")
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["role"] == "admin"


@pytest.mark.parametrize("header", [None, "Bearer nonsense", "Basic YWxpY2U6c2VjcmV0"])
def test_me_without_a_valid_token_is_401(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["status"] == 401


def test_me_with_the_token_of_a_deleted_account_is_401(client, app):
    register(client)
    token = login(client).get_json()["access_token"]
    with app.app_context():
        User.objects(email="alice@example.com").delete()
    response = client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
