"""In a real browser: a page on another origin uses the API through CORS, and /docs renders.

Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) driven by Playwright, against
the app under gunicorn on the session's redis-server and FerretDB. Nothing is downloaded: the
browser is the system's, Playwright only drives it.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from taskapp.auth.schemas import EXAMPLE_CREDENTIALS, EXAMPLE_PASSWORD_CHANGE
from taskapp.request_id import WELL_FORMED
from tests.api import problem_of, rate_limits
from tests.test_gunicorn import free_port, serve  # noqa: F401  (the fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

# The web client: plain fetch() calls from the page's origin to the API's, as a browser app makes
# them. Its outcome is a promise the test awaits; each step keeps what a script can read.
CLIENT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>web client</title></head><body>
<script>
const API = "%(api)s";

async function call(method, path, {token, body, headers} = {}) {
  const sent = {...(headers || {})};
  if (token) sent["Authorization"] = "Bearer " + token;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers: sent, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return {
    status: response.status,
    etag: response.headers.get("ETag"),
    xcache: response.headers.get("X-Cache"),
    type: response.headers.get("Content-Type"),
    policy: response.headers.get("RateLimit-Policy"),
    rateLimit: response.headers.get("RateLimit"),
    requestId: response.headers.get("X-Request-ID"),
    authenticate: response.headers.get("WWW-Authenticate"),
    body: text ? JSON.parse(text) : null,
  };
}

async function run() {
  const steps = {};
  const credentials = {email: "browser@example.com", password: "correct horse battery"};
  steps.register = await call("POST", "/api/v1/auth/register", {body: credentials});
  steps.login = await call("POST", "/api/v1/auth/login", {body: credentials});
  const token = steps.login.body.access_token;
  steps.me = await call("GET", "/api/v1/auth/me", {token});
  steps.create = await call("POST", "/api/v1/tasks", {
    token, body: {title: "from a browser", priority: "high", due_date: "2030-01-31T17:00:00Z"},
  });
  const path = "/api/v1/tasks/" + steps.create.body.id;
  steps.first = await call("GET", path, {token});
  steps.second = await call("GET", path, {token, headers: {"X-Request-ID": "browser-2"}});
  steps.conditional = await call("GET", path, {token, headers: {"If-None-Match": steps.second.etag}});
  steps.patch = await call("PATCH", path, {token, body: {completed: true}});
  steps.reread = await call("GET", path, {token});
  steps.list = await call("GET", "/api/v1/tasks?priority=high&due_before=2031-01-01&sort=-priority", {token});
  steps.remove = await call("DELETE", path, {token});
  steps.gone = await call("GET", path, {token});
  steps.anonymous = await call("GET", "/api/v1/tasks");
  return steps;
}

window.outcome = run().then(
  (steps) => ({ok: true, steps}),
  (error) => ({ok: false, error: String(error)}),
);
</script>
</body></html>
"""


class PageServer:
    """A one-page http.server on a loopback port of its own: the web client's origin.

    The page is set after the start, as the API's address is known only once the API (whose
    CORS_ORIGINS names this origin) is up.
    """

    def __init__(self) -> None:
        self.html = b""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(owner.html)))
                self.end_headers()
                self.wfile.write(owner.html)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve_client(self, api_base: str) -> str:
        """Serve the web client calling ``api_base``; its URL."""
        self.html = (CLIENT_PAGE % {"api": api_base}).encode()
        return self.origin + "/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def api(serve, redis_url, key_prefix, mongodb_uri):  # noqa: F811
    """Start the app under gunicorn (two workers) for a page origin: ``api(origin).base``."""

    def start(cors_origins: str, **settings: str):
        return serve(
            **settings,
            REDIS_URL=redis_url,
            CACHE_KEY_PREFIX=key_prefix,
            MONGODB_URI=mongodb_uri,
            SECRET_KEY="browser-test-secret-key-with-32-bytes!!",
            CORS_ORIGINS=cors_origins,
            GUNICORN_WORKERS="2",
        )

    return start


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.stop()


def run_client(browser: Browser, page_url: str) -> dict:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(page_url)
        return page.evaluate("window.outcome")
    finally:
        context.close()


