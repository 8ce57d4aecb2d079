"""Hostile input: a bounded schemathesis run over /openapi.json, and explicit malformed requests."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from bson import ObjectId
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import allow_header_conformance

from taskapp import create_app
from taskapp.auth import tokens
from taskapp.extensions import cache
from taskapp.models import User
from tests.api import problem
from tests.conftest import database_uri, delete_prefix

SECRET_KEY = "test-secret-key-with-32-bytes-of-entropy!"
PASSWORD = "correct horse battery"
FUZZ_EMAIL = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
FUZZ_USER_ID = ObjectId()

# Schemathesis lists the operations, and draws their explicit cases with credentials, at
# collection, so the document and the fuzzer's token are made at import: by an app on the embedded
# backends with the same SECRET_KEY as ``fuzz_app``, which receives every request and holds the
# account (its lazy ``from_fixture`` loader would avoid this, but it does not run on pytest 9: it
# reads the removed ``Node._nodeid``).
_document_app = create_app(
    {
        "TESTING": True,
        "SECRET_KEY": SECRET_KEY,
        "REDIS_URL": "memory://",
        "MONGODB_URI": "mongomock://localhost/openapi",
    }
)
with _document_app.app_context():
    FUZZ_TOKEN, _ = tokens.issue(str(FUZZ_USER_ID), str(ObjectId()), 0)
# Logging out and deleting the account would end the fuzzer's token (every later case a 401):
# those, and a password change (whose example holds this account's password), are left out of
# the run and tested in tests/test_accounts.py.
schema = (
    schemathesis.openapi.from_wsgi("/openapi.json", _document_app)
    .exclude(method="POST", path="/api/v1/auth/logout")
    .exclude(method="DELETE", path="/api/v1/auth/me")
    .exclude(method="POST", path="/api/v1/auth/password")  # its example is the account's password
)
with _document_app.app_context():
    # Its listener thread would idle until the process ends, and log after pytest's summary.
    cache.close()


@pytest.fixture(scope="module")
def fuzz_app(redis_url, mongodb_server_uri):
    """One app for the whole module (as conftest's make_app builds them), limits out of the way,
    with the fuzzer's account."""
    prefix = f"taskapp-test:{uuid.uuid4().hex[:12]}:"
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": SECRET_KEY,
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": prefix,
            "MONGODB_URI": database_uri(mongodb_server_uri),
            "RATE_LIMIT_PER_MINUTE": 1_000_000,
            "LOGIN_RATE_LIMIT_PER_MINUTE": 1_000_000,
            "ANON_RATE_LIMIT_PER_MINUTE": 1_000_000,
        }
    )
    with app.app_context():
        user = User(id=FUZZ_USER_ID, email=FUZZ_EMAIL)
        user.set_password(PASSWORD)
        user.save()
    yield app
    from taskapp import db

    with app.app_context():
        db.current().database.client.drop_database(db.current().database.name)
        cache.close()
        db.current().close()
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def auth(fuzz_app) -> dict[str, str]:
    """The Authorization header of the fuzzer's account, from the login route."""
    client = fuzz_app.test_client()
    response = client.post("/api/v1/auth/login", json={"email": FUZZ_EMAIL, "password": PASSWORD})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


@schema.auth(refresh_interval=None)
class FuzzerBearer:
    """The fuzzer's token as the bearerAuth credential. Schemathesis leaves it out of the cases
    that test a missing or broken Authorization header (``headers=`` would put it back)."""

    def get(self, case, context) -> str:
        return FUZZ_TOKEN

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error_or_a_response_outside_its_schema(case, fuzz_app):
    # Every check but the Allow header's: its one finding (OPTIONS /api/v1/tasks/stats also
    # advertises PATCH and DELETE, the methods of /api/v1/tasks/<task_id>) is pinned by
    # test_tasks_stats_allows_only_its_own_methods below; left in, it would end the run of
    # GET /api/v1/tasks/stats at its first OPTIONS case and leave that operation unfuzzed.
    case.call_and_validate(app=fuzz_app, excluded_checks=[allow_header_conformance])


# Explicit hostile requests


@pytest.fixture
def client(fuzz_app):
    return fuzz_app.test_client()


def assert_json_error(response, status: int) -> None:
    """RFC 9457 problem details with ``status``; never HTML."""
    problem(response, status)
    assert b"<html" not in response.data.lower()


