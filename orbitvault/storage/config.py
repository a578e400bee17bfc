"""A storage node's configuration: a TOML file, overridden by environment variables, then flags.

Schema (every key optional except `capacity`)::

    name = "sat-a1"                   # label reported by NodeInfo, at most 64 bytes; default "node"
    satellite = "OV-11"               # satellite the node flies on (TLE name or NORAD number)
    plane = "1"                       # orbital plane label
    data_dir = "/var/lib/orbitvault"  # default: platformdirs user data dir / node / <name>
    capacity = "100GiB"               # bytes the node may use: an integer or "<number><unit>"
    listen = "127.0.0.1:0"            # gRPC address; port 0 picks a free port
    metrics_port = 0                  # Prometheus HTTP port; 0 = off
    peers = ["10.0.0.2:7400"]         # ShardStore addresses of the other nodes (for row repair)
    simulation = false                # mark a new store as a test/simulation store
    shutdown_grace_s = 30.0           # SIGTERM: how long in-flight puts may take to finish
    max_concurrent_puts = 4           # puts buffered at once (each holds up to one shard in memory)
    tls_ca = "pki/ca.crt"             # mTLS: the CA that signs every peer (`orbitvault pki init`)
    tls_cert = "pki/sat-a1.crt"       # this node's certificate (`orbitvault pki issue node sat-a1`)
    tls_key = "pki/sat-a1.key"        # ... and its key; the three go together
    insecure = false                  # plaintext gRPC, local development only; needed when no TLS is set
    [scrub]
    enabled_in_process = false        # run the scrubber inside `node serve`
    rate_mb_s = 0.0                   # verification rate limit in MB/s; 0 = unthrottled
    interval_s = 3600.0               # pause between scrub passes

Environment: ORBITVAULT_NODE_<KEY> (upper case; scrub keys as ORBITVAULT_NODE_SCRUB_<KEY>, peers
comma-separated, booleans as 1/0/true/false/yes/no). Unknown keys in the file are errors, so a typo
never silently falls back to a default; every error names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from orbitvault.errors import InvalidArgument
from orbitvault.settings import int_range as _int_range
from orbitvault.settings import parse_address, parse_size, read_toml
from orbitvault.settings import to_bool as _bool

ENV_PREFIX = "ORBITVAULT_NODE_"
MAX_NAME_BYTES = 64
DEFAULT_NAME = "node"
DEFAULT_LISTEN = "127.0.0.1:0"


@dataclass(frozen=True, slots=True)
class ScrubConfig:
    """How the scrubber runs when `node serve` hosts it (a separate `node scrub` reads the same keys)."""

    enabled_in_process: bool = False
    rate_mb_s: float = 0.0
    interval_s: float = 3600.0

    @property
    def rate_bytes_per_s(self) -> int:
        """The throttle in bytes/s; 0 means unthrottled."""
        return int(self.rate_mb_s * 1_000_000)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything `orbitvault node serve` needs; build with `load_node_config`."""

    capacity: int
    data_dir: Path
    name: str = DEFAULT_NAME
    satellite: str = ""
    plane: str = ""
    listen: str = DEFAULT_LISTEN
    metrics_port: int = 0
    peers: tuple[str, ...] = ()
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    simulation: bool = False
    shutdown_grace_s: float = 30.0
    max_concurrent_puts: int = 4
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False


_TOP_KEYS = {f.name for f in dataclasses.fields(NodeConfig)}
_SCRUB_KEYS = {f.name for f in dataclasses.fields(ScrubConfig)}


def default_data_dir(name: str) -> Path:
    """Where a node keeps its store when the config does not say: the user's data dir, per node name."""
    return platformdirs.user_data_path("orbitvault", appauthor=False) / "node" / name


