"""The history checker itself: it finds a stale read, and only a stale one."""

from __future__ import annotations

from tests.history import History, Op, stale_reads


def history(*ops: Op) -> History:
    made = History()
    for op in ops:
        made.add(op)
    return made


def test_a_read_begun_after_an_answered_write_must_show_it_or_newer():
    found = stale_reads(
        history(
            Op("write", 0.0, 1.0, 200, 1),
            Op("write", 1.0, 2.0, 200, 2),
            Op("read-task", 2.5, 2.6, 200, 1, cache="HIT"),  # stale: 2 was answered at 2.0
            Op("read-task", 2.5, 2.6, 200, 2),
            Op("read-list", 2.5, 2.6, 200, 3),  # newer than answered: a write in flight
        )
    )
    assert [(s.read.value, s.bound) for s in found] == [(1, 2)]


def test_reads_overlapping_a_write_and_unanswered_writes_bound_nothing():
    found = stale_reads(
        history(
            Op("write", 0.0, 1.0, 200, 1),
            Op("write", 1.0, 3.0, 200, 2),
            Op("read-task", 2.0, 3.5, 200, 1),  # began before 2 was answered
            Op("write", 3.0, 4.0, 503, 3),
            Op("write", 4.0, 5.0, 0, 4),
            Op("read-task", 6.0, 6.1, 200, 2),  # 3 and 4 were never answered 2xx
            Op("read-task", 6.0, 6.1, 404, None),  # not answered 200: no value to check
        )
    )
    assert found == []


def test_a_read_that_shows_no_value_after_an_answered_write_is_stale():
    found = stale_reads(
        history(Op("write", 0.0, 1.0, 200, 1), Op("read-list", 2.0, 2.1, 200, None))
    )
    assert [s.bound for s in found] == [1]