JSON_BODY_ROUTES = [
    ("POST", "/api/v1/tasks"),
    ("PATCH", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
]


@pytest.mark.parametrize("method, path", JSON_BODY_ROUTES)
def test_an_oversized_body_is_a_json_413(fuzz_app, client, auth, method, path):
    size = fuzz_app.config["MAX_CONTENT_LENGTH"] + 1
    huge = '{"title": "' + "x" * size + '"}'
    url = path.format(id=ObjectId())
    response = client.open(
        url, method=method, data=huge, headers=auth, content_type="application/json"
    )
    assert_json_error(response, 413)


MALFORMED_IDS = [
    "not-an-id",
    "123",
    "0" * 23,
    "g" * 24,
    "0" * 25,
    "x" * 5000,
    "%00",
    "%F0%9F%92%A9",
    "..%2F..%2Fetc%2Fpasswd",
    "{u:1}",
    "'; db.dropDatabase(); '",
    '{"$ne": null}',
]


@pytest.mark.parametrize("task_id", MALFORMED_IDS)
def test_a_malformed_task_id_is_a_json_404_for_every_method(client, auth, task_id):
    url = f"/api/v1/tasks/{task_id}"
    assert_json_error(client.get(url, headers=auth), 404)
    assert_json_error(client.patch(url, json={"title": "x"}, headers=auth), 404)
    assert_json_error(client.delete(url, headers=auth), 404)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "text/json", None],
)
@pytest.mark.parametrize("method, path", JSON_BODY_ROUTES)
def test_a_body_of_another_content_type_is_a_json_415(client, auth, method, path, content_type):
    url = path.format(id=ObjectId())
    data = '{"title": "x", "email": "a@example.com", "password": "long enough"}'
    response = client.open(url, method=method, data=data, headers=auth, content_type=content_type)
    assert_json_error(response, 415)


@pytest.mark.parametrize("data", ["[]", '[{"title": "x"}]', '"text"', "42", "true", "null"])
@pytest.mark.parametrize("method, path", JSON_BODY_ROUTES)
def test_a_json_body_that_is_not_an_object_is_a_json_400(client, auth, method, path, data):
    url = path.format(id=ObjectId())
    response = client.open(
        url, method=method, data=data, headers=auth, content_type="application/json"
    )
    assert_json_error(response, 400)


@pytest.mark.parametrize("data", ["{", '{"title": }', "\xff", "", '{"title": "x"} trailing', "NaN"])
def test_malformed_json_is_a_json_400(client, auth, data):
    response = client.post(
        "/api/v1/tasks", data=data, headers=auth, content_type="application/json"
    )
    assert_json_error(response, 400)


@pytest.mark.parametrize(
    "request_args, status",
    [
        (("GET", "/no/such/route", None), 404),
        (("PUT", "/api/v1/tasks", None), 405),
        (("DELETE", "/api/v1/tasks", None), 405),
        (("GET", "/api/v1/tasks?per_page=0", None), 422),
        (("GET", "/api/v1/tasks?per_page=101", None), 422),
        (("GET", "/api/v1/tasks?page=-1", None), 422),
        (("GET", "/api/v1/tasks?page=99999999999999999999999", None), 422),
        (("GET", "/api/v1/tasks?completed=maybe", None), 422),
        (("GET", "/api/v1/tasks?unknown=1", None), 422),
        (("GET", "/api/v1/activity?limit=0", None), 422),
        (("POST", "/api/v1/tasks", {}), 422),
        (("POST", "/api/v1/tasks", {"title": ""}), 422),
        (("POST", "/api/v1/tasks", {"title": "   "}), 422),
        (("POST", "/api/v1/tasks", {"title": "x" * 201}), 422),
        (("POST", "/api/v1/tasks", {"title": None}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "priority": "urgent"}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "completed": "yes"}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "due_date": 1700000000}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "due_date": "9999-12-31T23:59:59-23:59"}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "due_date": "not a date"}), 422),
        (("POST", "/api/v1/tasks", {"title": "x", "owner": "someone"}), 422),
        (("POST", "/api/v1/tasks", {"title": {"$gt": ""}}), 422),
        (("POST", "/api/v1/auth/register", {"email": "not an email", "password": "x" * 8}), 422),
        (("POST", "/api/v1/auth/register", {"email": "a@example.com", "password": "short"}), 422),
        (("POST", "/api/v1/auth/login", {"email": {"$ne": None}, "password": "x"}), 422),
        (("GET", "/api/v1/admin/users/not-an-id/tasks", None), 403),
        (("PATCH", "/api/v1/admin/users/not-an-id", {"role": "root"}), 403),
    ],
)
def test_every_error_is_json_with_the_right_status(client, auth, request_args, status):
    method, url, payload = request_args
    response = client.open(url, method=method, json=payload, headers=auth)
    assert_json_error(response, status)


def test_a_foreign_task_id_is_a_json_404(fuzz_app, client, auth):
    response = client.post("/api/v1/tasks", json={"title": "mine"}, headers=auth)
    task_id = response.get_json()["id"]
    other = fuzz_app.test_client()
    email = f"other-{uuid.uuid4().hex[:8]}@example.com"
    other.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    token = other.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    ).get_json()["access_token"]
    foreign = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/tasks/{task_id}"
    assert_json_error(other.get(url, headers=foreign), 404)
    assert_json_error(other.patch(url, json={"title": "x"}, headers=foreign), 404)
    assert_json_error(other.delete(url, headers=foreign), 404)
    assert client.get(url, headers=auth).get_json()["title"] == "mine"


def test_tasks_stats_allows_only_its_own_methods(client, auth):
    """/tasks/stats is a resource of its own, not a task whose id is "stats"."""
    response = client.options("/api/v1/tasks/stats", headers=auth)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    for method in ("PATCH", "DELETE"):
        response = client.open(
            "/api/v1/tasks/stats", method=method, json={"title": "x"}, headers=auth
        )
        assert_json_error(response, 405)
        assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