def test_a_page_on_another_origin_uses_the_api_with_its_cache_headers(browser, api, page_server):
    server = api(page_server.origin)
    outcome = run_client(browser, page_server.serve_client(server.base))

    assert outcome["ok"], outcome
    steps = outcome["steps"]
    assert steps["register"]["status"] == 201
    assert steps["login"]["status"] == 200
    assert steps["me"]["status"] == 200
    assert steps["me"]["body"] == {
        "id": steps["register"]["body"]["id"],
        "email": "browser@example.com",
        "role": "user",
    }
    task = steps["create"]["body"]
    assert steps["create"]["status"] == 201
    # The script reads the cache headers: X-Cache, ETag, the rate limit fields and the request
    # id are exposed to it.
    first, second = steps["first"], steps["second"]
    assert (first["status"], first["xcache"]) == (200, "MISS")
    assert (second["status"], second["xcache"]) == (200, "HIT")
    assert first["body"] == second["body"] == task
    assert first["etag"] and first["etag"] == second["etag"]
    limits = rate_limits({"RateLimit": second["rateLimit"], "RateLimit-Policy": second["policy"]})
    assert limits["user"]["q"] > 0 and 0 <= limits["user"]["r"] < limits["user"]["q"]
    assert WELL_FORMED.fullmatch(first["requestId"]) and second["requestId"] == "browser-2"
    assert steps["conditional"]["status"] == 304
    assert steps["conditional"]["etag"] == second["etag"]
    assert (steps["patch"]["status"], steps["patch"]["body"]["completed"]) == (200, True)
    reread = steps["reread"]
    assert (reread["status"], reread["body"]["completed"]) == (200, True)
    assert reread["etag"] != second["etag"]
    assert [t["id"] for t in steps["list"]["body"]["items"]] == [task["id"]]
    assert (steps["remove"]["status"], steps["remove"]["type"]) == (204, None)
    assert steps["gone"]["status"] == 404
    problem_of(steps["gone"]["body"], 404)
    anonymous = steps["anonymous"]  # an error the script can read, too
    assert (anonymous["status"], anonymous["type"]) == (401, "application/problem+json")
    problem_of(anonymous["body"], 401)
    assert anonymous["authenticate"] == "Bearer"
    assert "anonymous" in rate_limits(
        {"RateLimit": anonymous["rateLimit"], "RateLimit-Policy": anonymous["policy"]}
    )


def test_a_page_on_an_origin_not_listed_cannot_read_the_api(browser, api, page_server):
    server = api("http://127.0.0.1:1")  # some other origin than the page's
    outcome = run_client(browser, page_server.serve_client(server.base))
    assert outcome["ok"] is False
    assert "Failed to fetch" in outcome["error"]  # the browser refused the cross-origin answer


def test_docs_render_every_operation_from_the_packaged_swagger_ui(browser, api):
    # One page view is several requests (the page, its assets, the document): none is counted
    # by the anonymous limit, so a limit of 1 a minute still shows the page whole.
    server = api("", ANON_RATE_LIMIT_PER_MINUTE="1")
    context = browser.new_context()
    requested: list[str] = []
    problems: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("request", lambda request: requested.append(request.url))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(server.base + "/docs")
        page.wait_for_selector(".opblock-summary-path", state="attached")
        operations = {
            (
                block.locator(".opblock-summary-method").inner_text().strip(),
                block.locator(".opblock-summary-path").get_attribute("data-path"),
            )
            for block in page.locator(".opblock").all()
        }
        page.locator("#operations-tasks-tasks_list_tasks .opblock-summary").click()
        page.wait_for_selector("#operations-tasks-tasks_list_tasks .parameters")
        parameters = set(
            page.locator("#operations-tasks-tasks_list_tasks .parameter__name").all_inner_texts()
        )
    finally:
        context.close()

    assert {
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/admin/users"),
        ("GET", "/api/v1/tasks"),
        ("POST", "/api/v1/tasks"),
        ("PATCH", "/api/v1/tasks/{task_id}"),
        ("DELETE", "/api/v1/tasks/{task_id}"),
        ("GET", "/api/v1/tasks/stats"),
        ("GET", "/openapi.json"),
    } <= operations
    names = {name.split()[0].rstrip("*") for name in parameters}
    assert {"page", "per_page", "completed", "priority", "due_before", "due_after", "sort"} <= names
    assert requested and all(url.startswith(server.base) for url in requested), requested
    assert len(requested) >= 4, requested  # more than one request, none of them refused
    assert problems == []


# Swagger UI's "Try it out" on /docs, for every operation, with the examples it prefills

#: Operations tried first (an account, its token, a task to address) and last (they end what
#: the others need: the admin role, the task, the login, the password, the account).
FIRST = ["auth_register", "auth_login", "tasks_create_task"]
LAST = [
    "admin_set_role",
    "tasks_delete_task",
    "auth_refresh",
    "auth_logout",
    "auth_change_password",
    "auth_delete_me",
]
#: Operations after which the page's token no longer works: the test logs in again (outside the
#: page) with the account's password as it then is, and authorizes the page with the new token.
ENDS_LOGIN = {"auth_logout", "auth_change_password"}


