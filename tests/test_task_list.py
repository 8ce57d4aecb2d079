"""The task list's filters and orders: results, validation, cache keys, invalidation, indexes."""

from __future__ import annotations

import pytest
from bson import ObjectId

from taskapp import keys
from taskapp.models import Task
from tests.api import problem
from tests.cache_helpers import wait_until

TASKS = "/api/v1/tasks"


@pytest.fixture
def alice(register) -> dict[str, str]:
    return register("alice@example.com")


def create(client, headers, title: str, **fields) -> dict:
    response = client.post(TASKS, json={"title": title, **fields}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def titles(client, headers, query: str) -> list[str]:
    response = client.get(f"{TASKS}?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [item["title"] for item in response.get_json()["items"]]


@pytest.fixture
def mixed(client, alice) -> None:
    """Five tasks, created in this order: a to e."""
    create(client, alice, "a", priority="high", due_date="2030-03-01T00:00:00Z")
    create(client, alice, "b", priority="low", due_date="2030-01-01T00:00:00Z", completed=True)
    create(client, alice, "c", priority="medium")
    create(client, alice, "d", priority="low", due_date="2030-02-01T12:00:00+02:00")
    create(client, alice, "e", priority="high")


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("-created_at", ["e", "d", "c", "b", "a"]),
        ("created_at", ["a", "b", "c", "d", "e"]),
        ("priority", ["b", "d", "c", "a", "e"]),  # low < medium < high; ties oldest first
        ("-priority", ["e", "a", "c", "d", "b"]),
        ("due_date", ["c", "e", "b", "d", "a"]),  # tasks without a due date first
        ("-due_date", ["a", "d", "b", "e", "c"]),
    ],
)
def test_list_sorts_by_each_order(client, alice, mixed, sort, expected):
    assert titles(client, alice, f"sort={sort}") == expected


def test_the_default_order_is_newest_first(client, alice, mixed):
    assert titles(client, alice, "") == titles(client, alice, "sort=-created_at")


def test_pages_of_a_sorted_list_cover_every_task_once(client, alice):
    for i in range(7):
        create(client, alice, f"t{i}", priority=("low", "medium", "high")[i % 3])
    pages = [titles(client, alice, f"sort=-priority&per_page=3&page={p}") for p in (1, 2, 3)]
    assert pages == [["t5", "t2", "t4"], ["t1", "t6", "t3"], ["t0"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("priority=low", {"b", "d"}),
        ("priority=high&completed=false", {"a", "e"}),
        ("priority=low&completed=true", {"b"}),
        ("due_before=2030-02-01T10:00:00Z", {"b"}),  # strictly before; d is due at 10:00 UTC
        ("due_before=2030-02-01T10:00:00.001Z", {"b", "d"}),
        ("due_after=2030-02-01T10:00:00Z", {"a"}),  # strictly after
        ("due_after=2030-01-01&due_before=2030-03-01", {"d"}),  # a date alone is midnight UTC
        ("due_after=2030-02-01T11:00:00%2B02:00", {"a", "d"}),  # 09:00 UTC
        ("due_after=2030-02-01T13:00:00 02:00", {"a"}),  # a "+" decoded as a space
        ("due_after=2030-02-01t09:00:00z", {"a", "d"}),  # RFC 3339 allows lowercase
        ("due_before=2031-01-01T00:00:00Z", {"a", "b", "d"}),  # never the undated ones
        ("due_before=2031-01-01T00:00:00Z&priority=low&sort=due_date", {"b", "d"}),
        ("due_after=2031-01-01T00:00:00Z", set()),
    ],
)
def test_list_filters_by_priority_and_due_dates(client, alice, mixed, query, expected):
    response = client.get(f"{TASKS}?{query}", headers=alice).get_json()
    assert {item["title"] for item in response["items"]} == expected
    assert response["total"] == len(expected)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("priority=urgent", "priority"),
        ("priority=", "priority"),
        ("sort=title", "sort"),
        ("sort=+priority", "sort"),
        ("due_before=tomorrow", "due_before"),
        ("due_before=1700000000", "due_before"),
        ("due_after=2030-13-01", "due_after"),
        ("due_after=2030-01-01T25:00:00Z", "due_after"),
    ],
)
def test_invalid_filters_and_orders_are_422_naming_the_parameter(client, alice, query, parameter):
    response = client.get(f"{TASKS}?{query}", headers=alice)
    body = problem(response, 422)
    assert f"parameter '{parameter}'" in body["detail"]
    assert [error["parameter"] for error in body["errors"]] == [parameter]


def test_each_filter_and_order_is_part_of_the_page_key():
    user = str(ObjectId())
    plain = keys.task_list(user, 1, 10, None)
    assert plain == f"{{u:{user}}}:tasks:1:10:any"
    assert keys.task_list(user, 1, 10, None, sort="-created_at") == plain
    variants = [
        keys.task_list(user, 1, 10, True),
        keys.task_list(user, 1, 10, None, priority="high"),
        keys.task_list(user, 1, 10, None, priority="low"),
        keys.task_list(user, 1, 10, None, due_after="2030-01-01T00:00:00.000Z"),
        keys.task_list(user, 1, 10, None, due_before="2030-01-01T00:00:00.000Z"),
        keys.task_list(user, 1, 10, None, sort="priority"),
        keys.task_list(user, 1, 10, None, sort="-priority"),
    ]
    assert len({plain, *variants}) == 1 + len(variants)


