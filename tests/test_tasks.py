"""Task routes and the task service: CRUD, paging, stats, activity, isolation, read-your-writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId

from taskapp import keys
from taskapp.extensions import cache
from taskapp.models import User
from tests.api import db_reads, problem

TASKS = "/api/v1/tasks"
STATS = "/api/v1/tasks/stats"
# A well-formed id that no test creates (a constant: parallel workers collect the same test ids).
UNKNOWN_ID = "0123456789abcdef01234567"
ACTIVITY = "/api/v1/activity"
TASK_FIELDS = {
    "id",
    "title",
    "description",
    "completed",
    "priority",
    "due_date",
    "created_at",
    "updated_at",
}


@pytest.fixture
def alice(register) -> dict[str, str]:
    return register("alice@example.com")


@pytest.fixture
def bob(register) -> dict[str, str]:
    return register("bob@example.com")


def create(client, headers, **fields) -> dict:
    fields.setdefault("title", "a task")
    response = client.post(TASKS, json=fields, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value)


# Create


def test_create_returns_201_with_the_task_and_its_defaults(client, alice):
    before = datetime.now(UTC) - timedelta(seconds=1)
    task = create(client, alice, title="  write tests  ")
    assert set(task) == TASK_FIELDS
    assert ObjectId.is_valid(task["id"])
    assert task["title"] == "write tests"
    assert (task["description"], task["completed"], task["priority"], task["due_date"]) == (
        "",
        False,
        "medium",
        None,
    )
    assert task["created_at"] == task["updated_at"]
    assert before <= parse(task["created_at"]) <= datetime.now(UTC)


def test_create_stores_every_field_with_the_due_date_in_utc(client, alice):
    task = create(
        client,
        alice,
        title="ship",
        description="the release",
        completed=True,
        priority="high",
        due_date="2030-05-01T12:00:00+02:00",
    )
    assert task["due_date"] == "2030-05-01T10:00:00.000Z"
    fetched = client.get(f"{TASKS}/{task['id']}", headers=alice).get_json()
    assert fetched == task


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": 7}, "title"),
        ({"title": None}, "title"),
        ({"title": "t", "description": "x" * 5001}, "description"),
        ({"title": "t", "completed": "true"}, "completed"),
        ({"title": "t", "completed": 1}, "completed"),
        ({"title": "t", "priority": "urgent"}, "priority"),
        ({"title": "t", "due_date": "tomorrow"}, "due_date"),
        ({"title": "t", "due_date": "0001-01-01T00:00:00+05:00"}, "due_date"),
        ({"title": "t", "owner": "someone"}, "owner"),
    ],
)
def test_create_with_invalid_fields_is_422_naming_the_field(client, alice, payload, field):
    response = client.post(TASKS, json=payload, headers=alice)
    body = problem(response, 422)
    assert f"field '{field}'" in body["detail"]
    assert f"/{field}" in [error.get("pointer") for error in body["errors"]]


def test_create_with_a_non_json_body_is_415(client, alice):
    response = client.post(TASKS, data="title=x", headers=alice, content_type="text/plain")
    assert response.status_code == 415


# Authentication


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", TASKS),
        ("post", TASKS),
        ("get", STATS),
        ("get", ACTIVITY),
        ("get", f"{TASKS}/{UNKNOWN_ID}"),
        ("patch", f"{TASKS}/{UNKNOWN_ID}"),
        ("delete", f"{TASKS}/{UNKNOWN_ID}"),
    ],
)
def test_every_task_route_needs_a_token(client, method, path):
    response = getattr(client, method)(path, json={"title": "x"})
    assert response.status_code == 401


def test_authentication_is_checked_before_the_body(client):
    response = client.post(TASKS, data="not json", content_type="application/json")
    assert response.status_code == 401


# Get


def test_get_returns_the_users_task(client, alice):
    task = create(client, alice, title="mine")
    response = client.get(f"{TASKS}/{task['id']}", headers=alice)
    assert response.status_code == 200
    assert response.get_json() == task


@pytest.mark.parametrize("task_id", [UNKNOWN_ID, "not-an-id", "123", "g" * 24, "0" * 23, "0" * 25])
def test_get_of_an_unknown_or_malformed_id_is_404(client, alice, task_id):
    response = client.get(f"{TASKS}/{task_id}", headers=alice)
    assert response.status_code == 404
    assert response.get_json()["status"] == 404


def test_another_users_task_is_404_for_every_method(client, alice, bob):
    task = create(client, alice, title="alice's")
    path = f"{TASKS}/{task['id']}"
    assert client.get(path, headers=bob).status_code == 404
    assert client.patch(path, json={"title": "bob's now"}, headers=bob).status_code == 404
    assert client.delete(path, headers=bob).status_code == 404
    assert client.get(path, headers=alice).get_json() == task


def test_an_uppercase_id_names_the_same_task_and_sees_its_changes(client, alice):
    task = create(client, alice, title="before")
    upper = f"{TASKS}/{task['id'].upper()}"
    assert client.get(upper, headers=alice).get_json()["title"] == "before"
    client.patch(f"{TASKS}/{task['id']}", json={"title": "after"}, headers=alice)
    assert client.get(upper, headers=alice).get_json()["title"] == "after"


def test_a_repeated_read_is_answered_without_a_database_read(client, alice):
    task = create(client, alice)
    client.get(f"{TASKS}/{task['id']}", headers=alice)
    before = db_reads()
    response = client.get(f"{TASKS}/{task['id']}", headers=alice)
    assert response.status_code == 200
    assert db_reads() == before


def test_a_missing_task_is_remembered_so_repeated_404s_skip_the_database(client, alice):
    path = f"{TASKS}/{UNKNOWN_ID}"
    client.get(path, headers=alice)
    before = db_reads()
    assert client.get(path, headers=alice).status_code == 404
    assert db_reads() == before


# List


def test_list_returns_the_users_tasks_newest_first(client, alice):
    titles = [create(client, alice, title=f"task {i}")["title"] for i in range(3)]
    body = client.get(TASKS, headers=alice).get_json()
    assert [item["title"] for item in body["items"]] == titles[::-1]
    assert (body["page"], body["per_page"], body["total"]) == (1, 10, 3)
    assert all(set(item) == TASK_FIELDS for item in body["items"])


def test_list_pages_cover_every_task_once_in_order(client, alice):
    ids = [create(client, alice, title=f"task {i}")["id"] for i in range(7)]
    pages = [
        client.get(f"{TASKS}?page={page}&per_page=3", headers=alice).get_json()
        for page in (1, 2, 3)
    ]
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert [item["id"] for page in pages for item in page["items"]] == ids[::-1]
    assert {page["total"] for page in pages} == {7}


def test_list_past_the_last_page_is_empty_with_the_total(client, alice):
    create(client, alice)
    body = client.get(f"{TASKS}?page=5", headers=alice).get_json()
    assert body == {"items": [], "page": 5, "per_page": 10, "total": 1}


def test_list_default_page_size_is_10(client, alice):
    for i in range(11):
        create(client, alice, title=f"task {i}")
    body = client.get(TASKS, headers=alice).get_json()
    assert (len(body["items"]), body["total"]) == (10, 11)


@pytest.mark.parametrize(("flag", "expected"), [("true", {"done"}), ("false", {"open"})])
def test_list_filters_by_completed(client, alice, flag, expected):
    create(client, alice, title="done", completed=True)
    create(client, alice, title="open")
    body = client.get(f"{TASKS}?completed={flag}", headers=alice).get_json()
    assert {item["title"] for item in body["items"]} == expected
    assert body["total"] == 1


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("per_page=0", "per_page"),
        ("per_page=101", "per_page"),
        ("per_page=1.5", "per_page"),
        ("completed=maybe", "completed"),
        ("pgae=2", "pgae"),
    ],
)
def test_list_with_invalid_parameters_is_422_naming_them(client, alice, query, parameter):
    response = client.get(f"{TASKS}?{query}", headers=alice)
    body = problem(response, 422)
    assert f"'{parameter}'" in body["detail"]
    assert parameter in [error.get("parameter") for error in body["errors"]]


def test_list_accepts_the_largest_page_size(client, alice):
    create(client, alice)
    assert client.get(f"{TASKS}?per_page=100", headers=alice).get_json()["per_page"] == 100


# Update


def test_update_changes_only_the_sent_fields_and_updated_at(app, client, alice):
    from taskapp.models import Task

    task = create(client, alice, title="old", description="keep me", priority="low")
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    with app.app_context():  # an updated_at the update must visibly move (not just keep)
        Task.objects(id=ObjectId(task["id"])).update(set__updated_at=long_ago)
    started = datetime.now(UTC) - timedelta(seconds=1)
    response = client.patch(
        f"{TASKS}/{task['id']}", json={"title": "new", "completed": True}, headers=alice
    )
    assert response.status_code == 200
    updated = response.get_json()
    assert (updated["title"], updated["completed"]) == ("new", True)
    assert (updated["description"], updated["priority"]) == ("keep me", "low")
    assert updated["created_at"] == task["created_at"]
    assert parse(updated["updated_at"]) >= started > long_ago


def test_update_with_a_null_due_date_clears_it(client, alice):
    task = create(client, alice, due_date="2030-01-01T00:00:00Z")
    updated = client.patch(f"{TASKS}/{task['id']}", json={"due_date": None}, headers=alice)
    assert updated.get_json()["due_date"] is None


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "at least one field"),
        ({"title": None}, "'title'"),
        ({"completed": None}, "'completed'"),
        ({"title": ""}, "'title'"),
        ({"completed": "yes"}, "'completed'"),
        ({"priority": "urgent"}, "'priority'"),
        ({"id": UNKNOWN_ID}, "'id'"),
    ],
)
def test_update_with_invalid_fields_is_422(client, alice, payload, fragment):
    task = create(client, alice)
    response = client.patch(f"{TASKS}/{task['id']}", json=payload, headers=alice)
    body = problem(response, 422)
    assert fragment in body["detail"]
    pointers = [error["pointer"] for error in body["errors"]]
    assert pointers == ([""] if payload == {} else [f"/{fragment.strip(chr(39))}"])


@pytest.mark.parametrize("task_id", [UNKNOWN_ID, "not-an-id"])
def test_update_of_an_unknown_or_malformed_id_is_404(client, alice, task_id):
    response = client.patch(f"{TASKS}/{task_id}", json={"title": "x"}, headers=alice)
    assert response.status_code == 404


# Delete


def test_delete_answers_204_with_an_empty_body_and_the_task_is_gone(client, alice):
    task = create(client, alice)
    response = client.delete(f"{TASKS}/{task['id']}", headers=alice)
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers  # no content, so no type of it
    assert client.get(f"{TASKS}/{task['id']}", headers=alice).status_code == 404
    assert client.delete(f"{TASKS}/{task['id']}", headers=alice).status_code == 404


@pytest.mark.parametrize("task_id", [UNKNOWN_ID, "not-an-id"])
def test_delete_of_an_unknown_or_malformed_id_is_404(client, alice, task_id):
    assert client.delete(f"{TASKS}/{task_id}", headers=alice).status_code == 404


# Conditional writes: ETag on every answer with a task, If-Match on PATCH and DELETE

WRITE_STRATEGIES = ["invalidate", "write-through", "write-behind"]


@pytest.fixture(params=WRITE_STRATEGIES)
def writer(request, make_app):
    """A client and a user's headers on an app of each write strategy."""
    app = make_app(TASK_WRITE_STRATEGY=request.param, WRITE_BEHIND_FLUSH_MS=100)
    client = app.test_client()
    from tests.api import account

    return app, client, account(client)[1]


