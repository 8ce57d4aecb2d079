"""taskapp: a Flask task API on MongoDB with a Redis caching layer."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix
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
    """Build the app: settings from the environment, overridden by ``config``."""
    app = TaskApp(__name__, static_folder=None)  # a JSON API: no static route
    app.config.from_mapping(settings.load(config))
    settings.check_redis(app.config)  # a Redis that refuses the app stops start-up here
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # A bearer-token API keeps no cookie session: skip Flask's signer on every request.
    app.session_interface = NullSessionInterface()
    app.url_map.converters["objectid"] = ObjectIdConverter
    from taskapp import cors, db, errors, http_metrics, logs, request_id, tracing
    from taskapp.extensions import cache

    logs.configure(app.config["LOG_FORMAT"])
    if tracing.provider() is None:
        tracing.start()  # from the OTEL_* variables, when they ask (gunicorn starts it post_fork)
    errors.init_app(app)
    tracing.init_app(app)
    cors.init_app(app)  # before every other hook: its headers go on every final response
    db.init_app(app)
    cache.init_app(app)
    http_metrics.init_app(app)

    from taskapp import cli, docs, ratelimit, responses, validation
    from taskapp.admin.routes import bp as admin_bp
    from taskapp.auth.routes import bp as auth_bp
    from taskapp.service_routes import bp as service_bp
    from taskapp.tasks import service as task_service
    from taskapp.tasks.routes import bp as tasks_bp

    ratelimit.init_app(app)
    task_service.init_app(app)
    validation.init_app(app)  # before the response cache looks the query string up
    responses.init_app(app)
    app.register_blueprint(service_bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(auth_bp, url_prefix="/api/v1/auth")
    app.register_blueprint(tasks_bp, url_prefix="/api/v1")
    app.register_blueprint(admin_bp, url_prefix="/api/v1/admin")
    cli.init_app(app)
    responses.install_fast_path(app)  # in front of Flask's dispatch
    tracing.wrap(app)  # a span around each request, fast path included
    app.wsgi_app = request_id.RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    if app.config["TRUSTED_PROXIES"]:
        # The client address (the per-address limits, logs) and scheme as the proxies saw them,
        # trusting exactly that many hops of X-Forwarded-For/-Proto and no client-sent ones.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    return app
