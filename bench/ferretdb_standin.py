"""FerretDB as a stand-in for MongoDB: its query plans, its lost updates, what a scan costs.

    .venv/bin/python -m bench.ferretdb_standin [--mongodb-uri URI] [--docs 20000] [--rounds 30]

Without ``--mongodb-uri`` it starts the tests' FerretDB 1.24 (SQLite) on a free port, and a
redis-server for the API part. It prints, as Markdown:

1. the explain output of each query the app relies on (``taskapp/tasks/service.py``: the list
   page and its count, the stats, one task, the PATCH's find-and-modify), on a collection with
   the app's indexes (``taskapp/models.py``);
2. lost updates: two connections each ``update_one`` (and ``find_one_and_update``) one document
   with ``$set`` of a field of their own and ``$inc`` of a counter, at once, ``--rounds`` times;
   a round is lost when the counter rose by less than 2 or a field is missing;
3. through the API (Flask's test client, real Redis, this MongoDB): a list-page miss, a hit and
   a PATCH for a user who owns 10 tasks, with 0 and with each of ``--docs`` other users'
   documents in the collection (medians of 5), and the miss's cost per document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo
from bson import Int64, ObjectId

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The app's task indexes (taskapp/models.py), as pymongo specs.
INDEXES = [
    [("owner", 1), ("created_at", -1)],
    [("owner", 1), ("completed", 1), ("created_at", -1)],
    [("owner", 1), ("priority", 1), ("created_at", -1)],
    [("owner", 1), ("due_date", 1), ("_id", 1)],
    [("owner", 1), ("priority_rank", 1), ("_id", 1)],
]
# What MongoDB's planner would choose for each query (index prefix on owner; not run here).
MONGODB_WOULD_USE = {
    "list page": "IXSCAN owner_1_created_at_-1 (the sort from the index, 10 keys read)",
    "list count": "COUNT_SCAN / IXSCAN on the owner prefix (owner_1_created_at_-1)",
    "stats $group": "IXSCAN on the owner prefix, then $group over the user's documents only",
    "stats overdue count": "IXSCAN owner_1_completed_1_created_at_-1 or owner_1_due_date_1__id_1",
    "by _id alone (not a query of the app)": "IDHACK (the _id index)",
    "one task": "IDHACK (the _id index), owner checked on the one document",
    "PATCH findAndModify": "IDHACK (the _id index), one document updated atomically",
}


def task_doc(owner: ObjectId, n: int) -> dict[str, Any]:
    """A task document as the app stores it."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return {
        "owner": owner,
        "title": f"task {n}",
        "description": "",
        "completed": n % 3 == 0,
        "priority": "medium",
        "priority_rank": 1,
        "due_date": now + dt.timedelta(days=n % 30 - 10),
        "created_at": now - dt.timedelta(seconds=n),
        "updated_at": now,
        "version": 1,
    }