def get_etag(client, headers, task_id: str) -> str:
    response = client.get(f"{TASKS}/{task_id}", headers=headers)
    assert response.status_code == 200
    return response.headers["ETag"]


def test_create_answers_201_with_location_and_the_etag_a_get_answers(writer):
    _, client, headers = writer
    response = client.post(TASKS, json={"title": "located"}, headers=headers)
    assert response.status_code == 201
    task = response.get_json()
    assert response.headers["Location"] == f"{TASKS}/{task['id']}"
    got = client.get(response.headers["Location"], headers=headers)
    assert got.get_json() == task
    assert response.headers["ETag"] == got.headers["ETag"]


def test_patch_answers_the_etag_a_following_get_answers(writer):
    _, client, headers = writer
    task = create(client, headers)
    before = get_etag(client, headers, task["id"])
    response = client.patch(f"{TASKS}/{task['id']}", json={"completed": True}, headers=headers)
    assert response.status_code == 200
    assert response.headers["ETag"] != before
    assert response.headers["ETag"] == get_etag(client, headers, task["id"])


def test_patch_with_the_current_etag_in_if_match_is_made(writer):
    _, client, headers = writer
    task = create(client, headers)
    url = f"{TASKS}/{task['id']}"
    for title, if_match in (("one", "{}"), ("two", '"other", {}'), ("three", "*")):
        current = get_etag(client, headers, task["id"])
        sent = {**headers, "If-Match": if_match.format(current)}
        response = client.patch(url, json={"title": title}, headers=sent)
        assert response.status_code == 200, (if_match, response.get_json())
        assert client.get(url, headers=headers).get_json()["title"] == title


