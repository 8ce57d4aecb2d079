"""Admin routes: the role is checked in MongoDB on every request."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from taskapp.models import User
from tests.api import problem

ADMIN_EMAIL = "boss@example.com"


@pytest.fixture
def app(make_app):
    return make_app(ADMIN_EMAILS=ADMIN_EMAIL)


@pytest.fixture
def admin(register) -> dict[str, str]:
    return register(ADMIN_EMAIL)


@pytest.fixture
def alice(register) -> dict[str, str]:
    return register("alice@example.com")


def user_id(app, email: str) -> str:
    with app.app_context():
        return str(User.objects.get(email=email).id)


def tasks_of(uid: str, query: str = "") -> str:
    return f"/api/v1/admin/users/{uid}/tasks{query}"


def user_path(uid: str) -> str:
    return f"/api/v1/admin/users/{uid}"


def test_admin_lists_another_users_tasks_newest_first(app, client, admin, alice):
    for title in ("one", "two", "three"):
        client.post(
            "/api/v1/tasks", json={"title": title, "completed": title == "two"}, headers=alice
        )
    response = client.get(tasks_of(user_id(app, "alice@example.com"), "?per_page=2"), headers=admin)
    assert response.status_code == 200
    body = response.get_json()
    assert [t["title"] for t in body["items"]] == ["three", "two"]
    assert (body["page"], body["per_page"], body["total"]) == (1, 2, 3)
    done = client.get(tasks_of(user_id(app, "alice@example.com"), "?completed=true"), headers=admin)
    assert [t["title"] for t in done.get_json()["items"]] == ["two"]


def test_admin_changes_a_role_and_gets_the_user_back(app, client, admin, alice):
    uid = user_id(app, "alice@example.com")
    response = client.patch(user_path(uid), json={"role": "admin"}, headers=admin)
    assert response.status_code == 200
    assert response.get_json() == {"id": uid, "email": "alice@example.com", "role": "admin"}


def test_non_admins_are_403_on_every_admin_route(app, client, admin, alice):
    admin_id = user_id(app, ADMIN_EMAIL)
    assert client.get(tasks_of(admin_id), headers=alice).status_code == 403
    response = client.patch(user_path(admin_id), json={"role": "user"}, headers=alice)
    assert response.status_code == 403
    assert response.get_json()["status"] == 403


def test_admin_routes_need_a_token(app, client, admin):
    admin_id = user_id(app, ADMIN_EMAIL)
    assert client.get(tasks_of(admin_id)).status_code == 401
    assert client.patch(user_path(admin_id), json={"role": "user"}).status_code == 401


def test_a_promotion_is_effective_on_the_very_next_request(app, client, admin, alice):
    uid = user_id(app, "alice@example.com")
    assert client.get(tasks_of(uid), headers=alice).status_code == 403
    client.patch(user_path(uid), json={"role": "admin"}, headers=admin)
    assert client.get(tasks_of(uid), headers=alice).status_code == 200


def test_a_demoted_admin_is_refused_on_the_very_next_request_with_the_same_token(
    app, client, admin, alice
):
    admin_id = user_id(app, ADMIN_EMAIL)
    alice_id = user_id(app, "alice@example.com")
    client.patch(user_path(alice_id), json={"role": "admin"}, headers=admin)
    assert client.get(tasks_of(alice_id), headers=admin).status_code == 200
    client.patch(user_path(admin_id), json={"role": "user"}, headers=alice)
    assert client.get(tasks_of(alice_id), headers=admin).status_code == 403


def test_the_admin_role_is_read_from_mongodb_on_every_request(app, client, admin):
    path = tasks_of(user_id(app, ADMIN_EMAIL))
    client.get(path, headers=admin)
    before = REGISTRY.get_sample_value("taskapp_db_reads_total")
    for _ in range(3):
        assert client.get(path, headers=admin).status_code == 200
    # at least the role check and the user lookup each time; the task page may come from cache
    assert REGISTRY.get_sample_value("taskapp_db_reads_total") - before >= 6


@pytest.mark.parametrize("uid", ["0123456789abcdef01234567", "not-an-id"])  # well-formed, unknown
def test_unknown_or_malformed_users_are_404(client, admin, uid):
    assert client.get(tasks_of(uid), headers=admin).status_code == 404
    assert client.patch(user_path(uid), json={"role": "admin"}, headers=admin).status_code == 404


@pytest.mark.parametrize(
    "payload", [{"role": "root"}, {"role": None}, {}, {"role": "admin", "x": 1}]
)
def test_an_invalid_role_change_is_422(app, client, admin, alice, payload):
    uid = user_id(app, "alice@example.com")
    response = client.patch(user_path(uid), json=payload, headers=admin)
    assert response.status_code == 422
    with app.app_context():
        assert User.objects.get(id=uid).role == "user"


@pytest.mark.parametrize("query", ["?page=0", "?per_page=101", "?completed=perhaps"])
def test_an_invalid_list_query_is_422(app, client, admin, query):
    assert client.get(tasks_of(user_id(app, ADMIN_EMAIL), query), headers=admin).status_code == 422


def test_admin_responses_are_not_cached(app, client, admin, alice):
    path = tasks_of(user_id(app, "alice@example.com"))
    client.get(path, headers=admin)
    response = client.get(path, headers=admin)
    assert "X-Cache" not in response.headers
    assert "ETag" not in response.headers


# Finding accounts

USERS = "/api/v1/admin/users"


def test_admin_lists_the_accounts_by_email_a_page_at_a_time(app, client, admin, alice, register):
    register("carol@example.com")
    response = client.get(f"{USERS}?per_page=2", headers=admin)
    assert response.status_code == 200
    body = response.get_json()
    assert [u["email"] for u in body["items"]] == ["alice@example.com", "boss@example.com"]
    assert (body["page"], body["per_page"], body["total"]) == (1, 2, 3)
    second = client.get(f"{USERS}?per_page=2&page=2", headers=admin).get_json()
    assert [u["email"] for u in second["items"]] == ["carol@example.com"]
    assert body["items"][1] == {
        "id": user_id(app, ADMIN_EMAIL),
        "email": ADMIN_EMAIL,
        "role": "admin",
    }


def test_admin_finds_one_account_by_email_whatever_its_case(app, client, admin, alice):
    response = client.get(f"{USERS}?email=Alice@Example.com", headers=admin)
    assert response.get_json() == {
        "items": [
            {"id": user_id(app, "alice@example.com"), "email": "alice@example.com", "role": "user"}
        ],
        "page": 1,
        "per_page": 10,
        "total": 1,
    }
    nobody = client.get(f"{USERS}?email=nobody@example.com", headers=admin).get_json()
    assert (nobody["items"], nobody["total"]) == ([], 0)


def test_listing_accounts_is_for_admins_only(client, admin, alice):
    assert client.get(USERS, headers=alice).status_code == 403
    assert client.get(USERS).status_code == 401


def test_a_demoted_admin_cannot_list_accounts_on_the_next_request(app, client, admin, alice):
    alice_id = user_id(app, "alice@example.com")
    client.patch(user_path(alice_id), json={"role": "admin"}, headers=admin)
    assert client.get(USERS, headers=alice).status_code == 200
    client.patch(user_path(alice_id), json={"role": "user"}, headers=admin)
    assert client.get(USERS, headers=alice).status_code == 403


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?page=0", "page"),
        ("?per_page=101", "per_page"),
        ("?email=", "email"),
        ("?role=admin", "role"),
    ],
)
def test_an_invalid_account_query_is_422_naming_the_parameter(client, admin, query, parameter):
    response = client.get(f"{USERS}{query}", headers=admin)
    body = problem(response, 422)
    assert f"parameter '{parameter}'" in body["detail"]
    assert [error["parameter"] for error in body["errors"]] == [parameter]
