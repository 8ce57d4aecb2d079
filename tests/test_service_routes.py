"""Operational routes: /healthz, /readyz, /metrics and /docs (/openapi.json: test_openapi.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

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
    code = "from taskapp.http_metrics import DB_READS; DB_READS.inc(3)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = client.get("/metrics").get_data(as_text=True)
    assert "taskapp_db_reads_total 6.0" in text.splitlines()


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
