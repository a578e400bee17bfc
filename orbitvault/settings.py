"""Parsing of configuration values, shared by every role's config (node, gateway, REST, client).

Each role reads a TOML file, then `ORBITVAULT_<ROLE>_<KEY>` environment variables, then flags;
values arrive as TOML types or strings and go through these converters, which name the setting and
where it came from (`what`) in every error.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from orbitvault.errors import InvalidArgument

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_size(value: Any, what: str = "size") -> int:
    """Bytes from an integer or a string such as "100GiB", "1.5 TB", "4096"."""
    if isinstance(value, bool):
        raise InvalidArgument(f'{what} must be a number of bytes or a size such as "100GiB", got {value!r}')
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise InvalidArgument(
                f"{what} {value!r} is not a size; use bytes or a number with one of "
                "B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB"
            )
        n = math.floor(float(m.group(1)) * _UNITS[unit])
    else:
        raise InvalidArgument(f'{what} must be a number of bytes or a size such as "100GiB", got {value!r}')
    if n <= 0:
        raise InvalidArgument(f"{what} must be positive, got {value!r}")
    return n


def parse_address(value: Any, what: str, *, allow_port_zero: bool) -> str:
    """Check a "host:port" address ("[v6]:port" for IPv6); returns it unchanged."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f'{what} must be an address "host:port", got {value!r}')
    value = value.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f'{what} {value!r} must be "host:port" (e.g. "127.0.0.1:7400")')
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise InvalidArgument(f'{what} {value!r}: write IPv6 hosts in brackets, e.g. "[::1]:7400"')
    lo = 0 if allow_port_zero else 1
    if not lo <= int(port) <= 65535:
        raise InvalidArgument(f"{what} {value!r}: port must be {lo}..65535")
    return value


def to_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidArgument(f"{what} must be true or false, got {value!r}")


def positive(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        n = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(n) or n <= 0:
        raise InvalidArgument(f"{what} must be greater than 0, got {value!r}")
    return n


def int_range(lo: int, hi: int) -> Any:
    """A converter accepting integers lo..hi (not floats or booleans)."""

    def conv(value: Any, what: str) -> int:
        try:
            if isinstance(value, bool | float):
                raise ValueError
            n = int(value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what} must be an integer, got {value!r}") from None
        if not lo <= n <= hi:
            raise InvalidArgument(f"{what} must be {lo}..{hi}, got {n}")
        return n

    return conv


def size_or_zero(value: Any, what: str) -> int:
    """A size, or 0 (also written "0" or "") meaning "the default" or "none"."""
    if value in (0, "0", ""):
        return 0
    return parse_size(value, what)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A role's config file as a table; unreadable or malformed files name the file (`what` config)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} config {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{what} config {path} is not valid TOML: {exc}") from None
