"""The times a span is asked for (API queries, `vigil export`): any text and any duration
either make a span whose times can be written out, or a ValueError that says why.

A 500 came from a start near the calendar's end plus a duration (year 10000 cannot be
written); the strategies below aim at the edges of every form a time may take.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.surfaces.export import (
    EARLIEST_SECONDS,
    LATEST_SECONDS,
    parse_time,
    resolve_span,
    utc_text,
)

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: ("+" if minutes >= 0 else "-") + f"{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
edge_datetimes = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 3)),
    st.datetimes(min_value=datetime(9999, 12, 29), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(1970, 1, 2)),
    st.datetimes())
iso_texts = st.builds(lambda d, tail: d.isoformat() + tail, edge_datetimes,
                      st.one_of(st.just(""), st.just("Z"), offsets))
unix_texts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=LATEST_SECONDS - 86400, max_value=LATEST_SECONDS + 86400).map(repr),
    st.integers(min_value=-10, max_value=10**25).map(str))
times = st.one_of(iso_texts, unix_texts, st.text(max_size=80))
durations = st.one_of(st.none(), st.floats(), st.floats(min_value=0, max_value=4 * 86400))


def written(t: float) -> str:
    text = utc_text(t)
    assert "UNIX seconds" not in text, t  # a checked time is always a calendar time
    return text


@settings(max_examples=500)
@given(times)
def test_a_parsed_time_is_one_the_calendar_can_write(text: str) -> None:
    try:
        seconds = parse_time(text)
    except ValueError as err:
        assert str(err)
    else:
        assert EARLIEST_SECONDS <= seconds < LATEST_SECONDS
        written(seconds)


@settings(max_examples=500)  # pure functions: 500 cases take about a second
@given(times, st.one_of(st.none(), times), durations)
def test_any_span_asked_for_is_writable_or_a_value_error(start: str, end: str | None,
                                                         duration: float | None) -> None:
    try:
        t0, t1 = resolve_span(start, end, duration, max_seconds=None)
    except ValueError as err:
        assert str(err)
    else:
        assert t0 < t1
        written(t0), written(t1)


def test_the_last_second_of_9999_plus_a_duration_is_refused_with_the_reason() -> None:
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    for start in ("9999-12-31T23:59:59Z", str(int(last.timestamp()))):
        try:
            resolve_span(start, None, 5.0, max_seconds=None)
        except ValueError as err:
            assert "ends after the year 9999" in str(err)
        else:
            raise AssertionError("a span ending in the year 10000 was accepted")
    # Up to the end is fine.
    t0, t1 = resolve_span("9999-12-31T23:59:50Z", None, 9.0, max_seconds=None)
    assert written(t1) == "9999-12-31T23:59:59.000Z"
    assert t1 - t0 == timedelta(seconds=9).total_seconds()
