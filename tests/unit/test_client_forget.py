"""forget's policy against restic's own test data (internal/restic/snapshot_policy_test.go).

The snapshot list is restic's `testExpireSnapshots`; expected results come from restic's golden
files (policy_keep_snapshots_13, _17) and documentation, adjusted where noted for the rule added
in restic 0.16 that the oldest snapshot is kept while a bucket has counts left.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from orbitvault.client.forget import Duration, ExpirePolicy, apply_policy, parse_count
from orbitvault.client.snapshot import Snapshot, parse_tag_lists
from orbitvault.errors import InvalidArgument

_RAW = """
2014-09-01 10:20:30|2014-09-02 10:20:30|2014-09-05 10:20:30|2014-09-06 10:20:30|2014-09-08 10:20:30
2014-09-09 10:20:30|2014-09-10 10:20:30|2014-09-11 10:20:30|2014-09-20 10:20:30|2014-09-22 10:20:30
2014-08-08 10:20:30|2014-08-10 10:20:30|2014-08-12 10:20:30|2014-08-13 10:20:30|2014-08-13 10:20:30.1
2014-08-15 10:20:30|2014-08-18 10:20:30|2014-08-20 10:20:30|2014-08-21 10:20:30|2014-08-22 10:20:30
2014-10-01 10:20:30 foo|2014-10-02 10:20:30 foo|2014-10-05 10:20:30 foo|2014-10-06 10:20:30 foo
2014-10-08 10:20:30 foo|2014-10-09 10:20:30 foo|2014-10-10 10:20:30 foo|2014-10-11 10:20:30 foo
2014-10-20 10:20:30 foo|2014-10-22 10:20:30 foo|2014-11-08 10:20:30 foo|2014-11-10 10:20:30 foo
2014-11-12 10:20:30 foo|2014-11-13 10:20:30 foo|2014-11-13 10:20:30.1 bar|2014-11-15 10:20:30 foo,bar
2014-11-18 10:20:30|2014-11-20 10:20:30|2014-11-21 10:20:30|2014-11-22 10:20:30
2015-09-01 10:20:30|2015-09-02 10:20:30|2015-09-05 10:20:30|2015-09-06 10:20:30|2015-09-08 10:20:30
2015-09-09 10:20:30|2015-09-10 10:20:30|2015-09-11 10:20:30|2015-09-20 10:20:30|2015-09-22 10:20:30
2015-08-08 10:20:30|2015-08-10 10:20:30|2015-08-12 10:20:30|2015-08-13 10:20:30|2015-08-13 10:20:30.1
2015-08-15 10:20:30|2015-08-18 10:20:30|2015-08-20 10:20:30|2015-08-21 10:20:30|2015-08-22 10:20:30
2015-10-01 10:20:30|2015-10-02 10:20:30|2015-10-05 10:20:30|2015-10-06 10:20:30|2015-10-08 10:20:30
2015-10-09 10:20:30|2015-10-10 10:20:30|2015-10-11 10:20:30|2015-10-20 10:20:30|2015-10-22 10:20:30
2015-10-22 10:20:30|2015-10-22 10:20:30 foo,bar|2015-10-22 10:20:30 foo,bar|2015-10-22 10:20:30 foo,bar
2015-11-08 10:20:30|2015-11-10 10:20:30|2015-11-12 10:20:30|2015-11-13 10:20:30|2015-11-13 10:20:30.1
2015-11-15 10:20:30|2015-11-18 10:20:30|2015-11-20 10:20:30|2015-11-21 10:20:30|2015-11-22 10:20:30
2016-01-01 01:02:03|2016-01-01 01:03:03|2016-01-01 07:08:03|2016-01-03 07:02:03|2016-01-04 10:23:03
2016-01-04 11:23:03|2016-01-04 12:23:03|2016-01-04 12:24:03|2016-01-04 12:28:03|2016-01-04 12:30:03
2016-01-04 16:23:03|2016-01-05 09:02:03|2016-01-06 08:02:03|2016-01-07 10:02:03|2016-01-08 20:02:03
2016-01-09 21:02:03|2016-01-12 21:02:03|2016-01-12 21:08:03|2016-01-18 12:02:03
"""


def restic_list() -> list[Snapshot]:
    out = []
    for i, item in enumerate(x for line in _RAW.strip().splitlines() for x in line.split("|")):
        parts = item.split(" ")
        t = datetime.fromisoformat(f"{parts[0]} {parts[1]}").replace(tzinfo=UTC)
        tags = parts[2].split(",") if len(parts) > 2 else []
        out.append(Snapshot(time=t, tree=bytes(32), paths=[], tags=tags, id=f"{i:064x}"))
    return out


def kept_times(policy: ExpirePolicy) -> list[str]:
    keep, remove, reasons = apply_policy(restic_list(), policy)
    assert len(keep) + len(remove) == 103 and len(reasons) == len(keep)
    return [s.time.strftime("%Y-%m-%d %H:%M:%S") for s in keep]


def test_list_is_restics() -> None:
    assert len(restic_list()) == 103


def test_empty_policy_keeps_everything() -> None:
    keep, remove, reasons = apply_policy(restic_list(), ExpirePolicy())
    assert len(keep) == 103 and not remove and reasons[0].matches == ["policy is empty"]


def test_daily3_weekly4_golden_13() -> None:
    # restic testdata/policy_keep_snapshots_13, reasons included.
    keep, _remove, reasons = apply_policy(restic_list(), ExpirePolicy(daily=3, weekly=4))
    assert [s.time.strftime("%Y-%m-%d %H:%M:%S") for s in keep] == [
        "2016-01-18 12:02:03",
        "2016-01-12 21:08:03",
        "2016-01-09 21:02:03",
        "2016-01-03 07:02:03",
    ]
    assert [r.matches for r in reasons] == [
        ["daily snapshot", "weekly snapshot"],
        ["daily snapshot", "weekly snapshot"],
        ["daily snapshot", "weekly snapshot"],
        ["weekly snapshot"],
    ]
    assert [r.counters for r in reasons] == [{"daily": 2, "weekly": 3}, {"daily": 1, "weekly": 2}, {"weekly": 1}, {}]


def test_daily7_weekly2_monthly3_yearly10_golden_17_plus_oldest() -> None:
    # Golden file 17 plus, since restic 0.16, the oldest snapshot (yearly counts are left).
    keep, _remove, reasons = apply_policy(restic_list(), ExpirePolicy(daily=7, weekly=2, monthly=3, yearly=10))
    assert [s.time.strftime("%Y-%m-%d %H:%M:%S") for s in keep] == [
        "2016-01-18 12:02:03",
        "2016-01-12 21:08:03",
        "2016-01-09 21:02:03",
        "2016-01-08 20:02:03",
        "2016-01-07 10:02:03",
        "2016-01-06 08:02:03",
        "2016-01-05 09:02:03",
        "2015-11-22 10:20:30",
        "2015-10-22 10:20:30",
        "2014-11-22 10:20:30",
        "2014-08-08 10:20:30",
    ]
    assert reasons[0].counters == {"daily": 6, "weekly": 1, "monthly": 2, "yearly": 9}
    assert reasons[-2].counters == {"yearly": 7}
    assert reasons[-1].matches == ["oldest yearly snapshot"] and reasons[-1].counters == {"yearly": 6}


def test_keep_last_is_by_position_and_stable() -> None:
    # Five snapshots share 2015-10-22 10:20:30: stable order keeps the list order among them.
    keep, _r, _why = apply_policy(restic_list(), ExpirePolicy(last=10))
    assert len(keep) == 10
    assert keep[0].time.strftime("%Y-%m-%d") == "2016-01-18"
    assert keep[-1].time.strftime("%Y-%m-%d %H:%M:%S") == "2016-01-04 12:30:03"


def test_keep_last_more_than_there_are() -> None:
    assert len(kept_times(ExpirePolicy(last=200))) == 103


def test_unlimited_daily_keeps_one_per_day() -> None:
    days = {s.time.date() for s in restic_list()}
    keep, _r, _w = apply_policy(restic_list(), ExpirePolicy(daily=-1))
    assert len(keep) == len(days)


@pytest.mark.parametrize(
    ("taglists", "count"),
    [(["foo"], 18), (["foo,bar"], 4), (["foo", "bar"], 19)],
)
def test_keep_tags(taglists: list[str], count: int) -> None:
    # foo: 14 in Oct/Nov 2014 + 2014-11-15 (foo,bar) + 3 x 2015-10-22 (foo,bar); bar adds 2014-11-13.1.
    keep, _r, _w = apply_policy(restic_list(), ExpirePolicy(tags=parse_tag_lists(taglists)))
    expected = [s for s in restic_list() if any(s.has_tags(tl) for tl in parse_tag_lists(taglists))]
    assert len(keep) == len(expected) == count


@pytest.mark.parametrize(
    ("within", "count"),
    [("1d", 1), ("2d", 1), ("7d", 3), ("13d23h", 9)],
)
def test_keep_within(within: str, count: int) -> None:
    # latest is 2016-01-18 12:02:03; kept: strictly after latest - duration.
    keep = kept_times(ExpirePolicy(within=Duration.parse(within)))
    assert len(keep) == count
    cutoff = Duration.parse(within).subtract_from(datetime(2016, 1, 18, 12, 2, 3, tzinfo=UTC))
    assert all(datetime.fromisoformat(t).replace(tzinfo=UTC) > cutoff for t in keep)


def test_docs_example_twelve_sundays_keep_daily_4() -> None:
    # restic doc/060_forget.rst: one backup every Sunday for 12 weeks, --keep-daily 4.
    start = datetime(2019, 9, 1, 11, 0, tzinfo=UTC)
    snaps = [Snapshot(time=start + timedelta(weeks=i), tree=bytes(32), paths=[], id=f"{i:064x}") for i in range(12)]
    keep, remove, reasons = apply_policy(snaps, ExpirePolicy(daily=4))
    assert [s.time.strftime("%Y-%m-%d") for s in keep] == ["2019-11-17", "2019-11-10", "2019-11-03", "2019-10-27"]
    assert len(remove) == 8 and all(r.matches == ["daily snapshot"] for r in reasons)


def test_oldest_is_kept_while_counts_remain() -> None:
    snaps = [
        Snapshot(time=datetime(2020, 1, d, 10, tzinfo=UTC), tree=bytes(32), paths=[], id=f"{d:064x}") for d in (1, 1, 2)
    ]
    # Two days, keep-daily 5: the newest of each day, and the oldest snapshot (same day as a kept one).
    keep, remove, reasons = apply_policy(snaps, ExpirePolicy(daily=5))
    assert len(keep) == 3 and not remove
    assert reasons[-1].matches == ["oldest daily snapshot"]


def test_buckets_use_the_snapshots_own_offset() -> None:
    plus2 = timezone(timedelta(hours=2))
    # 23:30 UTC on the 1st is 01:30 on the 2nd at +02:00: a different day from 12:00 on the 1st.
    a = Snapshot(time=datetime(2020, 1, 2, 1, 30, tzinfo=plus2), tree=bytes(32), paths=[], id="a" * 64)
    b = Snapshot(time=datetime(2020, 1, 1, 12, 0, tzinfo=UTC), tree=bytes(32), paths=[], id="b" * 64)
    c = Snapshot(time=datetime(2020, 1, 1, 11, 0, tzinfo=UTC), tree=bytes(32), paths=[], id="c" * 64)
    keep, remove, _r = apply_policy([a, b, c], ExpirePolicy(daily=2))
    assert [s.id[0] for s in keep] == ["a", "b"] and [s.id[0] for s in remove] == ["c"]


def test_future_snapshots_do_not_move_latest() -> None:
    now = datetime(2020, 6, 1, tzinfo=UTC)
    past = Snapshot(time=datetime(2020, 5, 31, tzinfo=UTC), tree=bytes(32), paths=[], id="a" * 64)
    old = Snapshot(time=datetime(2020, 5, 1, tzinfo=UTC), tree=bytes(32), paths=[], id="b" * 64)
    future = Snapshot(time=datetime(2021, 1, 1, tzinfo=UTC), tree=bytes(32), paths=[], id="c" * 64)
    keep, remove, _r = apply_policy([past, old, future], ExpirePolicy(within=Duration.parse("2d")), now=now)
    assert {s.id[0] for s in keep} == {"a", "c"} and [s.id[0] for s in remove] == ["b"]


def test_duration_parse_and_go_adddate() -> None:
    assert Duration.parse("1y2m3d4h") == Duration(1, 2, 3, 4)
    with pytest.raises(InvalidArgument):
        Duration.parse("3w")
    # Go: 2016-03-31 minus one month is "2016-02-31", normalised to 2016-03-02.
    t = datetime(2016, 3, 31, 12, tzinfo=UTC)
    assert Duration(months=1).subtract_from(t) == datetime(2016, 3, 2, 12, tzinfo=UTC)
    assert Duration(days=1, hours=2).subtract_from(t) == datetime(2016, 3, 30, 10, tzinfo=UTC)


def test_parse_count() -> None:
    assert parse_count("unlimited") == -1 and parse_count("3") == 3 and parse_count(None) == 0
    with pytest.raises(InvalidArgument):
        parse_count("-2")
