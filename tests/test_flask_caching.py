"""Flask-Caching's decorators on the extension: same Redis, JSON instead of pickle, behind the breaker."""

from __future__ import annotations

import time

import pytest

from tests.cache_helpers import bare_app, running


@pytest.fixture
def decorated(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix, CACHE_DEFAULT_TIMEOUT=30)
    calls = []

    @app.get("/report")
    @ext.cached(timeout=30)
    def report():
        calls.append("view")
        return {"n": len(calls)}

    @ext.memoize(timeout=30)
    def square(n):
        calls.append(n)
        return {"square": n * n}

    with running(app, ext):
        yield app, ext, calls, square


def test_cached_views_are_answered_from_redis(decorated):
    app, _, calls, _ = decorated
    client = app.test_client()
    assert client.get("/report").get_json() == {"n": 1}
    assert client.get("/report").get_json() == {"n": 1}
    assert calls == ["view"]


def test_memoized_functions_are_stored_as_json_under_the_prefix(decorated, key_prefix):
    _, ext, calls, square = decorated
    assert square(4) == {"square": 16}
    assert square(4) == {"square": 16}
    assert calls == [4]
    stored = [ext.client.get(k) for k in ext.client.scan_iter(match=key_prefix + "fc:*")]
    values = [v for v in stored if v and v.startswith(b"{")]
    assert b'{"square":16}' in values
    assert not any(v.startswith(b"!") for v in stored if v)  # cachelib's pickle marker


def test_a_pickled_entry_is_a_miss_never_unpickled(decorated, key_prefix):
    import pickle

    app, ext, calls, _ = decorated
    client = app.test_client()
    client.get("/report")
    (key,) = [k for k in ext.client.scan_iter(match=key_prefix + "fc:*view*")]
    ext.client.set(key, b"!" + pickle.dumps({"n": "from a pickle"}))
    assert client.get("/report").get_json() == {"n": 2}  # recomputed, not unpickled


def test_decorated_views_keep_answering_quickly_when_redis_is_dead(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix)

    @app.get("/report")
    @ext.cached(timeout=30)
    def report():
        return {"ok": True}

    with running(app, ext):
        client = app.test_client()
        private_redis.kill()
        durations = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/report").get_json() == {"ok": True}
            durations.append(time.perf_counter() - started)
    assert sorted(durations)[10] < 0.01


def test_memoize_caches_outside_an_app_context(redis_url, key_prefix):
    app, ext = bare_app(redis_url, key_prefix)
    calls = []

    @ext.memoize(timeout=30)
    def double(n):
        calls.append(n)
        return n * 2

    try:
        assert double(21) == 42
        assert double(21) == 42
        assert calls == [21]
    finally:
        with app.app_context():
            ext.close()


def test_a_refused_command_is_no_outage_and_never_opens_the_breaker(decorated, caplog):
    _, ext, _, _ = decorated
    flask_cache = ext._flask_cache
    flask_cache.set("word", "text")
    for _ in range(5):  # more than CACHE_BREAKER_THRESHOLD
        assert flask_cache.cache.inc("word") is None  # INCR on a string: an error reply, a miss
    assert not ext.degraded
    assert flask_cache.get("word") == "text"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "refused" in r.message]
    assert len(warnings) == 1  # logged once while the same refusal repeats


def test_set_many_goes_through_the_breaker_when_redis_hangs(private_redis, key_prefix):
    app, ext = bare_app(private_redis.url, key_prefix)
    with running(app, ext):
        flask_cache = ext._flask_cache
        assert flask_cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
        private_redis.pause()
        try:
            durations = []
            for _ in range(8):
                started = time.perf_counter()
                assert flask_cache.set_many({"a": 3, "b": 4}) == []
                durations.append(time.perf_counter() - started)
        finally:
            private_redis.resume()
    assert max(durations) < 1
    # The breaker is open: no Redis wait but one check of whether Redis is back, made by a write
    # (set_many's failure is held back as deletes of its keys): one socket timeout (0.25 s),
    # not one per try up to the breaker's threshold.
    assert max(durations[4:]) < 0.4, durations


