"""The keys the cache derives: the prefix once, and the entry's hash slot."""

from __future__ import annotations

import redis
from redis.crc import key_slot

from taskapp.cache.derived_keys import Keys


def test_derived_keys_carry_the_prefix_once():
    keys = Keys("taskapp:")
    full = keys.entry("{u:42}:activity")
    assert keys.version(full) == "taskapp:v:{u:42}:activity"
    assert keys.lock(full) == "taskapp:lock:{u:42}:activity"
    assert keys.list_mark(full) == "taskapp:lm:{u:42}:activity"


def test_a_key_without_a_hash_tag_keeps_its_slot():
    keys = Keys("app:")
    full = keys.entry("report")
    for derived in (keys.version(full), keys.lock(full), keys.list_mark(full)):
        assert key_slot(derived.encode()) == key_slot(full.encode()), derived


def test_no_key_the_app_writes_holds_the_prefix_twice(client, register, redis_url, key_prefix):
    headers = register()
    task = client.post("/api/v1/tasks", json={"title": "t"}, headers=headers).get_json()
    client.get("/api/v1/activity", headers=headers)
    client.get(f"/api/v1/tasks/{task['id']}", headers=headers)
    client.patch(f"/api/v1/tasks/{task['id']}", json={"title": "u"}, headers=headers)
    client.get("/api/v1/activity", headers=headers)
    raw = redis.Redis.from_url(redis_url)
    try:
        written = [k.decode() for k in raw.scan_iter(match=key_prefix + "*", count=1000)]
    finally:
        raw.close()
    assert any(":activity" in k for k in written)
    assert [k for k in written if k.count(key_prefix) > 1] == []
