"""Flask-Caching's own tests, run on taskapp's Flask-Caching backend (on the test Redis).

``test_templates.py`` and ``test_template.html`` are copied unchanged from the Flask-Caching 2.5.1
sdist's ``tests/`` (BSD-3-Clause, ``LICENSE`` here); to compare with a newer release::

    pip download --no-binary :all: --no-deps flask-caching==VERSION

The fixtures below stand in for Flask-Caching's ``tests/conftest.py`` ones of the same names:
its ``app`` with the template folder here, and its ``cache``, which here is the Flask-Caching
``Cache`` the taskapp extension binds (``CACHE_TYPE`` is its JSON backend) instead of a
``SimpleCache``.
"""

from __future__ import annotations

import os

import pytest

from tests.cache_helpers import bare_app, running


@pytest.fixture
def bound(redis_url, key_prefix):
    """A Flask app whose templates are here, with the taskapp cache extension on the test Redis."""
    flask_app, ext = bare_app(redis_url, key_prefix)
    flask_app.template_folder = os.path.dirname(__file__)
    flask_app.testing = True
    with running(flask_app, ext):
        yield flask_app, ext


@pytest.fixture
def app(bound):
    """Flask-Caching's ``app`` fixture."""
    return bound[0]


@pytest.fixture
def cache(bound):
    """Flask-Caching's ``cache`` fixture: the ``Cache`` the extension bound to ``app``."""
    return bound[1]._flask_cache
