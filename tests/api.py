"""Helpers shared by the HTTP tests: accounts and metric readings."""

from __future__ import annotations

import uuid

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
