"""restic's path patterns, for backup --exclude/--iexclude and restore/ls --include/--exclude,
and backup's other selection rules: --files-from lists, tag files, --exclude-larger-than sizes.

A pattern is a glob over path components: `*`, `?` and `[...]` stay within one component, `**`
spans any number of them. A pattern starting with "/" is anchored at the root; any other pattern
may match anywhere in the path. As in restic, a pattern matches a path when it matches a run of
its components, so matching a directory also matches everything below it.

Patterns are compiled to one regular expression each; matching costs one `re` call per pattern.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orbitvault.client.tree import name_key


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
            start = i + 2 if i + 1 < len(part) and part[i + 1] in "!^" else i + 1
            if start < len(part) and part[start] == "]":
                start += 1  # "[]...]": a leading "]" is a member, not the end (as in Go and fnmatch)
            j = part.find("]", start)
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


# --- backup --files-from, --files-from-verbatim, --files-from-raw -----------------------------------


def _read_list(path: str) -> bytes:
    """A list file's bytes ("-": standard input), without a UTF-8 byte order mark."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def _lines(path: str) -> list[str]:
    """Lines split on "\\n" only (a trailing "\\r" dropped), like Go's bufio.Scanner; names that
    are not UTF-8 survive as surrogate escapes. UTF-16 lists (with a BOM) are decoded as such."""
    data = _read_list(path)
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    lines = (data.decode("utf-16") if utf16 else os.fsdecode(data)).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_files_from(path: str) -> list[str]:
    """--files-from: one path or glob per line, trimmed; blank lines and "#" comments skipped."""
    return [s for line in _lines(path) if (s := line.strip()) and not s.startswith("#")]


def read_files_from_verbatim(path: str) -> list[str]:
    """--files-from-verbatim: every non-empty line is a path, spaces and "#" included."""
    return [line for line in _lines(path) if line]


def read_files_from_raw(path: str) -> list[str]:
    """--files-from-raw: NUL-terminated names (`find -print0`), for names holding newlines."""
    data = _read_list(path)
    if not data:
        return []
    if not data.endswith(b"\0"):
        raise ValueError("trailing zero byte missing")
    names = data[:-1].split(b"\0")
    if any(not n for n in names):
        raise ValueError("empty filename in listing")
    return [os.fsdecode(n) for n in names]


_MAGIC = re.compile(r"[*?[\\]")


def has_magic(pattern: str) -> bool:
    """Whether a --files-from line is a glob (Go's filepath.Glob: `*`, `?`, `[` or a `\\` escape)."""
    return _MAGIC.search(pattern) is not None


def expand_glob(pattern: str) -> list[str]:
    """Go's filepath.Glob, which restic applies to --files-from lines.

    Wildcards stay within one path component (no `**`) and match hidden names too, unlike a
    shell; matches are sorted per directory. A path without wildcards is returned if it exists.
    """
    if not has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    if len(pattern) > 1:
        pattern = pattern.rstrip("/") or "/"
    cut = pattern.rfind("/")
    head, tail = pattern[: cut + 1], pattern[cut + 1 :]
    head = "." if not head else head if head == "/" else head[:-1]
    dirs = expand_glob(head) if has_magic(head) else [head]
    try:
        rx = re.compile(_glob_component(tail), re.DOTALL)
    except re.error as e:
        raise ValueError(f"bad pattern {pattern!r}: {e}") from None
    out = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d), key=name_key)
        except OSError:  # not a directory, unreadable: no matches there (as Go)
            continue
        out += [n if d == "." else os.path.join(d, n) for n in names if rx.fullmatch(n)]
    return out


# --- backup --exclude-if-present, --exclude-caches, --exclude-larger-than ---------------------------

CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"  # bford.info/cachedir


@dataclass(frozen=True, slots=True)
class TagFile:
    """--exclude-if-present NAME[:HEADER]: a directory holding NAME (whose content starts with
    HEADER, when one is given) is backed up with NAME alone, so restoring it shows why it is empty."""

    name: str
    header: bytes = b""

    @classmethod
    def parse(cls, spec: str) -> TagFile:
        name, _sep, header = spec.partition(":")
        if not name:
            raise ValueError(f"no file name in {spec!r} (use NAME or NAME:HEADER)")
        if "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a file name")
        return cls(name, os.fsencode(header))

    def marks(self, directory: str, warn: Callable[[str], None]) -> bool:
        """Whether `directory`, whose listing holds NAME, is tagged. A tag file with the wrong
        header is reported, not obeyed: the directory is backed up."""
        if not self.header:
            return True
        path = os.path.join(directory, self.name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # never hangs on a FIFO
        except OSError as e:
            warn(f"could not open exclusion tagfile {path}: {e.strerror}")
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                warn(f"exclusion tagfile {path} is not a regular file")
                return False
            head = b""
            while len(head) < len(self.header):
                more = os.read(fd, len(self.header) - len(head))
                if not more:
                    break
                head += more
        except OSError as e:
            warn(f"could not read signature from exclusion tagfile {path}: {e.strerror}")
            return False
        finally:
            os.close(fd)
        if len(head) < len(self.header):
            warn(f"invalid (too short) signature in exclusion tagfile {path}")
            return False
        if head != self.header:
            warn(f"invalid signature in exclusion tagfile {path}")
            return False
        return True


def tag_files(specs: Iterable[str], *, exclude_caches: bool = False) -> list[TagFile]:
    """The tag files of --exclude-if-present, plus CACHEDIR.TAG for --exclude-caches (as restic)."""
    out = [TagFile.parse(s) for s in specs]
    if exclude_caches:
        out.append(TagFile(CACHEDIR_TAG, CACHEDIR_SIGNATURE.encode()))
    return out


_SIZE = re.compile(r"(\d+)([bkmgt]?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """restic's sizes: an integer with an optional binary suffix, b/k/m/g/t (1M = 1048576)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad size {text!r} (use a number with an optional suffix k, m, g or t, e.g. 500M)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]
