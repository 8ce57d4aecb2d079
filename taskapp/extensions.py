"""Extension instances, made without an app and bound by ``create_app``."""

from taskapp.cache import RedisCache

cache = RedisCache()