@pytest.mark.parametrize("kind", ["stale", "weak", "unknown"])
def test_patch_with_an_if_match_that_is_not_current_is_412_and_changes_nothing(writer, kind):
    _, client, headers = writer
    task = create(client, headers, title="first")
    url = f"{TASKS}/{task['id']}"
    stale = get_etag(client, headers, task["id"])
    client.patch(url, json={"title": "second"}, headers=headers)
    current = get_etag(client, headers, task["id"])
    # A weak tag never matches (strong comparison, RFC 9110 section 13.1.1), even the current one.
    if_match = {"stale": stale, "weak": f"W/{current}", "unknown": '"nope"'}[kind]
    response = client.patch(url, json={"title": "third"}, headers={**headers, "If-Match": if_match})
    assert response.status_code == 412
    assert response.get_json()["status"] == 412
    after = client.get(url, headers=headers)
    assert after.get_json()["title"] == "second"
    assert after.headers["ETag"] == current


def test_delete_with_an_if_match_that_is_not_current_is_412_and_deletes_nothing(writer):
    _, client, headers = writer
    task = create(client, headers)
    url = f"{TASKS}/{task['id']}"
    stale = get_etag(client, headers, task["id"])
    client.patch(url, json={"completed": True}, headers=headers)
    response = client.delete(url, headers={**headers, "If-Match": stale})
    assert response.status_code == 412
    assert client.get(url, headers=headers).get_json()["completed"] is True
    current = get_etag(client, headers, task["id"])
    assert client.delete(url, headers={**headers, "If-Match": current}).status_code == 204
    assert client.get(url, headers=headers).status_code == 404


