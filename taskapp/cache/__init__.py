"""A Redis cache extension for Flask: JSON values, fill locks, tags, an in-process layer.

Nothing in this package knows about tasks; it can be lifted into any Flask app.
"""

from taskapp.cache.client import Unavailable
from taskapp.cache.entry import NO_VALUE, Entry
from taskapp.cache.extension import RedisCache

__all__ = ["NO_VALUE", "Entry", "RedisCache", "Unavailable"]