def load_node_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """File, then environment (`env`, default os.environ), then `overrides` (flags; None = not given).

    Keys in `overrides` are the file's keys; scrub keys are written "scrub.rate_mb_s".
    """
    raw: dict[str, tuple[Any, str]] = {}  # key ("scrub.x" for scrub keys) -> (value, source)
    if path is not None:
        _read_file(Path(path), raw)
    _read_env(os.environ if env is None else env, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            _check_key(key, "flags")
            raw[key] = (value, f"flag --{key.replace('_', '-').replace('.', '-')}")
    return _build(raw)


# --- internals -------------------------------------------------------------------------------------


def _check_key(key: str, source: str) -> None:
    scrub, _, sub = key.partition(".")
    ok = (key in _TOP_KEYS and key != "scrub") if not sub else (scrub == "scrub" and sub in _SCRUB_KEYS)
    if not ok:
        raise InvalidArgument(f"unknown node setting {key!r} in {source}; known: {', '.join(_known_keys())}")


def _known_keys() -> list[str]:
    return sorted([k for k in _TOP_KEYS if k != "scrub"] + [f"scrub.{k}" for k in _SCRUB_KEYS])


def _read_file(path: Path, raw: dict[str, tuple[Any, str]]) -> None:
    data = read_toml(path, "node")
    source = str(path)
    for key, value in data.items():
        if key == "scrub":
            if not isinstance(value, dict):
                raise InvalidArgument(f"scrub in {source} must be a table ([scrub])")
            for sub, v in value.items():
                _check_key(f"scrub.{sub}", source)
                raw[f"scrub.{sub}"] = (v, source)
        else:
            _check_key(key, source)
            raw[key] = (value, source)


def _read_env(env: Mapping[str, str], raw: dict[str, tuple[Any, str]]) -> None:
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        key = f"scrub.{name[len('scrub_') :]}" if name.startswith("scrub_") else name
        _check_key(key, f"environment variable {var}")
        raw[key] = (value, f"environment variable {var}")


def _build(raw: dict[str, tuple[Any, str]]) -> NodeConfig:
    def get(key: str, conv: Any, default: Any) -> Any:
        if key not in raw:
            return default
        value, source = raw[key]
        return conv(value, f"{key} (from {source})")

    if "capacity" not in raw:
        raise InvalidArgument(
            f'capacity is required: set capacity = "100GiB" in the node config, {ENV_PREFIX}CAPACITY, or --capacity'
        )
    name = get("name", _name, DEFAULT_NAME)
    scrub = ScrubConfig(
        enabled_in_process=get("scrub.enabled_in_process", _bool, False),
        rate_mb_s=get("scrub.rate_mb_s", _number(minimum=0.0, strict=False), 0.0),
        interval_s=get("scrub.interval_s", _number(minimum=0.0, strict=True), 3600.0),
    )
    return NodeConfig(
        capacity=get("capacity", parse_size, None),
        data_dir=get("data_dir", _path, None) or default_data_dir(name),
        name=name,
        satellite=get("satellite", _label, ""),
        plane=get("plane", _label, ""),
        listen=get("listen", lambda v, w: parse_address(v, w, allow_port_zero=True), DEFAULT_LISTEN),
        metrics_port=get("metrics_port", _port, 0),
        peers=get("peers", _peers, ()),
        scrub=scrub,
        simulation=get("simulation", _bool, False),
        shutdown_grace_s=get("shutdown_grace_s", _number(minimum=0.0, strict=False), 30.0),
        max_concurrent_puts=get("max_concurrent_puts", _int_range(1, 256), 4),
        **check_tls_settings({k: get(k, _path, None) for k in TLS_KEYS}, get("insecure", _bool, False), "node"),
    )


TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")


def check_tls_settings(files: dict[str, Path | None], insecure: bool, what: str) -> dict[str, Any]:
    """The TLS keys of a node or gateway config: all three files or none, and not with insecure.

    Whether a server may start without any (only with insecure) is decided when it binds, so
    configs that never serve (tools, tests of other keys) load without TLS.
    """
    given = [k for k, v in files.items() if v is not None]
    if given and len(given) != len(files):
        missing = ", ".join(k for k in files if files[k] is None)
        raise InvalidArgument(f"{what} TLS needs tls_ca, tls_cert and tls_key together; missing: {missing}")
    if given and insecure:
        raise InvalidArgument(f"{what} config sets TLS files and insecure = true; drop one")
    return {**files, "insecure": insecure}


def _name(value: Any, what: str) -> str:
    text = _label(value, what)
    if not text:
        raise InvalidArgument(f"{what} must not be empty")
    if "/" in text or "\\" in text or text in (".", ".."):
        raise InvalidArgument(f"{what} {text!r} must not contain path separators (it names the default data dir)")
    return text


def _label(value: Any, what: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a string, got {value!r}")
    text = str(value).strip()
    if len(text.encode()) > MAX_NAME_BYTES or any(ord(c) < 32 for c in text):
        raise InvalidArgument(f"{what} must be printable and at most {MAX_NAME_BYTES} bytes")
    return text


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise InvalidArgument(f"{what} must be a directory path, got {value!r}")
    return Path(value).expanduser()


def _number(*, minimum: float, strict: bool) -> Any:
    def conv(value: Any, what: str) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            n = float(value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what} must be a number, got {value!r}") from None
        if not math.isfinite(n) or n < minimum or (strict and n == minimum):
            raise InvalidArgument(
                f"{what} must be {'greater than' if strict else 'at least'} {minimum:g}, got {value!r}"
            )
        return n

    return conv


def _port(value: Any, what: str) -> int:
    return _int_range(0, 65535)(value, what)


def _peers(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [p for p in (s.strip() for s in value.split(",")) if p]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InvalidArgument(f'{what} must be a list of "host:port" addresses, got {value!r}')
    return tuple(parse_address(p, f"{what} entry", allow_port_zero=False) for p in items)
