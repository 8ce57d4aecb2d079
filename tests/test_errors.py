"""Every error is RFC 9457 problem details (application/problem+json) with the right status,
in our words, never HTML."""

from __future__ import annotations

import logging

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from tests.api import problem, rate_limits


def assert_json_error(response, status: int) -> str:
    """The response is problem details of ``status``: its detail."""
    return problem(response, status)["detail"]


def test_an_unknown_route_is_a_json_404_even_for_a_browser(client):
    response = client.get("/no/such/page", headers={"Accept": "text/html"})
    assert_json_error(response, 404)
    assert b"<html" not in response.data.lower()


def test_a_wrong_method_is_a_json_405_listing_the_allowed_methods(client):
    response = client.put("/api/v1/tasks")
    assert_json_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_a_body_over_max_content_length_is_a_json_413(app, client, register):
    headers = register()
    huge = '{"title": "' + "x" * app.config["MAX_CONTENT_LENGTH"] + '"}'
    response = client.post(
        "/api/v1/tasks", data=huge, headers=headers, content_type="application/json"
    )
    assert_json_error(response, 413)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_route_given_another_content_type_is_a_json_415(client, content_type):
    response = client.post("/api/v1/auth/login", data="email=a", content_type=content_type)
    assert_json_error(response, 415)


@pytest.mark.parametrize("data", ["{", '{"email": }', "\xff", ""])
def test_malformed_json_is_a_json_400(client, data):
    response = client.post("/api/v1/auth/login", data=data, content_type="application/json")
    assert_json_error(response, 400)


@pytest.mark.parametrize("data", ["[]", '"text"', "42", "null"])
def test_a_json_body_that_is_not_an_object_is_a_json_400(client, register, data):
    response = client.post(
        "/api/v1/tasks", data=data, headers=register(), content_type="application/json"
    )
    assert "JSON object" in assert_json_error(response, 400)


def test_a_validation_error_is_a_json_422_naming_every_bad_field(client, register):
    response = client.post(
        "/api/v1/tasks", json={"title": "", "priority": "urgent"}, headers=register()
    )
    message = assert_json_error(response, 422)
    assert "field 'title'" in message and "field 'priority'" in message


def test_a_missing_token_is_a_json_401(client):
    assert_json_error(client.get("/api/v1/tasks"), 401)


def test_a_rate_limited_request_is_a_json_429_keeping_its_headers(make_app):
    client = make_app(LOGIN_RATE_LIMIT_PER_MINUTE=1).test_client()
    credentials = {"email": "a@example.com", "password": "whatever1"}
    client.post("/api/v1/auth/login", json=credentials)
    response = client.post("/api/v1/auth/login", json=credentials)
    assert_json_error(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    limits = rate_limits(response.headers)
    assert limits["login-email"]["q"] == 1 and limits["login-email"]["r"] == 0


def test_an_unexpected_error_is_a_json_500_that_leaks_nothing_and_is_logged(make_app, caplog):
    app = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    message = assert_json_error(response, 500)
    assert "secret" not in response.get_data(as_text=True)
    assert "RuntimeError" not in message
    assert any(
        record.exc_info and "secret detail" in str(record.exc_info[1]) for record in caplog.records
    )


def test_an_unreachable_mongodb_is_a_json_503_asking_to_retry(make_app):
    app = make_app()

    @app.get("/mongo-down")
    def mongo_down():
        raise ServerSelectionTimeoutError("no servers")

    response = app.test_client().get("/mongo-down")
    assert_json_error(response, 503)
    assert response.headers["Retry-After"] == "1"


def test_a_missing_trailing_slash_redirect_stays_a_redirect(make_app):
    app = make_app()

    @app.get("/folder/")
    def folder():
        return {"ok": True}

    assert app.test_client().get("/folder").status_code == 308


def nested(depth: int) -> str:
    return '{"email": ' + "[" * depth + "]" * depth + ', "title": "t", "password": "x"}'


@pytest.mark.parametrize("depth", [900, 1000, 100_000])
@pytest.mark.parametrize("path", ["/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/tasks"])
def test_a_deeply_nested_body_is_a_json_400_not_a_500(client, register, path, depth):
    headers = register() if path == "/api/v1/tasks" else {}
    body = nested(depth)
    if len(body) > 60_000:
        body = "[" * 30_000 + "]" * 30_000  # under MAX_CONTENT_LENGTH, deeper than any parser
    response = client.post(path, data=body, headers=headers, content_type="application/json")
    assert response.status_code in (400, 422)
    assert_json_error(response, response.status_code)


def test_a_chunked_body_over_max_content_length_is_a_json_413(app, client, register):
    import io

    headers = register()
    huge = b'{"title": "' + b"x" * app.config["MAX_CONTENT_LENGTH"] + b'"}'
    response = client.post(
        "/api/v1/tasks",
        input_stream=io.BytesIO(huge),
        headers={**headers, "Transfer-Encoding": "chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets for chunked bodies
    )
    assert_json_error(response, 413)
    small = b'{"title": "streamed"}'
    response = client.post(
        "/api/v1/tasks",
        input_stream=io.BytesIO(small),
        headers={**headers, "Transfer-Encoding": "chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("bad_id", ["abc", "0123456789abcdef0123456", "zz" * 12, "1" * 30])
def test_a_malformed_task_id_is_a_json_404_saying_what_an_id_is(client, register, method, bad_id):
    response = client.open(
        f"/api/v1/tasks/{bad_id}", method=method, headers=register(), json={"title": "x"}
    )
    message = assert_json_error(response, 404)
    assert message.startswith("task not found")
    assert "24 hexadecimal digits" in message


def test_an_unknown_path_keeps_the_generic_404(client):
    message = assert_json_error(client.get("/api/v1/nothing/here"), 404)
    assert "hexadecimal" not in message