def test_if_match_star_matches_any_existing_task_only(writer):
    _, client, headers = writer
    task = create(client, headers)
    url = f"{TASKS}/{task['id']}"
    star = {**headers, "If-Match": "*"}
    assert client.delete(url, headers=star).status_code == 204
    assert client.delete(url, headers=star).status_code == 404
    assert client.patch(url, json={"completed": True}, headers=star).status_code == 404


@pytest.mark.parametrize("strategy", ["invalidate", "write-through"])
def test_a_change_landing_between_the_if_match_check_and_the_write_makes_it_412(make_app, strategy):
    """The check and the write are one step in MongoDB: the write is filtered by the version
    that was checked, so a change made in between (here, by the check itself) is never lost."""
    from taskapp.tasks import service
    from taskapp.tasks.schemas import TaskUpdate

    app = make_app(TASK_WRITE_STRATEGY=strategy)
    client = app.test_client()
    from tests.api import account

    user_id, headers = account(client)
    task = create(client, headers, title="first")

    def changed_meanwhile(current: dict) -> bool:
        service.update_task(user_id, task["id"], TaskUpdate(title="meanwhile"))
        return True  # it was current when checked

    with app.test_request_context():
        with pytest.raises(Exception) as refused:
            service.update_task(user_id, task["id"], TaskUpdate(title="lost?"), changed_meanwhile)
        assert getattr(refused.value, "code", None) == 412
        with pytest.raises(Exception) as refused:
            service.delete_task(user_id, task["id"], changed_meanwhile)
        assert getattr(refused.value, "code", None) == 412
    assert client.get(f"{TASKS}/{task['id']}", headers=headers).get_json()["title"] == "meanwhile"


