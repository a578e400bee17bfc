"""Settings of the restic REST endpoint: a `[rest]` TOML table, environment variables, then flags.

Schema (every key optional)::

    [rest]
    listen = "127.0.0.1:8000"        # HTTP(S) address; port 0 picks a free port (rest-server's default port)
    tls_cert = "/etc/orbitvault/gateway.crt"   # PEM certificate chain; with tls_key: HTTPS only
    tls_key = "/etc/orbitvault/gateway.key"    # PEM private key (the gateway's certificate pair)
    append_only = false              # every DELETE refused (403) except of locks, whatever the key
    no_verify_upload = false         # skip the SHA-256(body) == name check (rest-server's flag)
    max_repo_size = 0                # quota per repository in bytes ("500GiB"); 0 = none
    max_object_size = "1GiB"         # largest single upload (restic packs are <= 128 MiB)
    access_log = ""                  # combined log format: a file path, "-" for stderr, "" = off
    prometheus = true                # GET /metrics (rest-server's --prometheus)
    prometheus_no_auth = false       # /metrics without credentials (all tenants); else own tenant only
    max_connections = 64             # connections served at once; more get 503
    idle_timeout_s = 120.0           # a connection silent this long is closed
    insecure = false                 # plaintext HTTP on a non-loopback address (passwords in clear!)

TLS uses the gateway's own certificate and key unless the table names others
(`load_rest_settings(..., gateway=config)`), so restic verifies the endpoint with the
constellation's CA (`restic --cacert ca.crt`). Plaintext is served on loopback addresses only,
unless `insecure` (taken from the gateway's `insecure` by default) says otherwise: basic auth
sends the API key with every request.

Environment: ORBITVAULT_REST_<KEY> (upper case, booleans as 1/0/true/false/yes/no). Unknown keys
are errors, and every error names the key and where it came from, as in the gateway's config.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orbitvault.errors import InvalidArgument
from orbitvault.settings import int_range as _int_range
from orbitvault.settings import parse_address, parse_size
from orbitvault.settings import positive as _positive
from orbitvault.settings import size_or_zero as _size_or_zero
from orbitvault.settings import to_bool as _bool

ENV_PREFIX = "ORBITVAULT_REST_"
DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_MAX_OBJECT = 2**30


@dataclass(frozen=True, slots=True)
class RestSettings:
    """What `serve_rest` needs besides the gateway; build directly or with `load_rest_settings`."""

    listen: str = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None
    append_only: bool = False
    no_verify_upload: bool = False
    max_repo_size: int = 0
    max_object_size: int = DEFAULT_MAX_OBJECT
    access_log: str = ""
    prometheus: bool = True
    prometheus_no_auth: bool = False
    max_connections: int = 64
    idle_timeout_s: float = 120.0
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("rest: give both tls_cert and tls_key, or neither")
        if self.max_repo_size < 0:
            raise InvalidArgument(f"rest: max_repo_size must be >= 0 bytes, got {self.max_repo_size}")
        if self.max_object_size <= 0:
            raise InvalidArgument(f"rest: max_object_size must be > 0 bytes, got {self.max_object_size}")
        if not 1 <= self.max_connections <= 10_000:
            raise InvalidArgument(f"rest: max_connections must be 1..10000, got {self.max_connections}")
        if not (math.isfinite(self.idle_timeout_s) and self.idle_timeout_s > 0):
            raise InvalidArgument(f"rest: idle_timeout_s must be > 0, got {self.idle_timeout_s}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check_plaintext(self) -> None:
        """Refuse plaintext on a reachable address unless `insecure` (called when binding)."""
        if self.tls or self.insecure:
            return
        host = self.listen.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise InvalidArgument(
                f"rest: listening on {self.listen} without TLS would send API keys in clear: set tls_cert and "
                "tls_key (the gateway's by default), or insecure = true for a trusted network"
            )


_KEYS = {f.name for f in dataclasses.fields(RestSettings)}


def load_rest_settings(
    table: Mapping[str, Any] | None = None,
    *,
    source: str = "[rest]",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    gateway: Any = None,
) -> RestSettings:
    """`table` (the parsed `[rest]` section), then `env` (default os.environ), then `overrides`
    (flags; None = not given). `source` names the table in error messages (e.g. the file).
    `gateway` (a GatewayConfig) supplies tls_cert, tls_key and insecure where none are given."""
    raw: dict[str, tuple[Any, str]] = {}
    if gateway is not None:
        if getattr(gateway, "tls_cert", None) is not None and getattr(gateway, "tls_key", None) is not None:
            raw["tls_cert"] = (gateway.tls_cert, "the gateway's tls_cert")
            raw["tls_key"] = (gateway.tls_key, "the gateway's tls_key")
        raw["insecure"] = (bool(getattr(gateway, "insecure", False)), "the gateway's insecure")
    for key, value in (table or {}).items():
        _check_key(key, source)
        raw[key] = (value, source)
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


def _check_key(key: str, source: str) -> None:
    if key not in _KEYS:
        raise InvalidArgument(f"unknown rest setting {key!r} in {source}; known: {', '.join(sorted(_KEYS))}")


def _build(raw: dict[str, tuple[Any, str]]) -> RestSettings:
    def get(key: str, conv: Any, default: Any) -> Any:
        if key not in raw:
            return default
        value, source = raw[key]
        return conv(value, f"{key} (from {source})")

    d = RestSettings()
    return RestSettings(
        listen=get("listen", lambda v, w: parse_address(v, w, allow_port_zero=True), d.listen),
        tls_cert=get("tls_cert", _path, None),
        tls_key=get("tls_key", _path, None),
        append_only=get("append_only", _bool, d.append_only),
        no_verify_upload=get("no_verify_upload", _bool, d.no_verify_upload),
        max_repo_size=get("max_repo_size", _size_or_zero, d.max_repo_size),
        max_object_size=get("max_object_size", parse_size, d.max_object_size),
        access_log=get("access_log", _log_target, d.access_log),
        prometheus=get("prometheus", _bool, d.prometheus),
        prometheus_no_auth=get("prometheus_no_auth", _bool, d.prometheus_no_auth),
        max_connections=get("max_connections", _int_range(1, 10_000), d.max_connections),
        idle_timeout_s=get("idle_timeout_s", _positive, d.idle_timeout_s),
        insecure=get("insecure", _bool, d.insecure),
    )


def _path(value: Any, what: str) -> Path | None:
    if value in ("", None):
        return None
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgument(f"{what} must be a path, got {value!r}")
    return Path(value).expanduser()


def _log_target(value: Any, what: str) -> str:
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgument(f'{what} must be a file path, "-" (stderr) or "" (off), got {value!r}')
    return str(value)
