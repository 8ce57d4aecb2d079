"""Helpers shared by the HTTP tests: accounts and metric readings."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

from prometheus_client import REGISTRY

PASSWORD = "correct horse battery"
PROBLEM_JSON = "application/problem+json"
#: Where RFC 9110 (and RFC 6585, for 429 and 431) define each status: the problems' types.
STATUS_SECTIONS = {
    400: "rfc9110#section-15.5.1",
    401: "rfc9110#section-15.5.2",
    403: "rfc9110#section-15.5.4",
    404: "rfc9110#section-15.5.5",
    405: "rfc9110#section-15.5.6",
    409: "rfc9110#section-15.5.10",
    412: "rfc9110#section-15.5.13",
    413: "rfc9110#section-15.5.14",
    414: "rfc9110#section-15.5.15",
    415: "rfc9110#section-15.5.16",
    422: "rfc9110#section-15.5.21",
    429: "rfc6585#section-4",
    431: "rfc6585#section-5",
    500: "rfc9110#section-15.6.1",
    503: "rfc9110#section-15.6.4",
}


def rate_limit_items(value: str) -> dict[str, dict[str, int]]:
    """An IETF RateLimit or RateLimit-Policy field (a structured-field list of items such as
    ``"user";r=599;t=60``) as {policy: {parameter: integer}}; each item checked as well-formed."""
    items = {}
    for item in value.split(","):
        name, *parameters = item.strip().split(";")
        assert name.startswith('"') and name.endswith('"') and len(name) > 2, value
        pairs = [parameter.split("=") for parameter in parameters]
        assert all(len(pair) == 2 and pair[1].isdigit() for pair in pairs), value
        items[name[1:-1]] = {key: int(number) for key, number in pairs}
    return items


def rate_limits(headers) -> dict[str, dict[str, int]]:
    """The rate limits a response reports: {policy: {"q", "w", "r", "t"}} from its RateLimit
    and RateLimit-Policy fields, which must name the same policies."""
    policies = rate_limit_items(headers["RateLimit-Policy"])
    limits = rate_limit_items(headers["RateLimit"])
    assert set(policies) == set(limits), (policies, limits)
    return {name: {**policies[name], **limits[name]} for name in policies}


def problem_of(body: dict, status: int) -> dict:
    """``body`` checked as RFC 9457 problem details of ``status`` (type, title, status, detail;
    ``errors`` on a 422 only), returned."""
    assert set(body) == {"type", "title", "status", "detail"} | (
        {"errors"} if status == 422 else set()
    ), body
    assert body["status"] == status, body
    assert body["type"] == "https://www.rfc-editor.org/rfc/" + STATUS_SECTIONS[status], body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    if status == 422:
        assert body["errors"] and all(
            set(e) in ({"pointer", "detail"}, {"parameter", "detail"}) and e["detail"]
            for e in body["errors"]
        ), body
    return body


def problem(response, status: int) -> dict:
    """A test client's response checked as problem details of ``status``: its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
    return problem_of(response.get_json(), status)


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
