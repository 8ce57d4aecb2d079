"""taskapp: a Flask task API on MongoDB with a Redis caching layer."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from flask.sessions import SecureCookieSessionInterface
from werkzeug.routing import BaseConverter

from taskapp import config as settings


class ObjectIdConverter(BaseConverter):
    """``<objectid:name>``: 24 hex digits. Anything else matches no route (a JSON 404), and
    ``/tasks/stats`` is never taken for a task id."""

    regex = "[0-9a-fA-F]{24}"


class NullSessionInterface(SecureCookieSessionInterface):
    """No session cookie is read or written (the API authenticates with bearer tokens)."""

    def open_session(self, app, request):  # type: ignore[no-untyped-def]
        return None

    def save_session(self, app, session, response):  # type: ignore[no-untyped-def]
        return None


class TaskApp(Flask):
    """Flask, answering an OPTIONS request (a CORS preflight) 204 without a body."""

    def make_default_options_response(self) -> Response:
        """The route's methods in ``Allow``; no body, so no Content-Type (never an HTML page)."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment, overridden by ``config``; its parts; the
    request pipeline around them (``pipeline.py``, where their order is stated); its
    blueprints and commands."""
    app = TaskApp(__name__, static_folder=None)  # a JSON API: no static route
    app.config.from_mapping(settings.load(config))
    settings.check_redis(app.config)  # a Redis that refuses the app stops start-up here
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # A bearer-token API keeps no cookie session: skip Flask's signer on every request.
    app.session_interface = NullSessionInterface()
    app.url_map.converters["objectid"] = ObjectIdConverter
    from taskapp import cli, db, logs, pipeline, tracing
    from taskapp.auth import service as accounts
    from taskapp.extensions import cache
    from taskapp.routes import admin, auth, docs, service, tasks
    from taskapp.tasks import service as task_service

    logs.configure(app.config["LOG_FORMAT"])
    if tracing.provider() is None:
        # First: MongoDB's client and the pipeline trace requests only when tracing is on.
        tracing.start()  # from the OTEL_* variables, when they ask (gunicorn starts it post_fork)
    db.init_app(app, listeners=tracing.mongodb_listeners())
    cache.init_app(app)
    task_service.init_app(app)
    accounts.forget_with_account(app, task_service.forget_user)
    pipeline.install(app)
    app.register_blueprint(service.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(auth.bp, url_prefix="/api/v1/auth")
    app.register_blueprint(tasks.bp, url_prefix="/api/v1")
    app.register_blueprint(admin.bp, url_prefix="/api/v1/admin")
    cli.init_app(app)
    return app