def test_get_many_and_memoize_answer_misses_quietly_when_redis_is_dead(
    private_redis, key_prefix, caplog
):
    app, ext = bare_app(private_redis.url, key_prefix)
    calls = []

    @ext.memoize(timeout=30)
    def square(n):
        calls.append(n)
        return n * n

    with running(app, ext):
        private_redis.kill()
        assert ext._flask_cache.get_many("a", "b") == [None, None]
        for _ in range(5):
            assert square(3) == 9
    assert calls == [3] * 5
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (lambda: ("created", 201), 201, b"created"),
        (lambda: (b"raw", 202), 202, b"raw"),
        (lambda: b"bytes", 200, b"bytes"),
    ],
)
def test_a_view_answer_json_cannot_give_back_exactly_is_not_cached(
    redis_url, key_prefix, answer, status, body
):
    from flask import Response

    app, ext = bare_app(redis_url, key_prefix)
    calls = []

    @app.get("/answer")
    @ext.cached(timeout=30)
    def view():
        calls.append(1)
        return answer()

    @app.get("/response")
    @ext.cached(timeout=30)
    def response_view():
        calls.append(2)
        return Response("made", status=203)

    with running(app, ext):
        client = app.test_client()
        for _ in range(2):
            response = client.get("/answer")
            assert (response.status_code, response.data) == (status, body)
            response = client.get("/response")
            assert (response.status_code, response.data) == (203, b"made")
    assert calls == [1, 2, 1, 2]  # run every time, never replayed altered


def test_a_memoized_tuple_is_returned_as_a_tuple(decorated):
    _, ext, _, _ = decorated

    @ext.memoize(timeout=30)
    def pair(n):
        return (n, n)

    assert pair(1) == (1, 1)
    assert pair(1) == (1, 1)


def test_a_template_fragment_is_cached_as_text_and_given_back_as_markup(decorated, key_prefix):
    """``{% cache %}`` stores an autoescaped fragment (``Markup``): the second render is answered
    from Redis; the value read back is ``Markup`` again, so a template it is passed to does not
    escape it twice; Redis holds JSON text, never a pickle. (Flask-Caching's own template test
    runs on this backend in ``tests/flask_caching_upstream``.)"""
    from flask import render_template_string
    from flask_caching import make_template_fragment_key
    from markupsafe import Markup

    app, ext, _, _ = decorated
    runs = []
    template = '{% cache 60, "card" %}<b>{{ run() }}</b> {{ name }}{% endcache %}'
    with app.test_request_context():
        rendered = [
            render_template_string(template, run=lambda: runs.append(1) or len(runs), name="<i>")
            for _ in range(2)
        ]
        cached = ext._flask_cache.get(make_template_fragment_key("card"))
        reused = render_template_string("{{ fragment }}", fragment=cached)
    assert rendered == ["<b>1</b> &lt;i&gt;"] * 2
    assert runs == [1]  # the second render came from the cache
    assert type(cached) is Markup and reused == "<b>1</b> &lt;i&gt;"
    (key,) = ext.client.scan_iter(match=key_prefix + "fc:*card*")
    assert ext.client.get(key) == b'markup:"<b>1</b> &lt;i&gt;"'


def test_a_stored_string_is_given_back_as_text_never_as_markup(decorated):
    """Only a stored ``Markup`` comes back as markup: a ``str`` (under any key) stays text, which
    a template escapes."""
    from flask import render_template_string
    from flask_caching import make_template_fragment_key

    app, ext, _, _ = decorated
    for key in ("plain", make_template_fragment_key("card")):
        assert ext._flask_cache.set(key, "<script>")
        value = ext._flask_cache.get(key)
        assert type(value) is str
        with app.test_request_context():
            assert render_template_string("{{ v }}", v=value) == "&lt;script&gt;"


@pytest.mark.parametrize(
    "setting",
    [
        {"CACHE_REDIS_URL": "redis://elsewhere:6379/0"},
        {"CACHE_REDIS_HOST": "elsewhere"},
        {"CACHE_OPTIONS": {"socket_timeout": 5}},
    ],
)
def test_flask_caching_connection_settings_are_refused_not_ignored(redis_url, key_prefix, setting):
    with pytest.raises(RuntimeError, match=next(iter(setting))):
        bare_app(redis_url, key_prefix, **setting)


def test_a_serializer_other_than_json_is_refused_at_start_up(redis_url, key_prefix):
    from cachelib.serializers import RedisSerializer  # cachelib's default: pickle

    with pytest.raises(RuntimeError, match="CACHE_SERIALIZER"):
        bare_app(redis_url, key_prefix, CACHE_SERIALIZER=RedisSerializer)