def test_differently_filtered_pages_are_cached_apart(client, alice, mixed):
    queries = [
        "priority=low",
        "priority=high",
        "sort=priority",
        "sort=-priority",
        "due_before=2030-02-01",
    ]
    first = {q: titles(client, alice, q) for q in queries}
    for q in queries:  # again, from the cache: each its own answer
        response = client.get(f"{TASKS}?{q}", headers=alice)
        assert response.headers["X-Cache"] == "HIT"
        assert [i["title"] for i in response.get_json()["items"]] == first[q]
        bypass = client.get(f"{TASKS}?{q}", headers={**alice, "Cache-Control": "no-cache"})
        assert bypass.headers["X-Cache"] == "HIT"  # the service's own cached page
        assert [i["title"] for i in bypass.get_json()["items"]] == first[q]
    assert len(set(map(tuple, first.values()))) == len(queries)


def test_a_write_changes_every_filtered_and_sorted_page_at_once(client, alice, mixed):
    pages = ["priority=high", "sort=-priority", "due_before=2030-02-15", "sort=due_date"]
    for query in pages:
        titles(client, alice, query)
        titles(client, alice, query)  # cached now
    c = client.get(f"{TASKS}?priority=medium", headers=alice).get_json()["items"][0]
    client.patch(
        f"{TASKS}/{c['id']}",
        json={"priority": "high", "due_date": "2030-01-15T00:00:00Z"},
        headers=alice,
    )
    assert set(titles(client, alice, "priority=high")) == {"a", "c", "e"}
    assert titles(client, alice, "sort=-priority") == ["e", "c", "a", "d", "b"]
    assert set(titles(client, alice, "due_before=2030-02-15")) == {"b", "c", "d"}
    assert titles(client, alice, "sort=due_date") == ["e", "b", "c", "d", "a"]
    client.delete(f"{TASKS}/{c['id']}", headers=alice)
    assert set(titles(client, alice, "priority=high")) == {"a", "e"}


def test_a_new_task_appears_at_once_in_cached_filtered_and_sorted_pages(client, alice, mixed):
    assert titles(client, alice, "sort=-priority&per_page=5") == ["e", "a", "c", "d", "b"]
    assert titles(client, alice, "priority=low&sort=created_at") == ["b", "d"]
    create(client, alice, "f", priority="low")
    assert titles(client, alice, "sort=-priority&per_page=5") == ["e", "a", "c", "f", "d"]
    assert titles(client, alice, "priority=low&sort=created_at") == ["b", "d", "f"]


def test_a_repeated_parameter_is_refused_in_either_order(client, alice, mixed):
    """One rule for every route: a parameter sent twice is a 422 naming it, never a cached
    answer for the other order."""
    for query in ("priority=low&priority=high", "priority=high&priority=low"):
        for _ in range(2):
            response = client.get(f"{TASKS}?{query}", headers=alice)
            body = problem(response, 422)
            assert "priority" in body["detail"]
            assert body["errors"] == [{"parameter": "priority", "detail": "repeated; send it once"}]


def test_an_encoded_ampersand_never_passes_for_two_parameters(client, alice, mixed):
    assert client.get(f"{TASKS}?priority=low&sort=priority", headers=alice).status_code == 200
    response = client.get(f"{TASKS}?priority=low%26sort%3Dpriority", headers=alice)
    assert response.status_code == 422


def index_keys(app) -> list[list[tuple[str, int]]]:
    with app.app_context():
        indexes = Task._get_collection().index_information()
    return [
        [(name, int(direction)) for name, direction in index["key"]] for index in indexes.values()
    ]


@pytest.mark.parametrize(
    "shape",
    [
        [("owner", 1), ("created_at", -1)],  # the plain list, both created_at orders
        [("owner", 1), ("completed", 1), ("created_at", -1)],
        [("owner", 1), ("priority", 1), ("created_at", -1)],
        [("owner", 1), ("due_date", 1), ("_id", 1)],  # due ranges and both due_date orders
        [("owner", 1), ("priority_rank", 1), ("_id", 1)],  # both priority orders
    ],
)
def test_mongodb_has_an_index_for_each_filter_and_order(app, shape):
    assert shape in index_keys(app)


def test_tasks_stored_without_a_rank_are_ranked_at_start(make_app, mongodb_uri):
    app = make_app()
    client = app.test_client()
    from tests.api import account

    user_id, headers = account(client)
    create(client, headers, "new", priority="medium")
    with app.app_context():
        collection = Task._get_collection()
        for title, priority in (("old-high", "high"), ("old-low", "low")):
            doc = Task(owner=ObjectId(user_id), title=title, priority=priority).to_mongo()
            del doc["priority_rank"]
            collection.insert_one(doc)
    restarted = make_app()  # the next start of the app on the same database
    with restarted.app_context():
        ranks = {t.title: t.priority_rank for t in Task.objects(owner=ObjectId(user_id))}
    assert ranks == {"new": 1, "old-high": 2, "old-low": 0}
    assert titles(restarted.test_client(), headers, "sort=priority") == [
        "old-low",
        "new",
        "old-high",
    ]


def test_a_write_behind_priority_change_reaches_the_rank_in_mongodb(make_app):
    from taskapp.tasks.service import start_flushers
    from tests.api import account

    app = make_app(TASK_WRITE_STRATEGY="write-behind", WRITE_BEHIND_FLUSH_MS=50)
    start_flushers(app)
    client = app.test_client()

    headers = account(client)[1]
    task = create(client, headers, "x", priority="low")
    client.patch(f"{TASKS}/{task['id']}", json={"priority": "high"}, headers=headers)

    def ranked_high() -> bool:
        with app.app_context():
            stored = Task.objects(id=ObjectId(task["id"])).first()
            return stored.priority == "high" and stored.priority_rank == 2

    wait_until(ranked_high, timeout=10)
