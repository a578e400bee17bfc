"""Hostile snapshots: restore refuses names and tricks that would write outside the target."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orbitvault.client.backend import LocalBackend
from orbitvault.client.pack import BlobType
from orbitvault.client.repository import Packer, Repository
from orbitvault.client.snapshot import Snapshot
from orbitvault.client.tree import Node, encode_tree
from tests.e2e.test_backup_support import OV, PASSWORD


class Crafter:
    """Writes arbitrary trees into a repository, as an attacker with the password could."""

    def __init__(self, ov: OV) -> None:
        self.repo = Repository.open(LocalBackend(ov.repo), PASSWORD.encode())
        self.repo.load_index()
        self.packer = Packer(self.repo)

    def blob(self, data: bytes) -> bytes:
        enc = self.repo.encode_blob(BlobType.DATA, data)
        self.packer.add(enc)
        return enc.id

    def tree(self, nodes: list[Node]) -> bytes:
        # No sorting or validation: exactly what the attacker wants stored.
        enc = self.repo.encode_blob(BlobType.TREE, encode_tree(nodes))
        self.packer.add(enc)
        return enc.id

    def file(self, name: str, data: bytes, **kw: int) -> Node:
        return Node(name=name, type="file", mode=0o644, size=len(data), content=[self.blob(data)], **kw)

    def dir(self, name: str, children: list[Node]) -> Node:
        return Node(name=name, type="dir", mode=0o755, subtree=self.tree(children))

    def symlink(self, name: str, target: str) -> Node:
        return Node(name=name, type="symlink", mode=0o777, linktarget=target)

    def snapshot(self, root: list[Node]) -> str:
        tid = self.tree(root)
        self.packer.flush()
        snap = Snapshot(time=datetime.now().astimezone(), tree=tid, paths=["/hostile"], hostname="evil")
        return self.repo.save_snapshot(snap)


class _OV(OV):
    """Every restore also as it runs with writer processes (the same rules, other processes)."""

    def __init__(self, repo: Path, writers: list[str]) -> None:
        super().__init__(repo)
        self.writers = writers

    def run(self, *args: str, **kw: Any) -> Any:
        return super().run(*args, *(self.writers if args[:1] == ("restore",) else []), **kw)


@pytest.fixture(params=[[], ["--write-processes", "2"]], ids=["threads", "writer-processes"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[OV, Path, Path]:
    ov = _OV(tmp_path / "repo", request.param)
    ov.init()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "sandbox" / "target"
    target.parent.mkdir()
    return ov, outside, target


def _everything_under(p: Path) -> set[str]:
    return {str(x.relative_to(p)) for x in p.rglob("*")}


def test_climbing_and_absolute_names_are_refused(setup: tuple[OV, Path, Path]) -> None:
    ov, outside, target = setup
    c = Crafter(ov)
    sid = c.snapshot(
        [
            c.file("../escape", b"pwned"),
            c.file("../../escape2", b"pwned"),
            c.file(str(outside / "abs"), b"pwned"),  # "/tmp/.../outside/abs": contains "/"
            c.file("a/../../b", b"pwned"),
            c.dir("..", [c.file("x", b"pwned")]),
            c.dir(".", [c.file("y", b"pwned")]),
            c.file("", b"pwned"),
            c.file("nul\x00byte", b"pwned"),
            c.file("fine.txt", b"ok"),
        ]
    )
    before = _everything_under(target.parent.parent)
    p = ov.run("restore", sid, "--target", str(target), check=False)
    assert p.returncode == 1
    assert p.stderr.count("refusing unsafe name") == 8
    assert (target / "fine.txt").read_bytes() == b"ok"
    assert os.listdir(outside) == []
    after = _everything_under(target.parent.parent)
    assert {x for x in after - before if not x.startswith("sandbox/target")} == set()
    assert _everything_under(target) == {"fine.txt"}
    # check flags the same tree
    chk = ov.run("check", check=False)
    assert chk.returncode == 1 and "unsafe or duplicate name" in chk.stderr


def test_symlink_then_file_with_the_same_name_is_refused(setup: tuple[OV, Path, Path]) -> None:
    ov, outside, target = setup
    c = Crafter(ov)
    sid = c.snapshot(
        [
            c.symlink("s", str(outside)),
            c.dir("s", [c.file("pwned", b"pwned")]),
            c.symlink("t", str(outside / "file")),
            c.file("t", b"pwned"),
        ]
    )
    p = ov.run("restore", sid, "--target", str(target), check=False)
    assert p.returncode == 1 and "duplicate" in p.stderr
    assert os.listdir(outside) == []
    assert os.readlink(target / "s") == str(outside)  # restored as a link, never followed


def test_symlinks_already_in_the_target_are_not_followed(setup: tuple[OV, Path, Path]) -> None:
    ov, outside, target = setup
    c = Crafter(ov)
    # First restore plants links to the outside ...
    sid1 = c.snapshot([c.symlink("d", str(outside)), c.symlink("f", str(outside / "victim"))])
    ov.run("restore", sid1, "--target", str(target))
    (outside / "victim").write_bytes(b"original")
    # ... a second snapshot has a directory and a file under those names.
    c2 = Crafter(ov)
    sid2 = c2.snapshot([c2.dir("d", [c2.file("pwned", b"pwned")]), c2.file("f", b"new content")])
    ov.run("restore", sid2, "--target", str(target))
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_bytes() == b"original"
    assert (target / "d" / "pwned").read_bytes() == b"pwned" and not (target / "d").is_symlink()
    assert (target / "f").read_bytes() == b"new content" and not (target / "f").is_symlink()


def test_hardlinks_only_between_restored_files(setup: tuple[OV, Path, Path]) -> None:
    ov, outside, target = setup
    victim = outside / "victim"
    victim.write_bytes(b"original")
    st = victim.stat()
    c = Crafter(ov)
    # Claims to share the victim's inode: must become a file of its own, not a link to the victim.
    sid = c.snapshot([c.file("h", b"data", links=2, inode=st.st_ino, device_id=st.st_dev)])
    ov.run("restore", sid, "--target", str(target))
    assert (target / "h").read_bytes() == b"data"
    assert (target / "h").stat().st_ino != st.st_ino
    assert victim.read_bytes() == b"original" and victim.stat().st_nlink == 1
