from __future__ import annotations

import os
from pathlib import Path

import pytest

from orbitvault.client.filters import (
    CACHEDIR_SIGNATURE,
    PathMatcher,
    TagFile,
    could_contain_match,
    expand_glob,
    has_magic,
    parse_size,
    read_files_from,
    read_files_from_raw,
    read_files_from_verbatim,
    tag_files,
)


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("*.log", "/var/log/syslog.log", True),
        ("*.log", "/var/log/syslog.log.1", False),
        ("*.log", "/a.log/inside", True),  # a matching directory takes its contents with it
        ("cache", "/home/u/cache/x", True),
        ("cache", "/home/u/mycache/x", False),
        ("/home/u", "/home/u/x", True),
        ("/home/u", "/srv/home/u", False),
        ("home/*/tmp", "/x/home/u/tmp/f", True),
        ("home/*/tmp", "/home/u/v/tmp", False),
        ("/**/node_modules", "/a/b/c/node_modules/d", True),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**", "/a/b", True),
        ("f?o", "/x/foo", True),
        ("[ab].txt", "/x/b.txt", True),
        ("[!ab].txt", "/x/b.txt", False),
        ("a+b(c)", "/x/a+b(c)", True),
        ("[]x].txt", "/p/].txt", True),  # a leading "]" in a class is a member
        ("[!]x].txt", "/p/].txt", False),
    ],
)
def test_restic_style_patterns(pattern: str, path: str, hit: bool) -> None:
    assert PathMatcher([pattern]).match(path) is hit


def test_case_insensitive_and_empty() -> None:
    assert PathMatcher([], ["*.JPG"]).match("/p/a.jpg")
    assert not PathMatcher(["*.JPG"]).match("/p/a.jpg")
    assert not PathMatcher([])
    assert not PathMatcher(["  "])


def test_could_contain_match() -> None:
    assert could_contain_match("/home", ["/home/u/docs"])
    assert could_contain_match("/home/u/docs/deep", ["/home/u/docs"])
    assert not could_contain_match("/srv", ["/home/u/docs"])
    assert could_contain_match("/srv", ["docs"])  # unanchored: anywhere


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("100", 100), ("7b", 7), ("1k", 1024), ("1K", 1024), ("2M", 2 << 20), ("2g", 2 << 30), ("1T", 1 << 40)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5M", "1MB", "1 M", "1x", "0x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_tag_file_specs() -> None:
    assert TagFile.parse(".nobackup") == TagFile(".nobackup", b"")
    assert TagFile.parse("T:a:b") == TagFile("T", b"a:b")  # the header may hold colons
    for bad in ("", ":hdr", "a/b", ".."):
        with pytest.raises(ValueError):
            TagFile.parse(bad)
    assert tag_files([], exclude_caches=True) == [TagFile("CACHEDIR.TAG", CACHEDIR_SIGNATURE.encode())]
    assert len(CACHEDIR_SIGNATURE) == 43


def test_tag_file_header_check(tmp_path: Path) -> None:
    warnings: list[str] = []
    tag = TagFile("CACHEDIR.TAG", CACHEDIR_SIGNATURE.encode())
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE.encode() + b"\nmore")
    assert tag.marks(str(tmp_path), warnings.append) and not warnings
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE.encode()[:-1])
    assert not tag.marks(str(tmp_path), warnings.append) and "too short" in warnings[-1]
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE.upper().encode())
    assert not tag.marks(str(tmp_path), warnings.append) and "invalid signature" in warnings[-1]
    (tmp_path / "CACHEDIR.TAG").unlink()
    os.mkfifo(tmp_path / "CACHEDIR.TAG")  # never blocks on a FIFO
    assert not tag.marks(str(tmp_path), warnings.append) and "not a regular file" in warnings[-1]


def test_files_from_readers(tmp_path: Path) -> None:
    f = tmp_path / "list"
    f.write_bytes(b"\xef\xbb\xbf# comment\n\n  a/b  \r\n#x\n  # also a comment\nc d\n\xff\n")
    assert read_files_from(str(f)) == ["a/b", "c d", os.fsdecode(b"\xff")]
    assert read_files_from_verbatim(str(f)) == ["# comment", "  a/b  ", "#x", "  # also a comment", "c d", "\udcff"]
    f.write_bytes("é/x\n".encode("utf-16"))
    assert read_files_from(str(f)) == ["é/x"]
    f.write_bytes(b"a\nb\0c\0")
    assert read_files_from_raw(str(f)) == ["a\nb", "c"]
    f.write_bytes(b"")
    assert read_files_from_raw(str(f)) == []
    for bad, why in ((b"a\0b", "trailing zero"), (b"a\0\0", "empty filename")):
        f.write_bytes(bad)
        with pytest.raises(ValueError, match=why):
            read_files_from_raw(str(f))


def test_expand_glob_like_go(tmp_path: Path) -> None:
    for rel in ("d1/a.txt", "d1/.h.txt", "d1/b.md", "d2/c.txt", "d2/sub/e.txt", "x*y"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    t = str(tmp_path)
    assert expand_glob(f"{t}/d*/*.txt") == [f"{t}/d1/.h.txt", f"{t}/d1/a.txt", f"{t}/d2/c.txt"]
    assert expand_glob(f"{t}/**/c.txt") == [f"{t}/d2/c.txt"]  # ** is *: one component, as in Go
    assert expand_glob(f"{t}/**/e.txt") == []
    assert expand_glob(f"{t}/d?/") == [f"{t}/d1", f"{t}/d2"]
    assert expand_glob(f"{t}/x\\*y") == [f"{t}/x*y"]  # an escaped wildcard is literal
    assert expand_glob(f"{t}/d1/[ab].*") == [f"{t}/d1/a.txt", f"{t}/d1/b.md"]
    assert expand_glob(f"{t}/nope*") == []
    assert expand_glob(f"{t}/d1/a.txt") == [f"{t}/d1/a.txt"] and expand_glob(f"{t}/gone") == []
    assert has_magic("a*") and has_magic("a[b]") and has_magic("a\\b") and not has_magic("/plain/path")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert expand_glob("d2/*.txt") == ["d2/c.txt"]  # relative in, relative out
    finally:
        os.chdir(cwd)
