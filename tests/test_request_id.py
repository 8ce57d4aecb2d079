"""X-Request-ID: the client's own when well-formed, else one the app makes; on every response
(fast-path hits, 204s, 304s, errors, preflights) and in every log line of the request."""

from __future__ import annotations

import json
import logging
import re

import pytest

from taskapp.request_id import WELL_FORMED
from tests.api import account
from tests.test_gunicorn import call, serve  # noqa: F401  (the fixture)

TASKS = "/api/v1/tasks"
MADE = re.compile(r"[0-9a-f]{24,}")
ORIGIN = "https://app.example.test"


@pytest.fixture
def client(make_app):
    return make_app(CORS_ORIGINS=ORIGIN).test_client()


def answers(client) -> dict[str, object]:
    """One response of each kind, by name."""
    _, auth = account(client)
    task = client.post(TASKS, json={"title": "t"}, headers=auth)
    path = f"{TASKS}/{task.get_json()['id']}"
    client.get(path, headers=auth)
    hit = client.get(path, headers=auth)
    return {
        "created": task,
        "hit": hit,
        "not modified": client.get(path, headers={**auth, "If-None-Match": hit.headers["ETag"]}),
        "no token": client.get(TASKS),
        "invalid": client.post(TASKS, json={"title": ""}, headers=auth),
        "no route": client.get("/nowhere"),
        "wrong method": client.put(TASKS, headers=auth),
        "preflight": client.options(
            path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}
        ),
        "deleted": client.delete(path, headers=auth),
        "logged out": client.post("/api/v1/auth/logout", headers=auth),
        "health": client.get("/healthz"),
    }


def test_every_response_carries_a_request_id_the_app_made(client):
    made = {
        name: response.headers.get("X-Request-ID") for name, response in answers(client).items()
    }
    statuses = {name: response.status_code for name, response in answers(client).items()}
    assert statuses == {
        "created": 201,
        "hit": 200,
        "not modified": 304,
        "no token": 401,
        "invalid": 422,
        "no route": 404,
        "wrong method": 405,
        "preflight": 204,
        "deleted": 204,
        "logged out": 204,
        "health": 200,
    }
    assert all(rid is not None and MADE.fullmatch(rid) for rid in made.values()), made
    assert len(set(made.values())) == len(made)  # one per request


def test_a_well_formed_request_id_is_echoed_on_every_kind_of_response(client, monkeypatch):
    sent = "req-2026.12_07-abc"
    original = client.open

    def open_with_id(*args, **kwargs):
        kwargs["headers"] = {**dict(kwargs.get("headers") or {}), "X-Request-ID": sent}
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "open", open_with_id)
    echoed = {name: r.headers.get("X-Request-ID") for name, r in answers(client).items()}
    assert set(echoed.values()) == {sent}, echoed
    assert echoed["hit"] == sent  # answered in front of Flask, by the fast path


@pytest.mark.parametrize(
    "sent",
    ["", "has space", "x" * 65, "naïve", "a/b", 'quote"d', "semi;colon", "tab\tbed"],
)
def test_a_malformed_request_id_is_replaced_not_echoed(client, sent):
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    made = response.headers["X-Request-ID"]
    assert made != sent and MADE.fullmatch(made)


@pytest.mark.parametrize("sent", ["a", "x" * 64, "0f8fad5b-d9cb-469f-a165-70867728950e", "r123"])
def test_well_formed_means_1_to_64_letters_digits_dots_underscores_hyphens(client, sent):
    assert WELL_FORMED.fullmatch(sent)
    assert client.get("/healthz", headers={"X-Request-ID": sent}).headers["X-Request-ID"] == sent


def test_log_lines_of_a_request_carry_its_id(make_app, caplog):
    client = make_app().test_client()
    email = "logged@example.com"
    client.post("/api/v1/auth/register", json={"email": email, "password": "p" * 12})
    pair = client.post("/api/v1/auth/login", json={"email": email, "password": "p" * 12})
    refresh = {"refresh_token": pair.get_json()["refresh_token"]}
    client.post("/api/v1/auth/refresh", json=refresh)
    with caplog.at_level(logging.WARNING):
        reused = client.post(
            "/api/v1/auth/refresh", json=refresh, headers={"X-Request-ID": "reuse-1"}
        )
    assert reused.status_code == 401
    warnings = [r for r in caplog.records if "refresh token reused" in r.getMessage()]
    assert warnings and all(r.request_id == "reuse-1" for r in warnings)


def test_with_log_format_json_every_line_is_one_json_object_with_the_request_id(
    serve,  # noqa: F811
    redis_url,
    key_prefix,
    mongodb_uri,
):
    """Under gunicorn: the app's lines, gunicorn's own and the access log, each a JSON object;
    a warning written while answering a request carries that request's id, and so does its
    access line."""
    server = serve(
        REDIS_URL=redis_url,
        CACHE_KEY_PREFIX=key_prefix,
        MONGODB_URI=mongodb_uri,
        SECRET_KEY="request-id-test-secret-key-with-32-bytes",
        GUNICORN_WORKERS="2",
        LOG_FORMAT="json",
    )
    credentials = {"email": "json-logs@example.com", "password": "correct horse battery"}
    assert call(server.base, "POST", "/api/v1/auth/register", credentials)[0] == 201
    _, _, pair = call(server.base, "POST", "/api/v1/auth/login", credentials)
    refresh = {"refresh_token": pair["refresh_token"]}
    assert call(server.base, "POST", "/api/v1/auth/refresh", refresh)[0] == 200
    status, head, _ = call(
        server.base, "POST", "/api/v1/auth/refresh", refresh, {"X-Request-ID": "json-reuse-1"}
    )
    assert status == 401 and head["X-Request-ID"] == "json-reuse-1"

    def lines() -> list[dict]:
        text = [line for line in server.output().splitlines() if line.strip()]
        return [json.loads(line) for line in text]  # every line is one JSON object

    from tests.cache_helpers import wait_until

    def access_of(logged: list[dict]) -> list[dict]:
        return [line for line in logged if line["logger"] == "gunicorn.access"]

    # gunicorn writes a request's access line after the response went out: wait for it too.
    wait_until(
        lambda: any(line.get("request_id") == "json-reuse-1" for line in access_of(lines())),
        timeout=10,
    )
    logged = lines()
    assert all({"time", "level", "logger", "message"} <= set(line) for line in logged)
    warning = next(line for line in logged if "refresh token reused" in line["message"])
    assert (warning["level"], warning["request_id"]) == ("WARNING", "json-reuse-1")
    assert any(line.get("request_id") == "json-reuse-1" for line in access_of(logged))
    assert any(line["logger"] == "gunicorn.error" for line in logged)  # "Booting worker" ...
