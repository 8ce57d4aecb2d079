"""``wsgi:app`` with invalidation messages delivered late (fault injection for gunicorn tests).

Each worker's notifier handles every pub/sub message 300 ms after it arrives, as under a
subscriber that lags. The guarantee under test must not depend on that channel's speed.
"""

import os
import time

from taskapp.cache.notifier import Notifier

DELAY = float(os.environ.get("TEST_NOTIFIER_DELAY", "0.3"))
_handle = Notifier._handle


def _late_handle(self, channel, data):
    time.sleep(DELAY)
    _handle(self, channel, data)


Notifier._handle = _late_handle

from wsgi import app  # noqa: E402  (after the patch: each worker builds its app with it)

__all__ = ["app"]