@pytest.mark.parametrize(
    "setting",
    [
        {"CACHE_REDIS_URL": "redis://elsewhere:6379/0"},
        {"CACHE_REDIS_PASSWORD": "secret"},
        {"CACHE_OPTIONS": {"socket_timeout": 5}},
        {"CACHE_ARGS": ["elsewhere"]},
        {"CACHE_SERIALIZER": "cachelib.serializers.RedisSerializer"},
    ],
)
def test_settings_given_to_a_cache_object_are_refused_as_in_the_app_config(
    redis_url, key_prefix, setting
):
    from cachelib.serializers import RedisSerializer
    from flask_caching import Cache

    from taskapp.cache.flask_caching import BACKEND

    if "CACHE_SERIALIZER" in setting:
        setting = {"CACHE_SERIALIZER": RedisSerializer}
    app, ext = bare_app(redis_url, key_prefix)
    try:
        with pytest.raises(RuntimeError, match=next(iter(setting))):
            Cache(app, config={"CACHE_TYPE": BACKEND, **setting})
    finally:
        with app.app_context():
            ext.close()


# -- deletes while Redis hangs or is down: held back, replayed before the cache is read again --


@pytest.fixture(params=["paused", "killed"])
def outage(request):
    """A private Redis with an append-only file, and how to take it away and bring it back:
    paused (SIGSTOP, then SIGCONT) or killed (SIGKILL, then restarted from its file)."""
    from tests.redis_server import RedisServer

    server = RedisServer("--appendonly", "yes")
    if request.param == "paused":
        away, back = server.pause, server.resume
    else:
        away, back = server.kill, server.start
    yield server, away, back
    server.stop()


@pytest.fixture
def fc_app(outage, key_prefix):
    server, _, _ = outage
    app, ext = bare_app(server.url, key_prefix, CACHE_BREAKER_COOLDOWN=0.3)
    calls = []

    @app.get("/report")
    @ext.cached(timeout=300)
    def report():
        calls.append("view")
        return {"view": len(calls)}

    @ext.memoize(timeout=300)
    def counted(n):
        calls.append(n)
        return {"n": n, "call": len(calls)}

    with running(app, ext):
        yield app, ext, calls, report, counted


def _cached_before_the_outage(app, ext, report, counted):
    """Store a plain key, a view and a memoized value; the answers they give from the cache."""
    fc = ext._flask_cache
    assert fc.set("plain", "old")
    client = app.test_client()
    view = client.get("/report").get_json()
    memo = counted(4)
    assert client.get("/report").get_json() == view and counted(4) == memo  # cached
    return view, memo


def _open_the_breaker(ext):
    """Calls that fail until the breaker opens: later calls are refused without reaching Redis
    (so a delete made now is never received by Redis, paused or not)."""
    for _ in range(10):
        ext._flask_cache.get("other")
        if ext.degraded:
            return
    raise AssertionError("the breaker did not open")


def _no_old_answer_until_back(ext, is_old=lambda: False):
    """Read until the cache is back in use (a read starts the breaker's probe): no read, before
    or after the replay, is old.

    The reads must not write: a memoized call writes its function's version, which would replace
    the old version by chance when the probe closes the breaker between its read and its write.
    """
    reads = 0
    deadline = time.monotonic() + 10
    while ext.degraded or reads == 0:
        ext._flask_cache.get("a read")
        assert not is_old(), f"an old value was answered after {reads} reads"
        reads += 1
        assert time.monotonic() < deadline, "the cache was not used again within 10 s"
        time.sleep(0.005)
    assert not is_old(), "an old value was answered once the cache was back in use"


