from __future__ import annotations

import pytest

from orbitvault.client.filters import PathMatcher, could_contain_match


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
