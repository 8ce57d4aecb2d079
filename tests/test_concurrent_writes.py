"""Concurrent PATCHes of one task through 3 gunicorn workers: both changes land, version rises by 2.

This needs a MongoDB that updates one document atomically. FerretDB 1.x, the suite's own
stand-in, does not: two ``update_one`` calls with ``$set`` + ``$inc`` on one document from two
connections lose one of them in most rounds (``bench/ferretdb_standin.py``; docs/testing.md,
"FerretDB is a stand-in"). So the test runs only against a MongoDB you give (``--mongodb-uri`` or
``TEST_MONGODB_URI``) and otherwise says why it does not run.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pymongo
import pytest
from bson import ObjectId

from tests.test_deployment import deployment, login, register  # noqa: F401  (the fixture)
from tests.test_gunicorn import call, serve  # noqa: F401  (the fixture)

ROUNDS = 25


@pytest.fixture
def given_mongodb(request) -> None:
    """Skip unless the run was given its MongoDB (the suite's own FerretDB loses updates)."""
    if not request.config.getoption("--mongodb-uri"):
        pytest.skip(
            "needs --mongodb-uri / TEST_MONGODB_URI: the suite's own FerretDB 1.x loses one of two "
            "concurrent updates of one document (docs/testing.md: FerretDB is a stand-in)"
        )


@pytest.mark.parametrize("strategy", ["invalidate", "write-through"])
def test_two_concurrent_patches_of_different_fields_both_land(
    given_mongodb,
    deployment,  # noqa: F811
    mongodb_uri,
    strategy,
):
    server = deployment(RATE_LIMIT_PER_MINUTE="0", TASK_WRITE_STRATEGY=strategy)
    _, email = register(server)
    headers = login(server, email)
    status, _, task = call(server.base, "POST", "/api/v1/tasks", {"title": "t0"}, headers)
    assert status == 201, task
    path = f"/api/v1/tasks/{task['id']}"
    client = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=3000)
    tasks = client[urlsplit(mongodb_uri).path.lstrip("/")]["tasks"]
    lost, disagree = [], []
    try:
        for round_ in range(1, ROUNDS + 1):
            before = tasks.find_one({"_id": ObjectId(task["id"])})["version"]
            changes = [{"title": f"t{round_}"}, {"description": f"d{round_}"}]
            barrier = threading.Barrier(2)
            statuses: list[int] = []

            def patch(change: dict, barrier=barrier, statuses=statuses) -> None:
                barrier.wait()
                statuses.append(call(server.base, "PATCH", path, change, headers)[0])

            threads = [threading.Thread(target=patch, args=(change,)) for change in changes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(15)
            assert statuses == [200, 200]
            stored = tasks.find_one({"_id": ObjectId(task["id"])})
            _, _, shown = call(server.base, "GET", path, headers=headers)
            found = (stored["title"], stored["description"], stored["version"] - before)
            if found != (f"t{round_}", f"d{round_}", 2):
                lost.append((round_, found))
            if (shown["title"], shown["description"]) != found[:2]:
                disagree.append((round_, shown["title"], shown["description"], found[:2]))
    finally:
        client.close()
    assert lost == [], (
        f"{len(lost)} of {ROUNDS} rounds lost an update: {lost[:5]}; "
        f"the API disagreed with MongoDB in {len(disagree)}: {disagree[:3]}"
    )
    # Both writes answered: the API shows what MongoDB has (no cached copy of a lost update).
    assert disagree == [], f"{len(disagree)} of {ROUNDS} rounds: the API disagrees: {disagree[:5]}"
