"""The gateway's configuration: a TOML file, overridden by environment variables, then flags.

Schema (every key optional)::

    state_dir = "/var/lib/orbitvault/gateway"  # catalog (LMDB); default: platformdirs user data dir / gateway
    listen = "127.0.0.1:7300"         # ObjectStore gRPC address; port 0 picks a free port
    nodes = ["10.0.0.1:7400"]         # ShardStore addresses of the storage nodes
    master_key_file = "/etc/orbitvault/master.key"   # 32 random bytes as hex (`gateway keygen`)
    master_key_passphrase = "..."     # or a passphrase through Argon2id (better given by environment)
    master_key_salt = "..."           # with a passphrase: at least 16 bytes, fixed for the gateway's life
    node_grace_s = 3600.0             # a node not seen for this long is gone; its shards are rebuilt
    repair_interval_s = 60.0          # pause between repair sweeps (the server's loop)
    checkpoint_every = 1000           # catalog changes between checkpoints into orbit
    checkpoint_interval_s = 900.0     # ... or this long, whichever comes first
    pending_ttl_s = 3600.0            # an unfinished upload older than this is garbage
    max_put_concurrency = 4           # puts processed at once (each holds at most ~2 stripes)
    io_threads = 32                   # threads for concurrent node I/O
    node_refresh_s = 10.0             # how stale node status may get before it is asked again
    metrics_port = 0                  # Prometheus HTTP port; 0 = off
    fragment_size = "64KiB"           # default storage class: fragment size
    stripe_size = 0                   # default stripe size; 0 = largest multiple of the row <= 17 MiB
    segment_size = 0                  # encryption segment; 0 = one erasure row minus the tag (no copy to code it)
    tls_ca = "pki/ca.crt"             # mTLS for clients and for the calls to nodes (`orbitvault pki`)
    tls_cert = "pki/gw.crt"           # the gateway's certificate (`orbitvault pki issue gateway gw`)
    tls_key = "pki/gw.key"            # ... and its key; the three go together
    insecure = false                  # plaintext gRPC both ways, local development only
    audit_log = "<state_dir>/audit.log"   # the hash-chained audit log (JSON lines)
    mfa_session_s = 300.0             # a verified TOTP code opens an MFA session this long (0: code per call)
    rate_limit_per_s = 2000.0         # per-tenant requests per second (token bucket); 0 = unlimited
    rate_limit_burst = 4000           # ... and its bucket size
    ids_window_s = 60.0               # intrusion detection: the window bursts are counted in
    ids_auth_failures = 20            # failed authentications per source or key per window -> alert
    ids_mass_deletes = 100            # deletes per tenant per window -> alert
    # Scheduled mode (issue 6): shards spooled on the ground, uplinked in contact windows.
    mode = "direct"                   # "direct" | "scheduled": PutObject's default (a request may say)
    constellation = "sats.toml"       # satellites, planes, stations (orbitvault.orbit.config); default:
                                      # the shipped sample; nodes map to satellites by NodeInfo.satellite
    contact_plan = "plan.rc"          # ION or HDTN contact plan file; default: predicted from the
                                      # constellation's TLEs, plan_horizon_s ahead, extended as time goes
    plan_horizon_s = 172800.0         # how far ahead a predicted plan reaches
    clock = "wall"                    # "wall" | "simulated": simulated time jumps from event to event
    sim_start = "2026-11-01T00:00:00Z"  # simulated clock's start; default: the contact plan's epoch
                                      # (predicted plans: the current time)
    spool_dir = "<state_dir>/spool"   # the ground spool: shards waiting for uplink windows
    restore_dir = "<state_dir>/restore"  # RestoreObject's staging area (shards downlinked)
    restore_keep_s = 86400.0          # how long a restored copy stays readable (RestoreObject may say)

Environment: ORBITVAULT_GATEWAY_<KEY> (upper case; nodes comma-separated). Unknown keys are errors,
so a typo never silently falls back to a default; every error names the key and its source.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.timeutil import parse_time
from orbitvault.settings import int_range as _int_range
from orbitvault.settings import parse_address, parse_size, read_toml
from orbitvault.settings import positive as _positive
from orbitvault.settings import size_or_zero as _size_or_zero
from orbitvault.settings import to_bool as _bool
from orbitvault.storage.config import TLS_KEYS, check_tls_settings

ENV_PREFIX = "ORBITVAULT_GATEWAY_"
DEFAULT_LISTEN = "127.0.0.1:7300"
KiB = 1024
MiB = 1024 * KiB
# Bounded memory (a put holds at most 2 stripes); 17 MiB so that a backup client's 16 MiB pack and
# its header travel as one stripe, not a full stripe and a sliver with k+m shard commits of its own.
MAX_GATEWAY_STRIPE = 17 * MiB
DEFAULT_SEGMENT = 0  # one erasure row: see pipeline.plain_per_stripe
MIN_SEGMENT = 256
MODES = ("direct", "scheduled")
CLOCKS = ("wall", "simulated")


def default_state_dir() -> Path:
    return platformdirs.user_data_path("orbitvault", appauthor=False) / "gateway"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs; build with `load_gateway_config` (or directly in tests)."""

    state_dir: Path
    listen: str = DEFAULT_LISTEN
    nodes: tuple[str, ...] = ()
    master_key_file: Path | None = None
    master_key_passphrase: str | None = dataclasses.field(default=None, repr=False)
    master_key_salt: str | None = None
    node_grace_s: float = 3600.0
    repair_interval_s: float = 60.0
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 900.0
    pending_ttl_s: float = 3600.0
    max_put_concurrency: int = 4
    io_threads: int = 32
    node_refresh_s: float = 10.0
    metrics_port: int = 0
    fragment_size: int = 64 * KiB
    stripe_size: int = 0
    segment_size: int = DEFAULT_SEGMENT
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    audit_log: Path | None = None
    mfa_session_s: float = 300.0
    rate_limit_per_s: float = 2000.0
    rate_limit_burst: int = 4000
    ids_window_s: float = 60.0
    ids_auth_failures: int = 20
    ids_mass_deletes: int = 100
    # The `[rest]` table: restic's REST endpoint served beside gRPC (orbitvault.rest.config reads it).
    rest: Mapping[str, Any] | None = None
    mode: str = "direct"
    constellation: Path | None = None
    contact_plan: Path | None = None
    plan_horizon_s: float = 172800.0
    clock: str = "wall"
    sim_start: float | None = None  # POSIX seconds (the file gives ISO 8601)
    spool_dir: Path | None = None
    restore_dir: Path | None = None
    restore_keep_s: float = 86400.0

    @property
    def spool_path(self) -> Path:
        return Path(self.spool_dir) if self.spool_dir is not None else Path(self.state_dir) / "spool"

    @property
    def restore_path(self) -> Path:
        return Path(self.restore_dir) if self.restore_dir is not None else Path(self.state_dir) / "restore"

    @property
    def audit_path(self) -> Path:
        """Where the audit log lives (default: beside the catalog)."""
        return Path(self.audit_log) if self.audit_log is not None else Path(self.state_dir) / "audit.log"

    def __post_init__(self) -> None:
        if self.segment_size and not MIN_SEGMENT <= self.segment_size <= 16 * MiB:
            raise InvalidArgument(
                f"segment_size must be 0 (one row) or {MIN_SEGMENT}..{16 * MiB} bytes, got {self.segment_size}"
            )
        if self.stripe_size and self.stripe_size > MAX_GATEWAY_STRIPE:
            raise InvalidArgument(f"stripe_size must be at most {MAX_GATEWAY_STRIPE} bytes, got {self.stripe_size}")
        if self.master_key_passphrase is not None and (
            self.master_key_salt is None or len(self.master_key_salt.encode()) < 16
        ):
            raise InvalidArgument(
                "master_key_passphrase needs master_key_salt of at least 16 bytes "
                f"(set it in the config or {ENV_PREFIX}MASTER_KEY_SALT; keep it fixed)"
            )
        if self.master_key_file is not None and self.master_key_passphrase is not None:
            raise InvalidArgument("give either master_key_file or master_key_passphrase, not both")
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.clock not in CLOCKS:
            raise InvalidArgument(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.sim_start is not None and self.clock != "simulated":
            raise InvalidArgument('sim_start is only meaningful with clock = "simulated"')


_KEYS = {f.name for f in dataclasses.fields(GatewayConfig)}


def load_gateway_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """File, then environment (`env`, default os.environ), then `overrides` (flags; None = not given)."""
    raw: dict[str, tuple[Any, str]] = {}
    if path is not None:
        _read_file(Path(path), raw)
    for var, value in (os.environ if env is None else env).items():
        if var.startswith(ENV_PREFIX):
            key = var[len(ENV_PREFIX) :].lower()
            _check_key(key, f"environment variable {var}")
            raw[key] = (value, f"environment variable {var}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _check_key(key, "flags")
            raw[key] = (value, f"flag --{key.replace('_', '-')}")
    return _build(raw)


def _table(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what} must be a TOML table ([rest] ...), got {value!r}")
    return dict(value)


def _check_key(key: str, source: str) -> None:
    if key not in _KEYS:
        raise InvalidArgument(f"unknown gateway setting {key!r} in {source}; known: {', '.join(sorted(_KEYS))}")


def _read_file(path: Path, raw: dict[str, tuple[Any, str]]) -> None:
    data = read_toml(path, "gateway")
    for key, value in data.items():
        _check_key(key, str(path))
        raw[key] = (value, str(path))


def _build(raw: dict[str, tuple[Any, str]]) -> GatewayConfig:
    def get(key: str, conv: Any, default: Any) -> Any:
        if key not in raw:
            return default
        value, source = raw[key]
        return conv(value, f"{key} (from {source})")

    return GatewayConfig(
        state_dir=get("state_dir", _path, None) or default_state_dir(),
        listen=get("listen", lambda v, w: parse_address(v, w, allow_port_zero=True), DEFAULT_LISTEN),
        nodes=get("nodes", _addresses, ()),
        master_key_file=get("master_key_file", _path, None),
        master_key_passphrase=get("master_key_passphrase", _secret, None),
        master_key_salt=get("master_key_salt", _salt, None),
        node_grace_s=get("node_grace_s", _positive, 3600.0),
        repair_interval_s=get("repair_interval_s", _positive, 60.0),
        checkpoint_every=get("checkpoint_every", _int_range(1, 10**9), 1000),
        checkpoint_interval_s=get("checkpoint_interval_s", _positive, 900.0),
        pending_ttl_s=get("pending_ttl_s", _positive, 3600.0),
        max_put_concurrency=get("max_put_concurrency", _int_range(1, 256), 4),
        io_threads=get("io_threads", _int_range(2, 1024), 32),
        node_refresh_s=get("node_refresh_s", _positive, 10.0),
        metrics_port=get("metrics_port", _int_range(0, 65535), 0),
        fragment_size=get("fragment_size", parse_size, 64 * KiB),
        stripe_size=get("stripe_size", _size_or_zero, 0),
        segment_size=get("segment_size", _size_or_zero, DEFAULT_SEGMENT),
        audit_log=get("audit_log", _path, None),
        mfa_session_s=get("mfa_session_s", _non_negative, 300.0),
        rate_limit_per_s=get("rate_limit_per_s", _non_negative, 2000.0),
        rate_limit_burst=get("rate_limit_burst", _int_range(1, 10**9), 4000),
        ids_window_s=get("ids_window_s", _positive, 60.0),
        ids_auth_failures=get("ids_auth_failures", _int_range(1, 10**9), 20),
        ids_mass_deletes=get("ids_mass_deletes", _int_range(1, 10**9), 100),
        rest=get("rest", _table, None),
        mode=get("mode", _choice(MODES), "direct"),
        constellation=get("constellation", _path, None),
        contact_plan=get("contact_plan", _path, None),
        plan_horizon_s=get("plan_horizon_s", _positive, 172800.0),
        clock=get("clock", _choice(CLOCKS), "wall"),
        sim_start=get("sim_start", _time, None),
        spool_dir=get("spool_dir", _path, None),
        restore_dir=get("restore_dir", _path, None),
        restore_keep_s=get("restore_keep_s", _positive, 86400.0),
        **check_tls_settings({k: get(k, _path, None) for k in TLS_KEYS}, get("insecure", _bool, False), "gateway"),
    )


def _choice(options: tuple[str, ...]) -> Any:
    def conv(value: Any, what: str) -> str:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise InvalidArgument(f"{what} must be one of {', '.join(options)}, got {value!r}")
        return value.strip().lower()

    return conv


def _time(value: Any, what: str) -> float:
    """An ISO 8601 time (TOML datetimes too) as POSIX seconds."""
    if isinstance(value, datetime):
        value = value.isoformat()
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be an ISO 8601 time such as 2026-11-01T00:00:00Z, got {value!r}")
    try:
        return parse_time(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def _non_negative(value: Any, what: str) -> float:
    if value in (0, "0"):
        return 0.0
    return _positive(value, what)


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise InvalidArgument(f"{what} must be a path, got {value!r}")
    return Path(value).expanduser()


def _secret(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string")
    return value


def _salt(value: Any, what: str) -> str:
    text = _secret(value, what)
    if len(text.encode()) < 16:
        raise InvalidArgument(f"{what} must be at least 16 bytes")
    return text


def _addresses(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [p for p in (s.strip() for s in value.split(",")) if p]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InvalidArgument(f'{what} must be a list of "host:port" addresses, got {value!r}')
    out = tuple(parse_address(p, f"{what} entry", allow_port_zero=False) for p in items)
    if len(set(out)) != len(out):
        raise InvalidArgument(f"{what} lists a node address twice")
    return out