# Read-your-writes: every cached view reflects a change on the very next request


def warm(client, headers, *paths):
    """Read each path twice so both cache layers hold it."""
    for path in paths:
        client.get(path, headers=headers)
        assert client.get(path, headers=headers).status_code in (200, 404)


def test_a_created_task_appears_at_once_in_the_list_and_stats(client, alice):
    create(client, alice, title="first")
    warm(client, alice, TASKS, f"{TASKS}?completed=false", STATS, ACTIVITY)
    second = create(client, alice, title="second")
    assert client.get(TASKS, headers=alice).get_json()["items"][0] == second
    assert client.get(f"{TASKS}?completed=false", headers=alice).get_json()["total"] == 2
    assert client.get(STATS, headers=alice).get_json()["total"] == 2
    assert client.get(ACTIVITY, headers=alice).get_json()["items"][0]["task_id"] == second["id"]


def test_an_updated_task_is_seen_at_once_in_the_task_list_and_stats(client, alice):
    task = create(client, alice, title="before")
    path = f"{TASKS}/{task['id']}"
    warm(client, alice, path, TASKS, f"{TASKS}?completed=true", STATS)
    updated = client.patch(path, json={"title": "after", "completed": True}, headers=alice)
    assert client.get(path, headers=alice).get_json() == updated.get_json()
    assert client.get(TASKS, headers=alice).get_json()["items"] == [updated.get_json()]
    assert client.get(f"{TASKS}?completed=true", headers=alice).get_json()["total"] == 1
    assert client.get(STATS, headers=alice).get_json()["completed"] == 1


def test_a_deleted_task_disappears_at_once_from_the_task_list_and_stats(client, alice):
    task = create(client, alice)
    path = f"{TASKS}/{task['id']}"
    warm(client, alice, path, TASKS, STATS)
    client.delete(path, headers=alice)
    assert client.get(path, headers=alice).status_code == 404
    assert client.get(TASKS, headers=alice).get_json()["total"] == 0
    assert client.get(STATS, headers=alice).get_json()["total"] == 0


# Stats


def test_stats_count_total_completed_open_and_overdue(client, alice):
    now = datetime.now(UTC)
    create(client, alice, title="overdue", due_date=iso(now - timedelta(days=1)))
    create(client, alice, title="done late", completed=True, due_date=iso(now - timedelta(days=1)))
    create(client, alice, title="due later", due_date=iso(now + timedelta(days=1)))
    create(client, alice, title="no date")
    response = client.get(STATS, headers=alice)
    assert response.status_code == 200
    assert response.get_json() == {"total": 4, "completed": 1, "open": 3, "overdue": 1}


