"""Every revocation path through HTTP on 3 gunicorn workers: a token's task was a response-cache
HIT on every worker just before, and every worker answers 401 to that token just after."""

from __future__ import annotations

import pytest

from tests.test_deployment import PASSWORD, WORKERS, deployment, register, wait_logged  # noqa: F401
from tests.test_gunicorn import call, serve  # noqa: F401  (the fixture)

TASKS = "/api/v1/tasks"


def log_in(server, email: str, password: str = PASSWORD) -> dict:
    status, _, body = call(
        server.base, "POST", "/api/v1/auth/login", {"email": email, "password": password}
    )
    assert status == 200, body
    return body


# Requests over fresh connections until every worker has answered: the kernel hands each to
# whichever worker accepts first, and on a busy machine one worker answered none of 90.
MAX_REQUESTS = 300


def bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def hit_on_every_worker(server, path: str, pair: dict) -> None:
    """GET ``path`` until each worker has answered it with an X-Cache: HIT."""
    outcomes: list[str] = []
    hit_by: set[int] = set()
    while len(hit_by) < WORKERS:
        assert len(outcomes) < MAX_REQUESTS, (outcomes, hit_by)
        status, head, _ = call(server.base, "GET", path, headers=bearer(pair))
        assert status == 200
        outcomes.append(head["X-Cache"])
        logged = wait_logged(server, "GET", path, len(outcomes))
        hit_by = {pid for (pid, _), x in zip(logged, outcomes, strict=True) if x == "HIT"}


def refused_by_every_worker(server, path: str, pair: dict) -> list[int]:
    """GET ``path`` until each worker has answered it after the revocation: their statuses."""
    before = len(wait_logged(server, "GET", path, 0))
    statuses: list[int] = []
    while True:
        assert len(statuses) < MAX_REQUESTS, statuses
        statuses.append(call(server.base, "GET", path, headers=bearer(pair))[0])
        logged = wait_logged(server, "GET", path, before + len(statuses))[before:]
        if len({pid for pid, _ in logged}) == WORKERS:
            return statuses


def logout(server, pair, _email):
    status, _, body = call(server.base, "POST", "/api/v1/auth/logout", headers=bearer(pair))
    assert status == 204, body


def change_password(server, pair, _email):
    change = {"current_password": PASSWORD, "new_password": "another good passphrase"}
    status, _, body = call(server.base, "POST", "/api/v1/auth/password", change, bearer(pair))
    assert status == 204, body


def delete_account(server, pair, _email):
    status, _, body = call(server.base, "DELETE", "/api/v1/auth/me", headers=bearer(pair))
    assert status == 204, body


def reuse_refresh_token(server, pair, _email):
    used = pair.pop("used_refresh_token")
    status, _, body = call(server.base, "POST", "/api/v1/auth/refresh", {"refresh_token": used})
    assert status == 401, body


@pytest.mark.parametrize(
    ("revoke", "rate_limit"),
    [
        (logout, "100000"),
        (logout, "0"),  # the check rides on the lookup's call instead of the rate limit's
        (change_password, "100000"),
        (delete_account, "100000"),
        (reuse_refresh_token, "100000"),
    ],
    ids=[
        "logout",
        "logout-rate-limit-off",
        "password-change",
        "account-deletion",
        "reused-refresh",
    ],
)
def test_a_revoked_token_is_refused_by_every_worker_for_a_task_that_was_a_hit(
    deployment,  # noqa: F811
    revoke,
    rate_limit,
):
    server = deployment(RATE_LIMIT_PER_MINUTE=rate_limit)
    _, email = register(server)
    pair = log_in(server, email)
    if revoke is reuse_refresh_token:  # the pair in use came from a refresh; its parent is used
        status, _, renewed = call(
            server.base, "POST", "/api/v1/auth/refresh", {"refresh_token": pair["refresh_token"]}
        )
        assert status == 200, renewed
        renewed["used_refresh_token"] = pair["refresh_token"]
        pair = renewed
    status, _, task = call(server.base, "POST", TASKS, {"title": "cached"}, bearer(pair))
    assert status == 201, task
    path = f"{TASKS}/{task['id']}"
    hit_on_every_worker(server, path, pair)

    revoke(server, pair, email)

    assert set(refused_by_every_worker(server, path, pair)) == {401}
    status, _, _ = call(server.base, "POST", TASKS, {"title": "orphan?"}, bearer(pair))
    assert status == 401
