"""The README's curl examples, run as they stand against gunicorn with the embedded defaults."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.test_gunicorn import ROOT, serve  # noqa: F401  (the fixture)

README = Path(ROOT) / "README.md"


def curl_examples() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- curl-examples -->\n```sh\n(.*?)```\n<!-- /curl-examples -->", text, re.S
    )
    assert block, "README.md lost its curl examples"
    return block.group(1)


def test_the_readme_curl_examples_run_against_the_served_app(serve, monkeypatch):  # noqa: F811
    for name in ("REDIS_URL", "MONGODB_URI", "SECRET_KEY", "CACHE_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)  # the first command's embedded defaults
    server = serve()
    for _ in range(2):  # as often as a reader runs it: no fixed email to collide (409)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", curl_examples()],
            env={**os.environ, "BASE": server.base},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r'"email":"ada-[0-9a-f]{8}@example.com"', result.stdout)
        assert "/api/v1/tasks/{task_id}" in result.stdout  # the OpenAPI paths printed last
