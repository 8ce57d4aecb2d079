"""Operational routes: /healthz, /readyz, /metrics and /openapi.json."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import schemathesis

from taskapp import create_app
from taskapp.extensions import cache
from tests.api import db_reads

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_MONGODB = "mongodb://127.0.0.1:1/taskapp_unreachable"


# /healthz


def test_healthz_answers_ok_without_reading_mongodb(client):
    before = db_reads()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert db_reads() == before


# /readyz


def test_readyz_is_ready_when_both_backends_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"mongodb": True, "redis": True}}


def test_readyz_is_200_degraded_when_only_redis_is_down(make_app):
    client = make_app(REDIS_URL=UNREACHABLE_REDIS).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "degraded",
        "checks": {"mongodb": True, "redis": False},
    }


@pytest.fixture
def app_without_mongodb(redis_url, key_prefix):
    """An app whose MongoDB does not answer (built directly: there is no database to drop)."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-with-32-bytes-of-entropy!",
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": key_prefix,
            "MONGODB_URI": UNREACHABLE_MONGODB,
        }
    )
    yield app
    with app.app_context():
        cache.close()


def test_readyz_is_503_unavailable_when_mongodb_is_down(app_without_mongodb):
    response = app_without_mongodb.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"mongodb": False, "redis": True},
    }


# /metrics


def test_metrics_are_prometheus_text_counting_mongodb_reads(client, register):
    client.get("/api/v1/tasks", headers=register())
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    assert "# TYPE taskapp_db_reads_total counter" in lines
    reads = [line for line in lines if line.startswith("taskapp_db_reads_total ")]
    assert reads and float(reads[0].split()[1]) >= 1


def test_metrics_sum_every_worker_when_prometheus_multiproc_dir_is_set(
    client, tmp_path, monkeypatch
):
    # Two "workers": separate processes counting reads into the shared directory.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    code = "from taskapp.metrics import DB_READS; DB_READS.inc(3)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = client.get("/metrics").get_data(as_text=True)
    assert "taskapp_db_reads_total 6.0" in text.splitlines()


# /openapi.json


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_openapi_is_a_valid_openapi_3_1_document(app, document):
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # raises on any schema error


def test_openapi_lists_every_route_and_method_of_the_app(app, document):
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    routed = {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.endswith(".static")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed
    assert ("/api/v1/tasks/{task_id}", "PATCH") in documented
    assert ("/api/v1/admin/users/{user_id}", "PATCH") in documented


def test_openapi_marks_exactly_the_protected_routes_with_bearer_security(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            protected = path.startswith(
                ("/api/v1/tasks", "/api/v1/activity", "/api/v1/admin", "/api/v1/auth/me")
            ) or path in ("/api/v1/auth/logout", "/api/v1/auth/password")
            assert ("security" in operation) == protected, (method, path)
            if protected:
                assert operation["responses"]["401"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def test_openapi_uses_the_pydantic_schemas_for_bodies_and_responses(document):
    create = document["paths"]["/api/v1/tasks"]["post"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/TaskCreate"
    assert set(create["responses"]) >= {"201", "400", "401", "413", "415", "422"}
    created = create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert created == "#/components/schemas/TaskOut"
    schemas = document["components"]["schemas"]
    assert schemas["TaskCreate"]["properties"]["priority"]["enum"] == ["low", "medium", "high"]
    list_parameters = {p["name"] for p in document["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert list_parameters == {
        "page",
        "per_page",
        "completed",
        "priority",
        "due_before",
        "due_after",
        "sort",
    }


def test_openapi_documents_errors_with_the_error_schema(document):
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    assert response["content"]["application/json"]["schema"] == error_ref
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]


def test_openapi_refs_all_resolve(document):
    refs = set()

    def collect(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    names = {f"#/components/schemas/{name}" for name in document["components"]["schemas"]}
    assert refs and refs <= names


def test_openapi_describes_the_web_client_routes_and_list_parameters(document):
    assert "get" in document["paths"]["/api/v1/auth/me"]
    assert document["paths"]["/api/v1/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
    admin_users = document["paths"]["/api/v1/admin/users"]["get"]
    assert {p["name"] for p in admin_users["parameters"]} == {"email", "page", "per_page"}
    assert set(admin_users["responses"]) >= {"200", "401", "403", "422"}
    parameters = {p["name"]: p for p in document["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    sort = parameters["sort"]["schema"]
    assert sort["enum"] == [
        "-created_at",
        "created_at",
        "due_date",
        "-due_date",
        "priority",
        "-priority",
    ]
    assert sort["default"] == "-created_at"
    assert "low < medium < high" in parameters["sort"]["description"]
    for name in ("due_before", "due_after"):
        formats = {option.get("format") for option in parameters[name]["schema"]["anyOf"]}
        assert "date-time" in formats
        assert parameters[name]["description"]
    priorities = {tuple(o.get("enum", ())) for o in parameters["priority"]["schema"]["anyOf"]}
    assert ("low", "medium", "high") in priorities
    admin_tasks = document["paths"]["/api/v1/admin/users/{user_id}/tasks"]["get"]
    assert {p["name"] for p in admin_tasks["parameters"]} >= {"sort", "priority"}


# /docs


def test_docs_is_an_html_page_of_the_document_with_assets_from_this_app(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'url: "openapi.json"' in html
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("://", "")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    for asset in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert asset.startswith("/docs/assets/"), asset
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.data) > 0
    assert client.get("/docs/assets/swagger-ui-bundle.js").mimetype.endswith("javascript")
    assert client.get("/docs/assets/no-such-file.js").status_code == 404