def explain_plans(db) -> list[tuple[str, str, str]]:
    """(query, FerretDB's plan, what MongoDB would use) for each query the app relies on."""
    tasks = db["tasks"]
    tasks.drop()
    for spec in INDEXES:
        tasks.create_index(spec)
    owner = ObjectId()
    tasks.insert_many([task_doc(owner, n) for n in range(10)])
    one = tasks.find_one({"owner": owner})["_id"]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    commands = {
        "list page": {
            "find": "tasks",
            "filter": {"owner": owner},
            "sort": {"created_at": -1, "_id": -1},
            "skip": Int64(0),
            "limit": Int64(10),
        },
        "list count": {
            "aggregate": "tasks",
            "pipeline": [{"$match": {"owner": owner}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
            "cursor": {},
        },
        "stats $group": {
            "aggregate": "tasks",
            "pipeline": [
                {"$match": {"owner": owner}},
                {"$group": {"_id": "$completed", "n": {"$sum": 1}}},
            ],
            "cursor": {},
        },
        "stats overdue count": {
            "count": "tasks",
            "query": {"owner": owner, "completed": False, "due_date": {"$lt": now}},
        },
        "one task": {"find": "tasks", "filter": {"_id": one, "owner": owner}, "limit": Int64(1)},
        "by _id alone (not a query of the app)": {"find": "tasks", "filter": {"_id": one}},
        "PATCH findAndModify": {
            "findAndModify": "tasks",
            "query": {"_id": one, "owner": owner},
            "update": {"$set": {"title": "x"}, "$inc": {"version": 1}},
            "new": True,
        },
    }
    rows = []
    for name, command in commands.items():
        try:
            plan = db.command("explain", command, verbosity="queryPlanner")
            shown = json.dumps(
                {k: plan[k] for k in plan if k not in ("serverInfo", "command", "ok")},
                default=str,
            )
        except pymongo.errors.PyMongoError as exc:
            shown = f"explain refused: {exc}"
        rows.append((name, shown, MONGODB_WOULD_USE[name]))
    tasks.drop()
    return rows


def lost_updates(uri: str, dbname: str, rounds: int, how: str) -> int:
    """Rounds (of ``rounds``) in which one of two simultaneous updates of one document was lost."""
    clients = [pymongo.MongoClient(uri) for _ in range(2)]
    collections = [client[dbname]["lost_updates"] for client in clients]
    lost = 0
    try:
        for _ in range(rounds):
            _id = collections[0].insert_one({"n": 0}).inserted_id
            barrier = threading.Barrier(2)

            def update(n: int, _id=_id, barrier=barrier) -> None:
                change = {"$set": {f"field{n}": True}, "$inc": {"n": 1}}
                barrier.wait()
                if how == "update_one":
                    collections[n].update_one({"_id": _id}, change)
                else:
                    collections[n].find_one_and_update({"_id": _id}, change)

            threads = [threading.Thread(target=update, args=(n,)) for n in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            doc = collections[0].find_one({"_id": _id})
            if doc["n"] != 2 or not (doc.get("field0") and doc.get("field1")):
                lost += 1
    finally:
        collections[0].drop()
        for client in clients:
            client.close()
    return lost


def median_ms(run, repeats: int = 5) -> float:
    """The median of ``repeats`` calls of ``run`` (each returns its own seconds), in ms."""
    return statistics.median(run() for _ in range(repeats)) * 1000


def api_timings(uri: str, redis_url: str, others: int) -> dict[str, float]:
    """A list miss, a list hit and a PATCH, through the API, with ``others`` foreign documents."""
    from taskapp import create_app

    dbname = f"taskapp_standin_{uuid.uuid4().hex[:8]}"
    app = create_app(
        {
            "SECRET_KEY": "standin-bench-secret-key-with-32-bytes!!",
            "REDIS_URL": redis_url,
            "MONGODB_URI": f"{uri.rstrip('/')}/{dbname}",
            "CACHE_KEY_PREFIX": f"standin:{dbname}:",
            "RATE_LIMIT_PER_MINUTE": 0,
            "HTTP_CACHE_TTL": 30,
        }
    )
    client = app.test_client()
    creds = {"email": f"{dbname}@example.com", "password": "correct horse battery"}
    assert client.post("/api/v1/auth/register", json=creds).status_code == 201
    token = client.post("/api/v1/auth/login", json=creds).get_json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    ids = [
        client.post("/api/v1/tasks", json={"title": f"mine {n}"}, headers=auth).get_json()["id"]
        for n in range(10)
    ]
    mongo = pymongo.MongoClient(uri)
    batch = 5000
    for start in range(0, others, batch):
        owners = [ObjectId() for _ in range(100)]
        docs = [task_doc(owners[n % 100], n) for n in range(start, min(start + batch, others))]
        mongo[dbname]["tasks"].insert_many(docs)

    def timed(method: str, path: str, expect: str | None = None, **kw) -> float:
        began = time.perf_counter()
        response = client.open(path, method=method, headers=auth, **kw)
        took = time.perf_counter() - began
        assert response.status_code == 200, response.get_data(as_text=True)
        if expect:
            assert response.headers.get("X-Cache") == expect, response.headers.get("X-Cache")
        return took

    page = "/api/v1/tasks?per_page=10"
    counter = iter(range(1000))

    def patch() -> float:
        return timed("PATCH", f"/api/v1/tasks/{ids[0]}", json={"title": f"t{next(counter)}"})

    def miss() -> float:
        patch()  # drops the user's pages: the next GET reads MongoDB
        return timed("GET", page, expect="MISS")

    def hit() -> float:
        timed("GET", page)
        return timed("GET", page, expect="HIT")

    try:
        return {
            "documents": others + 10,
            "list miss ms": median_ms(miss),
            "list hit ms": median_ms(hit),
            "PATCH ms": median_ms(patch),
        }
    finally:
        mongo.drop_database(dbname)
        mongo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongodb-uri", default="", help="default: start the tests' FerretDB")
    parser.add_argument("--redis-url", default="", help="default: start a redis-server")
    parser.add_argument(
        "--docs", default="5000,10000,20000", help="other users' documents, one run per size"
    )
    parser.add_argument("--rounds", type=int, default=30, help="rounds of two updates at once")
    args = parser.parse_args(argv)
    logging.getLogger("taskapp").setLevel(logging.ERROR)  # the app's start-up lines
    stop = []
    uri, redis_url = args.mongodb_uri, args.redis_url
    if not uri:
        from tests.ferretdb import FerretDBServer

        ferretdb = FerretDBServer()
        stop.append(ferretdb.stop)
        uri = ferretdb.url
    if not redis_url:
        from tests.redis_server import RedisServer

        redis_server = RedisServer()
        stop.append(redis_server.stop)
        redis_url = redis_server.url
    try:
        client = pymongo.MongoClient(uri)
        build = client.admin.command("buildInfo")
        print(f"server: {build.get('version')} {build.get('ferretdbVersion', '')}".strip())
        dbname = f"standin_{uuid.uuid4().hex[:8]}"
        print("\n## Query plans\n")
        print("| query | this server's explain | MongoDB would use |")
        print("|---|---|---|")
        for name, plan, would in explain_plans(client[dbname]):
            print(f"| {name} | `{plan}` | {would} |")
        print(f"\n## Lost updates ({args.rounds} rounds, two connections at once)\n")
        for how in ("update_one", "find_one_and_update"):
            lost = lost_updates(uri, dbname, args.rounds, how)
            print(f"- `{how}` with `$set` + `$inc`: {lost} of {args.rounds} rounds lost an update")
        client.drop_database(dbname)
        client.close()
        print("\n## Through the API (median of 5, ms)\n")
        print("| documents in the collection | list miss | µs per document | list hit | PATCH |")
        print("|---:|---:|---:|---:|---:|")
        sizes = [0, *(int(n) for n in args.docs.split(","))]
        base = None
        for others in sizes:
            row = api_timings(uri, redis_url, others)
            base = base if base is not None else row["list miss ms"]
            per_doc = (row["list miss ms"] - base) / others * 1000 if others else 0.0
            print(
                f"| {row['documents']} | {row['list miss ms']:.1f} | {per_doc:.0f} "
                f"| {row['list hit ms']:.2f} | {row['PATCH ms']:.1f} |",
                flush=True,
            )
    finally:
        for done in stop:
            done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