def test_stats_of_a_user_without_tasks_are_zero(client, alice):
    expected = {"total": 0, "completed": 0, "open": 0, "overdue": 0}
    assert client.get(STATS, headers=alice).get_json() == expected


# Activity


def test_activity_lists_the_users_actions_newest_first(client, alice):
    task = create(client, alice, title="one")
    client.patch(f"{TASKS}/{task['id']}", json={"title": "one, renamed"}, headers=alice)
    client.delete(f"{TASKS}/{task['id']}", headers=alice)
    items = client.get(ACTIVITY, headers=alice).get_json()["items"]
    assert [(i["action"], i["title"]) for i in items] == [
        ("deleted", "one, renamed"),
        ("updated", "one, renamed"),
        ("created", "one"),
    ]
    assert {i["task_id"] for i in items} == {task["id"]}
    assert all(i["at"].endswith("Z") for i in items)


def test_activity_returns_at_most_limit_items(client, alice):
    for i in range(5):
        create(client, alice, title=f"task {i}")
    items = client.get(f"{ACTIVITY}?limit=2", headers=alice).get_json()["items"]
    assert [i["title"] for i in items] == ["task 4", "task 3"]
    assert len(client.get(ACTIVITY, headers=alice).get_json()["items"]) == 5


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x"])
def test_activity_with_an_invalid_limit_is_422(client, alice, query):
    assert client.get(f"{ACTIVITY}?{query}", headers=alice).status_code == 422


def test_activity_is_rebuilt_from_mongodb_when_redis_lost_it(client, app, alice):
    for i in range(3):
        create(client, alice, title=f"task {i}")
    expected = client.get(ACTIVITY, headers=alice).get_json()
    user_id = _user_id(app, "alice@example.com")
    with app.app_context():
        cache.delete(keys.activity(user_id))
        cache.invalidate_tags(keys.responses_tag(user_id))  # the cached HTTP response too
    before = db_reads()
    assert client.get(ACTIVITY, headers=alice).get_json() == expected
    assert db_reads() > before


# Isolation


def test_two_users_never_see_each_others_data(client, alice, bob):
    mine = create(client, alice, title="alice's", completed=True)
    theirs = create(client, bob, title="bob's")
    assert [t["id"] for t in client.get(TASKS, headers=alice).get_json()["items"]] == [mine["id"]]
    assert [t["id"] for t in client.get(TASKS, headers=bob).get_json()["items"]] == [theirs["id"]]
    assert client.get(STATS, headers=alice).get_json()["completed"] == 1
    assert client.get(STATS, headers=bob).get_json()["completed"] == 0
    alice_feed = client.get(ACTIVITY, headers=alice).get_json()["items"]
    assert [i["task_id"] for i in alice_feed] == [mine["id"]]
    assert client.get(f"{TASKS}/{theirs['id']}", headers=alice).status_code == 404


def _user_id(app, email: str) -> str:
    with app.app_context():
        return str(User.objects.get(email=email).id)


def test_tasks_are_served_from_mongodb_while_redis_is_down(make_app):
    client = make_app(REDIS_URL="redis://127.0.0.1:1/0").test_client()
    credentials = {"email": "alice@example.com", "password": "correct horse battery"}
    assert client.post("/api/v1/auth/register", json=credentials).status_code == 201
    token = client.post("/api/v1/auth/login", json=credentials).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    task = create(client, headers, title="still works")
    assert client.get(f"{TASKS}/{task['id']}", headers=headers).get_json() == task
    assert client.get(TASKS, headers=headers).get_json()["total"] == 1
    assert client.get(STATS, headers=headers).get_json()["total"] == 1
    assert client.get(ACTIVITY, headers=headers).get_json()["items"][0]["task_id"] == task["id"]
    client.patch(f"{TASKS}/{task['id']}", json={"title": "changed"}, headers=headers)
    assert client.get(f"{TASKS}/{task['id']}", headers=headers).get_json()["title"] == "changed"
