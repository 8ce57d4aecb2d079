"""``/docs``: Swagger UI over ``/openapi.json``, its assets served from the swagger-ui-py package.

Nothing is loaded from another host: the page, the script and the style all come from this app,
and the Content-Security-Policy holds the browser to that.
"""

from __future__ import annotations

import base64
import hashlib

from flask import Blueprint, Response, url_for
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from taskapp.openapi import response

ASSETS = SWAGGER_UI_PY_ROOT / "static"  # Swagger UI's distribution, shipped in the wheel

bp = Blueprint("docs", __name__, static_folder=str(ASSETS), static_url_path="/docs/assets")

# The document's URL is relative to the page, so the page also works under a path prefix.
# validatorUrl null: Swagger UI would otherwise send the document to an online validator.
_INIT = (
    'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", '
    "deepLinking: true, validatorUrl: null, tryItOutEnabled: false});"
)
_INIT_HASH = base64.b64encode(hashlib.sha256(_INIT.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; "
    f"script-src 'self' 'sha256-{_INIT_HASH}'; "
    "style-src 'self' 'unsafe-inline'; "  # Swagger UI sets style attributes
    "img-src 'self' data:; "
    "connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taskapp API</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" href="{icon}" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script>{init}</script>
</body>
</html>
"""


@bp.get("/docs")
@response(None, media_type="text/html")
def docs() -> Response:
    """Interactive documentation of this API (Swagger UI).

    Every asset comes from this server, none from another host.
    """
    page = _PAGE.format(
        css=url_for("docs.static", filename="swagger-ui.css"),
        icon=url_for("docs.static", filename="favicon-32x32.png"),
        js=url_for("docs.static", filename="swagger-ui-bundle.js"),
        init=_INIT,
    )
    resp = Response(page, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
