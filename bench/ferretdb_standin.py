"""FerretDB as a stand-in for MongoDB: its lost updates, what a scan costs, its query plans.

    .venv/bin/python -m bench.ferretdb_standin [--mongodb-uri URI] [--docs 5000,10000,20000]

With a redis-server and (without ``--mongodb-uri``) the tests' FerretDB 1.24 of its own, it
prints as Markdown: the rounds in which one of two simultaneous updates of a document was lost;
through the API, a list-page miss, hit and PATCH of a user who owns 10 tasks among 0 and
``--docs`` documents of 100 other users; the explain of each query the app relies on.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pymongo
from bson import Int64, ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def plans(tasks: Any) -> dict[str, str]:
    """The server's explain of each query the app relies on, on the app's own collection."""
    mine = tasks.find_one()
    owner, one = {"owner": mine["owner"]}, {"_id": mine["_id"], "owner": mine["owner"]}
    overdue = {**owner, "completed": False, "due_date": {"$lt": mine["created_at"]}}
    change = {"$set": {"title": "x"}, "$inc": {"version": 1}}
    newest = {"sort": {"created_at": -1, "_id": -1}, "skip": Int64(0), "limit": Int64(10)}

    def grouped(by: Any) -> dict[str, Any]:
        group = {"$group": {"_id": by, "n": {"$sum": 1}}}
        return {"aggregate": "tasks", "pipeline": [{"$match": owner}, group], "cursor": {}}

    commands = {
        "list page": {"find": "tasks", "filter": owner, **newest},
        "list count": grouped(1),
        "stats $group": grouped("$completed"),
        "stats overdue count": {"count": "tasks", "query": overdue},
        "one task": {"find": "tasks", "filter": one, "limit": Int64(1)},
        "PATCH findAndModify": {"findAndModify": "tasks", "query": one, "update": change},
        "(not the app's) by _id alone": {"find": "tasks", "filter": {"_id": mine["_id"]}},
    }
    shown = {}
    for name, command in commands.items():
        plan = tasks.database.command("explain", command, verbosity="queryPlanner")
        drop = ("serverInfo", "command", "ok")
        shown[name] = json.dumps({k: v for k, v in plan.items() if k not in drop}, default=str)
    return shown


def update(how: str, _id: ObjectId, gate: threading.Barrier, collection: Any, n: int) -> None:
    """One of two simultaneous updates of a document: its own field, and the shared counter."""
    gate.wait()
    getattr(collection, how)({"_id": _id}, {"$set": {f"field{n}": True}, "$inc": {"n": 1}})


def lost_updates(uri: str, rounds: int, how: str) -> int:
    """Rounds (of ``rounds``) in which one of two simultaneous updates of one document was lost."""
    collections = [pymongo.MongoClient(uri)["standin_lost"]["updates"] for _ in range(2)]
    lost = 0
    with ThreadPoolExecutor(2) as pool:  # each update on a connection of its own
        for _ in range(rounds):
            _id, gate = collections[0].insert_one({"n": 0}).inserted_id, threading.Barrier(2)
            list(pool.map(partial(update, how, _id, gate), collections, range(2)))
            doc = collections[0].find_one({"_id": _id})
            lost += doc["n"] != 2 or not (doc.get("field0") and doc.get("field1"))
    collections[0].database.client.drop_database("standin_lost")
    for collection in collections:
        collection.database.client.close()
    return lost


def api_timings(uri: str, redis_url: str, others: int) -> tuple[dict[str, float], dict[str, str]]:
    """A list miss, a list hit and a PATCH through the API with ``others`` foreign documents
    (medians of 5, ms); and the query plans on that collection."""
    from taskapp import create_app

    dbname = f"standin_{uuid.uuid4().hex[:8]}"
    settings = {"SECRET_KEY": "standin-bench-secret-key-with-32-bytes!!", "REDIS_URL": redis_url}
    settings |= {"MONGODB_URI": f"{uri.rstrip('/')}/{dbname}", "RATE_LIMIT_PER_MINUTE": 0}
    app = create_app(settings)
    client = app.test_client()
    creds = {"email": f"{dbname}@example.com", "password": "correct horse battery"}
    assert client.post("/api/v1/auth/register", json=creds).status_code == 201
    token = client.post("/api/v1/auth/login", json=creds).get_json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    for n in range(10):
        task = client.post("/api/v1/tasks", json={"title": f"mine {n}"}, headers=auth).get_json()
    mongo = pymongo.MongoClient(uri)
    tasks = mongo[dbname]["tasks"]
    mine, owners = tasks.find_one(), [ObjectId() for _ in range(100)]
    for start in range(0, others, 5000):
        ns = range(start, min(start + 5000, others))
        tasks.insert_many([{**mine, "_id": ObjectId(), "owner": owners[n % 100]} for n in ns])

    def timed(method: str, path: str, expect: str | None = "", **kw: Any) -> float:
        began = time.perf_counter()
        response = client.open(path, method=method, headers=auth, **kw)
        took = time.perf_counter() - began
        assert response.status_code == 200, response.get_data(as_text=True)
        assert expect is None or response.headers.get("X-Cache", "") == expect, response.headers
        return took

    page, counter = "/api/v1/tasks?per_page=10", iter(range(1000))

    def patch() -> float:
        return timed("PATCH", f"/api/v1/tasks/{task['id']}", json={"title": f"t{next(counter)}"})

    def miss() -> float:
        patch()  # drops the user's pages: the next GET reads MongoDB
        return timed("GET", page, "MISS")

    def hit() -> float:
        timed("GET", page, None)
        return timed("GET", page, "HIT")

    try:
        row = {"documents": others + 10}
        for name, run in (("list miss", miss), ("list hit", hit), ("PATCH", patch)):
            row[name] = statistics.median(run() for _ in range(5)) * 1000
        return row, plans(tasks) if not others else {}
    finally:
        mongo.drop_database(dbname)
        mongo.close()


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongodb-uri", default="", help="default: start the tests' FerretDB")
    parser.add_argument("--docs", default="5000,10000,20000", help="other users' documents")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of two updates at once")
    args = parser.parse_args()
    logging.getLogger("taskapp").setLevel(logging.ERROR)  # the app's start-up lines
    from tests.ferretdb import FerretDBServer
    from tests.redis_server import RedisServer

    started = [RedisServer(), *([] if args.mongodb_uri else [FerretDBServer()])]
    uri = args.mongodb_uri or started[-1].url
    try:
        print(f"## Lost updates ({args.rounds} rounds, two connections at once)\n")
        for how in ("update_one", "find_one_and_update"):
            lost = lost_updates(uri, args.rounds, how)
            print(f"- `{how}` with `$set` + `$inc`: {lost} of {args.rounds} rounds lost an update")
        print("\n## Through the API (median of 5, ms)\n")
        print("| documents in the collection | list miss | µs per document | list hit | PATCH |")
        print("|---:|---:|---:|---:|---:|")
        plan: dict[str, str] = {}
        base = 0.0
        for others in [0, *(int(n) for n in args.docs.split(","))]:
            row, found = api_timings(uri, started[0].url, others)
            plan, base = plan or found, base if others else row["list miss"]
            per_doc = (row["list miss"] - base) / others * 1000 if others else 0
            print(
                f"| {row['documents']} | {row['list miss']:.1f} | {per_doc:.0f} "
                f"| {row['list hit']:.2f} | {row['PATCH']:.1f} |",
                flush=True,
            )
        print("\n## Query plans\n\n| query | this server's explain |\n|---|---|")
        for name, shown in plan.items():
            print(f"| {name} | `{shown}` |")
    finally:
        for server in started:
            server.stop()


if __name__ == "__main__":
    main()
