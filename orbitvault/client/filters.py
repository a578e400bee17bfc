"""restic's path patterns, for backup --exclude/--iexclude and restore/ls --include/--exclude.

A pattern is a glob over path components: `*`, `?` and `[...]` stay within one component, `**`
spans any number of them. A pattern starting with "/" is anchored at the root; any other pattern
may match anywhere in the path. As in restic, a pattern matches a path when it matches a run of
its components, so matching a directory also matches everything below it.

Patterns are compiled to one regular expression each; matching costs one `re` call per pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path


def _glob_component(part: str) -> str:
    out = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 2 if i + 1 < len(part) and part[i + 1] in "!^" else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = part[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < len(part):
            i += 1
            out.append(re.escape(part[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    pattern = pattern.strip()
    anchored = pattern.startswith("/")
    parts = [p for p in pattern.split("/") if p and p != "."]
    body = []
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            body.append("(?:.*)" if last else "(?:.*/)?")
            continue
        body.append(_glob_component(part) + ("" if last else "/"))
    regex = ("^/" if anchored else "^(?:.*/)?") + "".join(body) + "(?:/.*)?$"
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


class PathMatcher:
    """Any-of matcher over absolute, '/'-separated paths."""

    def __init__(self, patterns: Iterable[str] = (), ignore_case_patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in patterns if p.strip()]
        self.ipatterns = [p for p in ignore_case_patterns if p.strip()]
        self._res = [compile_pattern(p) for p in self.patterns] + [
            compile_pattern(p, ignore_case=True) for p in self.ipatterns
        ]

    def __bool__(self) -> bool:
        return bool(self._res)

    def match(self, path: str) -> bool:
        return any(r.match(path) for r in self._res)


def read_pattern_files(files: Iterable[str]) -> list[str]:
    """Patterns from --exclude-file: one per line, '#' comments and blank lines ignored."""
    out = []
    for f in files:
        for line in Path(f).read_text().splitlines():
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(s)
    return out


def could_contain_match(dir_path: str, patterns: Iterable[str]) -> bool:
    """Whether anything below `dir_path` might match one of `patterns` (restore --include walk).

    Unanchored patterns can match anywhere, so only anchored ones prune the walk.
    """
    dparts = [p for p in dir_path.split("/") if p]
    for pat in patterns:
        if not pat.startswith("/"):
            return True
        pparts = [p for p in pat.split("/") if p]
        ok = True
        for k, dp in enumerate(dparts):
            if k >= len(pparts):
                break  # the pattern matched a parent: everything below matches
            if pparts[k] == "**":
                break
            if not re.fullmatch(_glob_component(pparts[k]), dp, re.DOTALL):
                ok = False
                break
        if ok:
            return True
    return False
