from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from orbitvault.client.errors import InvalidFormat
from orbitvault.client.snapshot import (
    Snapshot,
    filter_snapshots,
    find_snapshot,
    group_snapshots,
    parse_group_by,
    parse_tag_lists,
)
from orbitvault.client.tree import Node, decode_tree, encode_tree, is_safe_name, sort_nodes
from orbitvault.errors import InvalidArgument, NotFound


def test_node_roundtrip_including_non_utf8_names() -> None:
    weird = os.fsdecode(b"caf\xe9")  # Latin-1 name, not valid UTF-8
    nodes = sort_nodes(
        [
            Node(name="b", type="file", mode=0o644, size=3, content=[b"\x01" * 32], xattrs=[("user.x", b"\x00\xff")]),
            Node(name=weird, type="symlink", linktarget=os.fsdecode(b"/t\xff")),
            Node(name="a", type="dir", subtree=b"\x02" * 32, mode=0o755),
        ]
    )
    data = encode_tree(nodes)
    data.decode("utf-8")  # valid UTF-8 JSON whatever the names
    assert b"name_b64" in data and b"linktarget_b64" in data
    assert decode_tree(data) == nodes
    assert encode_tree(decode_tree(data)) == data  # deterministic


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b'{"nodes": 5}',
        b'{"nodes": [{"type": "file", "content": []}]}',
        b'{"nodes": [{"name": "x", "type": "bogus"}]}',
        b'{"nodes": [{"name": "x", "type": "file"}]}',
        b'{"nodes": [{"name": "x", "type": "dir"}]}',
        b'{"nodes": [{"name": "x", "type": "file", "content": ["zz"]}]}',
        b'{"nodes": [{"name": "x", "type": "file", "content": [], "mode": 99999}]}',
        b'{"nodes": [{"name": "x", "type": "file", "content": [], "uid": "0"}]}',
    ],
)
def test_malformed_trees_are_refused(doc: bytes) -> None:
    with pytest.raises(InvalidFormat):
        decode_tree(doc)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc", "x\x00"])
def test_unsafe_names(name: str) -> None:
    assert not is_safe_name(name)


def test_safe_names() -> None:
    assert all(is_safe_name(n) for n in ("a", "..a", "a..", ".hidden", "with space", "ü"))


def _snap(day: int, host: str = "h", tags: list[str] | None = None, paths: list[str] | None = None) -> Snapshot:
    t = datetime(2024, 1, day, tzinfo=UTC)
    return Snapshot(
        time=t, tree=b"\0" * 32, paths=paths or ["/p"], hostname=host, tags=tags or [], id=f"{day:02d}" * 32
    )


def test_snapshot_json_roundtrip() -> None:
    s = _snap(3, tags=["a"])
    s.time = s.time.astimezone(__import__("datetime").timezone(timedelta(hours=2)))
    back = Snapshot.from_json(s.to_json(), s.id)
    assert back == s and back.time.utcoffset() == timedelta(hours=2)
    with pytest.raises(InvalidFormat):
        Snapshot.from_json({"time": "2024-01-01T00:00:00", "tree": "00" * 32, "paths": []})


def test_find_filter_group() -> None:
    snaps = [_snap(1), _snap(2, host="other"), _snap(3, tags=["x", "y"]), _snap(4, paths=["/q"])]
    assert find_snapshot(snaps, "latest").id == snaps[3].id
    assert find_snapshot(snaps, "latest~1").id == snaps[2].id
    assert find_snapshot(snaps, "0303").id == snaps[2].id
    with pytest.raises(InvalidArgument):
        find_snapshot([_snap(1), Snapshot(time=_snap(1).time, tree=b"", paths=[], id="01" * 31 + "ff")], "0101")
    with pytest.raises(NotFound):
        find_snapshot(snaps, "ffff")
    assert [s.id for s in filter_snapshots(snaps, hosts=["other"])] == [snaps[1].id]
    assert [s.id for s in filter_snapshots(snaps, tags=parse_tag_lists(["x,y"]))] == [snaps[2].id]
    assert filter_snapshots(snaps, tags=parse_tag_lists(["x,z"])) == []
    assert len(filter_snapshots(snaps, tags=parse_tag_lists([""]))) == 3  # untagged only
    assert [s.id for s in filter_snapshots(snaps, paths=["/q"])] == [snaps[3].id]
    groups = group_snapshots(snaps, parse_group_by("host,paths"))
    assert sorted(len(g) for _k, g in groups) == [1, 1, 2]
    assert len(group_snapshots(snaps, parse_group_by(""))) == 1
    with pytest.raises(InvalidArgument):
        parse_group_by("colour")