@pytest.mark.parametrize(
    "how",
    ["delete", "delete_many", "unlink", "view_key", "delete_cached"],
)
def test_a_delete_made_during_an_outage_is_replayed_before_the_key_is_read(fc_app, outage, how):
    app, ext, calls, report, counted = fc_app
    _, away, back = outage
    fc = ext._flask_cache
    view, _ = _cached_before_the_outage(app, ext, report, counted)
    away()
    try:
        _open_the_breaker(ext)
        if how == "delete":
            assert fc.delete("plain") is True  # taken: held back, not forgotten
            assert fc.delete(report.make_cache_key(path="/report")) is True
        elif how == "delete_many":
            assert fc.delete_many("plain", report.make_cache_key(path="/report")) == [
                "plain",
                report.make_cache_key(path="/report"),
            ]
        elif how == "unlink":
            fc.unlink("plain", report.make_cache_key(path="/report"))
        elif how == "view_key":
            fc.delete(report.make_cache_key(path="/report"))
            fc.delete("plain")
        else:
            fc.delete_cached(report, path="/report")
            fc.delete("plain")
        # A write after the delete, before the replay: refused (nothing stored), never lost later.
        assert not fc.set("plain", "during the outage")
        assert fc.get("plain") is None
    finally:
        back()
    client = app.test_client()
    _no_old_answer_until_back(ext, lambda: fc.get("plain") == "old")
    assert client.get("/report").get_json() != view
    # A write after the replay is kept: the replay ran before it, never after.
    assert fc.set("plain", "after")
    assert fc.get("plain") == "after"


@pytest.mark.parametrize("how", ["all_arguments", "one_call", "verhash"])
def test_delete_memoized_during_an_outage_is_replayed_before_the_function_is_called(
    fc_app, outage, how
):
    app, ext, calls, report, counted = fc_app
    _, away, back = outage
    fc = ext._flask_cache
    _, memo = _cached_before_the_outage(app, ext, report, counted)
    away()
    try:
        _open_the_breaker(ext)
        if how == "all_arguments":
            fc.delete_memoized(counted)  # resets the function's version: a set_many
        elif how == "one_call":
            fc.delete_memoized(counted, 4)
        else:
            fc.delete_memoized_verhash(counted)
        assert counted(4) != memo  # computed again: the cache is not read during the outage
    finally:
        back()
    _no_old_answer_until_back(ext)  # (plain reads: see its docstring)
    again = counted(4)
    assert again != memo
    assert counted(4) == again  # and memoized again once the cache is back


def test_clear_during_an_outage_fails_loudly(fc_app, outage):
    app, ext, calls, report, counted = fc_app
    _, away, back = outage
    away()
    try:
        _open_the_breaker(ext)
        with pytest.raises(RuntimeError, match="nothing cleared"):
            ext._flask_cache.clear()
    finally:
        back()


def test_a_delete_redis_refuses_fails_loudly_rather_than_being_held_for_ever(
    private_redis, key_prefix
):
    import redis

    admin = redis.Redis(port=private_redis.port)
    admin.acl_setuser(
        "nodel",
        enabled=True,
        nopass=True,
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-del", "-unlink"],
    )
    admin.close()
    url = f"redis://nodel:any@127.0.0.1:{private_redis.port}/0"
    app, ext = bare_app(url, key_prefix)
    with running(app, ext):
        fc = ext._flask_cache
        assert fc.set("k", "old")
        with pytest.raises(RuntimeError, match="refused"):
            fc.delete("k")
        with pytest.raises(RuntimeError, match="refused"):
            fc.delete_many("k")
        assert not ext.degraded  # a refusal is no outage: reads go on, so it could not be held


def test_a_history_of_reads_and_writes_around_a_held_back_delete(fc_app, outage):
    """Real threads read and write one key while it is deleted during an outage: no read begun
    after the delete was answered returns the value before it, and the last write stored after
    the outage is the value that stays (the replay never deletes it)."""
    import threading

    app, ext, calls, report, counted = fc_app
    _, away, back = outage
    fc = ext._flask_cache
    assert fc.set("k", "old")
    stop = threading.Event()
    reads, writes = [], []

    def reader():
        while not stop.is_set():
            began = time.monotonic()
            reads.append((began, fc.get("k")))
            time.sleep(0.001)

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            writes.append((f"w{i}", bool(fc.set("k", f"w{i}"))))
            time.sleep(0.003)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    delete_answered = None
    try:
        away()
        try:
            _open_the_breaker(ext)
            fc.delete("k")
            delete_answered = time.monotonic()
            threads += [threading.Thread(target=writer)]
            for thread in threads:
                thread.start()
            time.sleep(0.1)
        finally:
            back()
        _no_old_answer_until_back(ext)
        time.sleep(0.2)  # reads and writes with the cache back in use
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    after = [value for began, value in reads if began > delete_answered]
    assert after and "old" not in after
    stored = [value for value, ok in writes if ok]
    assert stored, "no write was stored once the cache was back in use"
    assert fc.get("k") == stored[-1]