def try_it_out(
    page: Page, operation: dict, ids: dict[str, str], body: str | None = None
) -> tuple[int, str]:
    """Open an operation, press "Try it out", fill in only its path ids (and ``body`` when given:
    a refresh token, which no example can hold), press "Execute": (the status and the body
    Swagger UI shows). Every other field keeps what Swagger UI prefilled from the document (the
    body's example, the parameters' defaults)."""
    block = page.locator(f"#operations-{operation['tags'][0]}-{operation['operationId']}")
    block.locator(".opblock-summary").first.click()
    block.locator(".try-out__btn").click()
    for name, value in ids.items():
        field = block.locator(f'tr[data-param-name="{name}"][data-param-in="path"] input')
        if field.count():
            field.fill(value)
    if "requestBody" in operation:  # prefilled with the example, sent as it stands
        assert block.locator("textarea.body-param__text").input_value().strip()
        if body is not None:
            block.locator("textarea.body-param__text").fill(body)
    block.locator("button.execute").click()
    cell = block.locator(".live-responses-table tbody .response-col_status").first
    cell.wait_for()
    shown = block.locator(".live-responses-table tbody .response-col_description pre.microlight")
    status, text = int(cell.inner_text().strip()), shown.first.inner_text() if shown.count() else ""
    # Closed again: every open operation (with its highlighted answer, the whole document for one
    # of them) is laid out anew on each later click, which made each step slower than the last.
    block.locator(".opblock-summary").first.click()
    block.locator(".opblock-body").wait_for(state="detached")
    return status, text


def log_in(base: str, password: str) -> str:
    """An access token of the example account, from the API (outside the page)."""
    credentials = {"email": EXAMPLE_CREDENTIALS["email"], "password": password}
    request = urllib.request.Request(
        base + "/api/v1/auth/login",
        data=json.dumps(credentials).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["access_token"]


def authorize(page: Page, token: str) -> None:
    """Swagger UI's Authorize dialog, with a real token (replacing the one it holds)."""
    page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".modal-ux")
    held = dialog.locator("button", has_text="Logout")
    if held.count():
        held.first.click()
    dialog.locator("input").first.fill(token)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()


# Every operation opened, tried and its answer rendered, with a header table per documented
# status: under a minute of browser work when each is closed again, more on a busy machine.
@pytest.mark.timeout(300)
def test_swagger_ui_try_it_out_succeeds_for_every_operation_with_its_example(browser, api):
    """No 4xx caused by the document's own examples: each operation answers its success status
    to what Swagger UI sends from the document, once authorized with a real token (the example
    account registers and logs in through the page; ADMIN_EMAILS makes it an admin)."""
    server = api("", ADMIN_EMAILS=EXAMPLE_CREDENTIALS["email"])
    with urllib.request.urlopen(server.base + "/openapi.json", timeout=10) as response:
        document = json.load(response)
    operations = {
        operation["operationId"]: operation
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    middle = [name for name in operations if name not in FIRST + LAST]
    context = browser.new_context()
    answered: list[tuple[int, str]] = []
    statuses: dict[str, int] = {}
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("response", lambda r: answered.append((r.status, r.url)))
        page.goto(server.base + "/docs")
        page.wait_for_selector(".opblock-summary-path", state="attached")
        ids: dict[str, str] = {}
        refresh_token, password = "", EXAMPLE_CREDENTIALS["password"]
        for name in FIRST + middle + LAST:
            body = json.dumps({"refresh_token": refresh_token}) if name == "auth_refresh" else None
            status, shown = try_it_out(page, operations[name], ids, body)
            statuses[name] = status
            if name == "auth_register" and status == 201:
                ids["user_id"] = json.loads(shown)["id"]
            elif name in ("auth_login", "auth_refresh") and status == 200:
                authorize(page, json.loads(shown)["access_token"])
                refresh_token = json.loads(shown)["refresh_token"]
            elif name in ENDS_LOGIN:
                if name == "auth_change_password":
                    password = EXAMPLE_PASSWORD_CHANGE["new_password"]
                authorize(page, log_in(server.base, password))
            elif name == "tasks_create_task" and status == 201:
                ids["task_id"] = json.loads(shown)["id"]
    finally:
        context.close()

    expected = {
        name: min(int(code) for code in operation["responses"] if code.startswith("2"))
        for name, operation in operations.items()
    }
    assert statuses == expected
    assert [(status, url) for status, url in answered if status >= 400] == []
