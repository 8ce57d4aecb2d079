"""One rule for every route's query string: known parameters, each once, and the `_` cache-buster."""

from __future__ import annotations

import pytest

from tests.test_errors import assert_json_error

TASKS = "/api/v1/tasks"


@pytest.fixture
def alice(register):
    return register("alice@example.com")


@pytest.fixture
def routes(client, alice):
    task = client.post(TASKS, json={"title": "t"}, headers=alice).get_json()
    return [TASKS, f"{TASKS}/stats", f"{TASKS}/{task['id']}", "/api/v1/activity", "/healthz"]


def test_an_unknown_parameter_is_a_422_naming_it_on_every_route(client, alice, routes):
    for path in routes:
        message = assert_json_error(client.get(f"{path}?colour=red", headers=alice), 422)
        assert "'colour'" in message, path


def test_a_repeated_parameter_is_a_422_on_every_route(client, alice, routes):
    for path in routes:
        message = assert_json_error(client.get(f"{path}?_=1&_=2", headers=alice), 422)
        assert "repeated" in message, path
    message = assert_json_error(client.get(f"{TASKS}?page=1&page=2", headers=alice), 422)
    assert "'page'" in message


def test_a_repeated_page_is_never_answered_from_another_requests_entry(client, alice):
    for n in range(2):
        client.post(TASKS, json={"title": f"t{n}"}, headers=alice)
    assert client.get(f"{TASKS}?per_page=1&page=2&page=1", headers=alice).status_code == 422
    assert client.get(f"{TASKS}?per_page=1&page=1&page=2", headers=alice).status_code == 422


def test_the_cache_buster_is_accepted_everywhere_and_shares_the_cached_answer(
    client, alice, routes
):
    for path in routes:
        assert client.get(f"{path}?_=1", headers=alice).status_code == 200, path
    first = client.get(f"{TASKS}?page=1&_=123", headers=alice)
    second = client.get(f"{TASKS}?_=456&page=1", headers=alice)
    assert second.headers["X-Cache"] == "HIT"
    assert second.data == first.data
