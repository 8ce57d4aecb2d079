"""CORS: headers for the allowed origins on every response (cached ones too), preflights."""

from __future__ import annotations

import pytest

from taskapp import create_app
from taskapp.config import ConfigError
from taskapp.cors import EXPOSED_HEADERS
from tests.api import problem, rate_limits

ORIGIN = "http://app.example.test:8080"
OTHER = "http://evil.example.test"
TASKS = "/api/v1/tasks"


@pytest.fixture(params=[True, False], ids=["fast-path", "flask-path"])
def app(make_app, request):
    """Every CORS test with and without the response cache's fast path (taskapp.fastpath)."""
    return make_app(
        CORS_ORIGINS=f"{ORIGIN}, https://second.example.test", HTTP_FAST_PATH=request.param
    )


@pytest.fixture
def alice(register):
    return register("alice@example.com")


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def assert_cors(response, origin: str = ORIGIN) -> None:
    """The headers every answer to an allowed origin carries."""
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in response.vary
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == set(EXPOSED_HEADERS)
    assert "Access-Control-Allow-Credentials" not in response.headers


def preflight(client, path: str, method: str, origin: str = ORIGIN, headers: str = ""):
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


def test_cached_answers_carry_the_cors_headers_on_a_miss_a_hit_and_a_304(client, alice):
    task = client.post(TASKS, json={"title": "x"}, headers={**alice, "Origin": ORIGIN})
    assert task.status_code == 201
    assert_cors(task)
    url = f"{TASKS}/{task.get_json()['id']}"
    headers = {**alice, "Origin": ORIGIN}
    miss = client.get(url, headers=headers)
    hit = client.get(url, headers=headers)  # answered by the response cache in before_request
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    not_modified = client.get(url, headers={**headers, "If-None-Match": hit.headers["ETag"]})
    assert not_modified.status_code == 304
    bypass = client.get(url, headers={**headers, "Cache-Control": "no-cache"})  # service cache
    assert bypass.headers["X-Cache"] == "HIT"
    for response in (miss, hit, not_modified, bypass):
        assert_cors(response)
        assert "Authorization" in response.vary  # the response cache's Vary is kept
        assert "user" in rate_limits(response.headers)
        assert response.headers["X-Request-ID"]


def test_list_pages_and_stats_carry_the_cors_headers_when_cached(client, alice):
    headers = {**alice, "Origin": ORIGIN}
    for path in (f"{TASKS}?per_page=5", f"{TASKS}/stats", "/api/v1/activity"):
        client.get(path, headers=headers)
        hit = client.get(path, headers=headers)
        assert hit.headers["X-Cache"] == "HIT"
        assert_cors(hit)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", TASKS, 401),
        ("GET", f"{TASKS}/0123456789abcdef01234567", 404),
        ("GET", "/no/such/route", 404),
        ("DELETE", TASKS, 405),
        ("GET", f"{TASKS}?sort=sideways", 422),
        ("POST", "/api/v1/auth/login", 422),
    ],
)
def test_errors_carry_the_cors_headers(client, alice, method, path, status):
    headers = {"Origin": ORIGIN} if status == 401 else {**alice, "Origin": ORIGIN}
    response = client.open(path, method=method, json={}, headers=headers)
    problem(response, status)
    assert_cors(response)


