"""Helpers shared by the HTTP tests: accounts and metric readings."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

from prometheus_client import REGISTRY

PASSWORD = "correct horse battery"


def metric(name: str) -> float:
    """The current value of a counter of this process (0 before its first increment)."""
    return REGISTRY.get_sample_value(name) or 0.0


def db_reads() -> float:
    return metric("taskapp_db_reads_total")


def cache_errors() -> float:
    return metric("taskapp_cache_errors_total")


def account(client, email: str | None = None, password: str = PASSWORD) -> tuple[str, dict]:
    """Register and log in a user through the API: their id and Authorization headers."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.get_json()
    user_id = response.get_json()["id"]
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return user_id, {"Authorization": f"Bearer {response.get_json()['access_token']}"}


class PausedRead:
    """Pauses the MongoDB reads of the thread named ``thread`` right after their result is taken
    (where a slow query is still on its way back) until ``release`` is set: a write can then be
    made provably in the middle of that read, ordered by events rather than sleeps.

    Needs ``SIMULATED_DB_LATENCY_MS`` > 0 (the pause replaces that delay; other threads keep it).
    """

    def __init__(self, monkeypatch, thread: str = "reader") -> None:
        from taskapp import db

        self.thread = thread
        self.taken = threading.Event()
        self.release = threading.Event()
        self._sleep = time.sleep
        monkeypatch.setattr(db, "time", SimpleNamespace(sleep=self._pause))

    def _pause(self, seconds: float) -> None:
        if threading.current_thread().name == self.thread and not self.release.is_set():
            self.taken.set()
            self.release.wait(10)
        else:
            self._sleep(seconds)