def test_a_rate_limited_answer_exposes_retry_after(make_app):
    app = make_app(CORS_ORIGINS=ORIGIN, RATE_LIMIT_PER_MINUTE=2)
    client = app.test_client()
    from tests.api import account

    headers = {**account(client)[1], "Origin": ORIGIN}
    statuses = [client.get(TASKS, headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.get(TASKS, headers=headers)
    assert limited.status_code == 429
    assert_cors(limited)
    assert limited.headers["Retry-After"]
    # ... and a preflight is never limited, nor needs a token
    response = preflight(client, TASKS, "GET", headers="authorization")
    assert response.status_code == 204
    assert_cors(response)


def test_a_preflight_allows_the_token_json_and_the_methods_of_the_route(client):
    response = preflight(
        client, f"{TASKS}/0123456789abcdef01234567", "PATCH", headers="authorization, content-type"
    )
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers  # never an HTML page
    assert_cors(response)
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert allowed == {"authorization", "content-type"}
    methods = set(response.headers["Access-Control-Allow-Methods"].split(", "))
    assert methods == {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}
    assert methods == set(response.headers["Allow"].split(", "))
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        (f"{TASKS}?bogus=1", {"GET", "HEAD", "OPTIONS", "POST"}),
        (f"{TASKS}?page=1&page=2", {"GET", "HEAD", "OPTIONS", "POST"}),
        (f"{TASKS}/nope", {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}),
        (f"{TASKS}/nope?bogus=1", {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}),
        ("/healthz?x=1", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_a_preflight_is_204_whatever_the_query_string_or_path_id(client, alice, path, methods):
    """The real request gets its JSON 422 or 404, which the script can only read once its
    preflight passed."""
    method = "PATCH" if "nope" in path else "GET"
    response = preflight(client, path, method, headers="authorization, if-match")
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.data == b"" and "Content-Type" not in response.headers
    assert_cors(response)
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == methods
    real = client.open(
        path, method=method, json={"title": "x"}, headers={**alice, "Origin": ORIGIN}
    )
    assert real.status_code in (404, 422)
    assert_cors(real)


def test_a_preflight_of_a_path_that_names_no_route_is_still_404(client):
    response = preflight(client, "/no/such/route", "GET")
    assert response.status_code == 404
    assert "Access-Control-Allow-Methods" not in response.headers


def test_scripts_may_send_if_match_and_read_location_and_www_authenticate(client, alice):
    response = preflight(client, f"{TASKS}/0123456789abcdef01234567", "DELETE", headers="if-match")
    assert response.headers["Access-Control-Allow-Headers"].lower() == "if-match"
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "WWW-Authenticate", "ETag"} <= exposed
    created = client.post(TASKS, json={"title": "x"}, headers={**alice, "Origin": ORIGIN})
    assert created.headers["Location"] and created.headers["ETag"]
    refused = client.get(TASKS, headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"]
    assert_cors(refused)


def test_a_preflight_lists_only_the_methods_of_its_own_route(client):
    response = preflight(client, f"{TASKS}/stats", "DELETE")
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {
        "GET",
        "HEAD",
        "OPTIONS",
    }
    response = preflight(client, TASKS, "POST", headers="content-type")
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {
        "GET",
        "HEAD",
        "OPTIONS",
        "POST",
    }


def test_a_preflight_asking_for_no_header_is_told_the_allowed_ones(client):
    response = preflight(client, TASKS, "GET")
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= {"Authorization", "Content-Type"}


def test_a_preflight_does_not_allow_other_request_headers(client):
    response = preflight(client, TASKS, "GET", headers="x-custom")
    assert not response.headers.get("Access-Control-Allow-Headers")


def test_the_second_origin_is_answered_with_its_own_name(client, alice):
    response = client.get(TASKS, headers={**alice, "Origin": "https://second.example.test"})
    assert_cors(response, "https://second.example.test")


@pytest.mark.parametrize("origin", [OTHER, "http://app.example.test:8081", "null"])
def test_other_origins_get_no_cors_headers(client, alice, origin):
    response = client.get(TASKS, headers={**alice, "Origin": origin})
    assert response.status_code == 200
    assert cors_headers(response) == {}
    response = preflight(client, TASKS, "POST", origin=origin, headers="authorization")
    assert response.status_code == 204
    assert cors_headers(response) == {}


def test_a_request_without_an_origin_gets_no_cors_headers(client, alice):
    response = client.get(TASKS, headers=alice)
    assert cors_headers(response) == {}
    assert "Origin" in response.vary  # a shared cache must still tell the answers apart


def test_without_cors_origins_no_response_has_cors_headers(make_app, register):
    client = make_app().test_client()
    from tests.api import account

    headers = {**account(client)[1], "Origin": ORIGIN}
    for response in (
        client.get(TASKS, headers=headers),
        client.get(TASKS, headers=headers),
        client.get(TASKS, headers={"Origin": ORIGIN}),
        preflight(client, TASKS, "POST", headers="authorization"),
    ):
        assert cors_headers(response) == {}
        assert "Origin" not in response.vary


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("https://a.example.test", ["https://a.example.test"]),
        (
            " https://A.example.test/ ,http://localhost:3000,",
            ["https://a.example.test", "http://localhost:3000"],
        ),
        (["http://127.0.0.1:5500"], ["http://127.0.0.1:5500"]),
    ],
)
def test_cors_origins_are_read_as_a_comma_separated_list(value, expected):
    app = create_app({"CORS_ORIGINS": value})
    assert app.config["CORS_ORIGINS"] == expected


@pytest.mark.parametrize(
    "value", ["*", "example.test", "ftp://example.test", "https://example.test/app", "https://a b"]
)
def test_a_bad_cors_origin_stops_start_up_naming_the_setting(value, monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", value)
    with pytest.raises(ConfigError, match="setting CORS_ORIGINS="):
        create_app()
