"""The local constellation: one storage node process per satellite and a gateway, on loopback.

Domain side of `orbitvault constellation up|down|status` and of the drill: read constellation.toml,
lay out the state directory, write every process's own TOML config (the same files a real
deployment uses, so the local constellation exercises the real configuration paths), start and
stop the processes with pid files, and aggregate their status. It is ground-segment tooling, so
it lives in `ground/`; like all domain code it never imports grpc: the health probe, NodeInfo and
GetGatewayStatus calls and the SDK are passed in by `orbitvault/cli/constellation.py`.

State directory (default: platformdirs user data dir / constellation, or
ORBITVAULT_CONSTELLATION_DIR)::

    constellation.json   what was laid out: members, addresses (ports are kept across `up`s,
                         since the catalog and the nodes' peers know each other by address)
    constellation.toml   a copy of the file it was made from
    master.key           the gateway's master key (0600)
    pki/                 CA and certificates (gateway, one per node, a client one)
    config/<name>.toml   node and gateway configs      logs/<name>.log   one log per process
    run/<name>.pid       pid files (JSON)              data/<name>/      stores and the catalog
    client.toml          repository URL, API key and TLS files for clients (0600)

Processes are started detached (own session), so they outlive the `up` command; a pid file
records the pid and the process's start time, so a recycled pid is never mistaken for ours and
never signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import platformdirs

from orbitvault.errors import FailedPrecondition, InvalidArgument, NotFound, OrbitVaultError
from orbitvault.ground import pki, validate
from orbitvault.ground.config import GatewayConfig, load_gateway_config
from orbitvault.ground.crypto import MasterKey
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.passes import predict_passes
from orbitvault.orbit.timeutil import DAY
from orbitvault.storage.config import load_node_config, parse_size

SAMPLE_CONFIG = "constellation.toml"
ENV_STATE_DIR = "ORBITVAULT_CONSTELLATION_DIR"
GATEWAY = "gateway"
CLIENT_CERT = "client"
STATE_VERSION = 1
# Keys of the gateway's scheduled mode (being added to `ground/config.py`): written into the
# generated gateway.toml only when constellation.toml gives them.
SCHEDULED_KEYS = ("mode", "constellation", "contact_plan", "clock", "sim_start", "spool_dir")
# Gateway settings the constellation decides itself; everything else in [gateway] passes through.
_OWNED_GATEWAY_KEYS = frozenset(
    {"state_dir", "listen", "nodes", "master_key_file", "master_key_passphrase", "master_key_salt", "audit_log"}
    | {"tls_ca", "tls_cert", "tls_key", "insecure", "rest"}
)
_TOP = {"name", "orbit", "host", "start_timeout_s", "stop_timeout_s", "nodes", "scrub", "gateway"}
_NODES = {"capacity", "base_port", "simulation", "shutdown_grace_s", "max_concurrent_puts"}
_SCRUB = {"enabled", "interval_s", "rate_mb_s"}
_GATEWAY_OWN = {"port", "pki", "insecure", "tenant", "bucket", "storage_class", "shutdown_grace_s"}
_CLASS = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*$")
_ENV_STRIP = ("ORBITVAULT_NODE_", "ORBITVAULT_GATEWAY_")
CLIENT_CERT_RENEW_S = 7 * DAY
LOG_TAIL_LINES = 15

Role = Literal["node", "gateway"]
Progress = Callable[[str], None]


class AlreadyRunning(FailedPrecondition):
    """`up` found processes of this constellation alive."""


class StartFailed(FailedPrecondition):
    """A process did not come up; everything started was stopped again."""


class PortTaken(StartFailed):
    """A process could not listen on its address (another process holds the port)."""

    def __init__(self, message: str, member: Member) -> None:
        super().__init__(message)
        self.member = member


# What a node or gateway logs when it cannot bind its address (grpc/node_server.py, gateway_server.py).
_LISTEN_FAILED = "address in use or not local"
_PORT_RETRIES = 2  # a first `up` picks another port this many times when one is taken meanwhile


# --- constellation.toml --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One storage node: it flies on `satellite` (its name too) in `plane`."""

    name: str
    satellite: str
    plane: str


@dataclass(frozen=True, slots=True)
class ConstellationSpec:
    """What constellation.toml asks for, checked and with paths resolved; see the shipped sample."""

    source: str
    text: str
    name: str
    orbit_path: Path
    host: str
    nodes: tuple[NodeSpec, ...]
    capacity: int
    node_base_port: int = 0
    simulation: bool = True
    node_shutdown_grace_s: float = 5.0
    max_concurrent_puts: int | None = None
    scrub_enabled: bool = True
    scrub_interval_s: float = 30.0
    scrub_rate_mb_s: float = 0.0
    gateway_port: int = 0
    pki: bool = True
    tenant: str = "local"
    bucket: str = "backups"
    k: int = 4
    m: int = 2
    gateway_shutdown_grace_s: float = 5.0
    gateway_settings: Mapping[str, Any] = field(default_factory=dict)
    scheduled: Mapping[str, Any] = field(default_factory=dict)
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0

    @property
    def insecure(self) -> bool:
        return not self.pki

    @property
    def mode(self) -> str:
        return str(self.scheduled.get("mode", "direct"))

    @property
    def clock(self) -> str:
        return str(self.scheduled.get("clock", "wall"))


def sample_dir() -> Path:
    """The shipped orbit and constellation samples (package data, a real directory)."""
    data = resources.files("orbitvault.orbit").joinpath("data")
    if not isinstance(data, Path):  # a zipped install: the processes need real files
        raise FailedPrecondition("orbitvault's sample data is not on the file system; install it unpacked")
    return data


def load_spec(path: str | Path | None = None) -> ConstellationSpec:
    """Read constellation.toml (None: the shipped sample); paths in it are relative to the file."""
    p = Path(path) if path is not None else sample_dir() / SAMPLE_CONFIG
    source = str(p) if path is not None else f"the shipped {SAMPLE_CONFIG}"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read constellation config {p}: {exc.strerror or exc}") from None
    return parse_spec(text, source=source, base=p.resolve().parent)


def parse_spec(text: str, *, source: str, base: Path) -> ConstellationSpec:
    """Check every key (unknown ones are errors, so a typo never means a default) and the orbit model."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source} is not valid TOML: {exc}") from None
    _keys(doc, _TOP, source)
    nodes_t = _table(doc, "nodes", source)
    scrub_t = _table(doc, "scrub", source)
    gw_t = _table(doc, "gateway", source)
    _keys(nodes_t, _NODES, f"{source} [nodes]")
    _keys(scrub_t, _SCRUB, f"{source} [scrub]")
    gw_known = _GATEWAY_OWN | set(SCHEDULED_KEYS) | (_gateway_fields() - _OWNED_GATEWAY_KEYS)
    _keys(gw_t, gw_known, f"{source} [gateway]")

    orbit_path = _resolve(base, _get(doc, "orbit", str, source)) if "orbit" in doc else sample_dir() / "sample.toml"
    orbit = load_constellation(orbit_path)
    nodes = tuple(NodeSpec(sat.name, sat.name, "" if sat.plane is None else str(sat.plane)) for sat in orbit.satellites)
    for n in nodes:
        if n.name == GATEWAY:
            raise InvalidArgument(f"{orbit_path}: a satellite may not be called {GATEWAY!r} (it names the gateway)")
        with _where(f"{orbit_path}: satellite {n.name!r} cannot name a node"):
            pki.check_name(n.name)

    insecure = _get(gw_t, "insecure", bool, source, False)
    use_pki = _get(gw_t, "pki", bool, source, not insecure)
    if use_pki == insecure:
        raise InvalidArgument(
            f"{source} [gateway]: choose pki = true (mutual TLS, certificates made at the first `up`) "
            "or insecure = true (plaintext, local development only)"
        )
    k, m = _storage_class(_get(gw_t, "storage_class", str, source, "4+2"), len(nodes), source)
    with _where(f"{source} [gateway]"):
        tenant = validate.tenant_name(_get(gw_t, "tenant", str, source, "local"))
        bucket = validate.bucket_name(_get(gw_t, "bucket", str, source, "backups"))
    scheduled = _scheduled(gw_t, base, orbit_path, source)
    settings = {k_: v for k_, v in gw_t.items() if k_ not in _GATEWAY_OWN and k_ not in SCHEDULED_KEYS}
    host = _get(doc, "host", str, source, "127.0.0.1")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidArgument(f"{source}: host must be a loopback address (127.0.0.1, ::1), got {host!r}")
    return ConstellationSpec(
        source=source,
        text=text,
        name=_get(doc, "name", str, source, "orbitvault-local"),
        orbit_path=orbit_path,
        host=host,
        nodes=nodes,
        capacity=parse_size(_get(nodes_t, "capacity", (str, int), source, "512MiB"), f"{source} [nodes] capacity"),
        node_base_port=_port(_get(nodes_t, "base_port", int, source, 0), len(nodes), f"{source} [nodes] base_port"),
        simulation=_get(nodes_t, "simulation", bool, source, True),
        node_shutdown_grace_s=_positive(nodes_t, "shutdown_grace_s", 5.0, source),
        max_concurrent_puts=_get(nodes_t, "max_concurrent_puts", int, source, None),
        scrub_enabled=_get(scrub_t, "enabled", bool, source, True),
        scrub_interval_s=_positive(scrub_t, "interval_s", 30.0, source),
        scrub_rate_mb_s=float(_get(scrub_t, "rate_mb_s", (int, float), source, 0.0)),
        gateway_port=_port(_get(gw_t, "port", int, source, 0), 1, f"{source} [gateway] port"),
        pki=use_pki,
        tenant=tenant,
        bucket=bucket,
        k=k,
        m=m,
        gateway_shutdown_grace_s=_positive(gw_t, "shutdown_grace_s", 5.0, source),
        gateway_settings=settings,
        scheduled=scheduled,
        start_timeout_s=_positive(doc, "start_timeout_s", 30.0, source),
        stop_timeout_s=_positive(doc, "stop_timeout_s", 15.0, source),
    )


def _gateway_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(GatewayConfig)}


def _scheduled(gw: Mapping[str, Any], base: Path, orbit_path: Path, source: str) -> dict[str, Any]:
    """The scheduled-mode keys the file gives, paths resolved; the orbit model fills `constellation`."""
    out: dict[str, Any] = {k: gw[k] for k in SCHEDULED_KEYS if k in gw}
    mode = out.get("mode", "direct")
    if mode not in ("direct", "scheduled"):
        raise InvalidArgument(f'{source} [gateway] mode must be "direct" or "scheduled", got {mode!r}')
    if out.get("clock", "wall") not in ("wall", "simulated"):
        raise InvalidArgument(f'{source} [gateway] clock must be "wall" or "simulated", got {out["clock"]!r}')
    for key in ("constellation", "contact_plan"):
        if key in out:
            out[key] = str(_resolve(base, _get(out, key, str, source)))
    if mode == "scheduled":
        out.setdefault("constellation", str(orbit_path))
    return out


def _storage_class(text: str, n_nodes: int, source: str) -> tuple[int, int]:
    m_ = _CLASS.match(text)
    if m_ is None:
        raise InvalidArgument(f'{source} [gateway] storage_class must be "k+m", e.g. "4+2", got {text!r}')
    k, m = int(m_.group(1)), int(m_.group(2))
    if k < 1 or m < 1:
        raise InvalidArgument(f"{source} [gateway] storage_class {text!r}: k and m must be at least 1")
    if k + m > n_nodes:
        raise InvalidArgument(
            f"{source} [gateway] storage_class {k}+{m} needs {k + m} satellites; the orbit model has {n_nodes}"
        )
    return k, m


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _table(doc: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"{source}: {key} must be a table ([{key}])")
    return value


def _keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


_MISSING = object()


def _get(table: Mapping[str, Any], key: str, kind: Any, where: str, default: Any = _MISSING) -> Any:
    if key not in table:
        if default is _MISSING:
            raise InvalidArgument(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise InvalidArgument(f"{where}: {key} must not be true/false, got {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(f"{where}: {key} has the wrong type: {value!r}")
    return value


def _positive(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = float(_get(table, key, (int, float), where, default))
    if not value > 0:
        raise InvalidArgument(f"{where}: {key} must be greater than 0, got {value!r}")
    return value


def _port(port: int, count: int, what: str) -> int:
    if port != 0 and not 1024 <= port <= 65535 - count + 1:
        raise InvalidArgument(f"{what} must be 0 (free ports) or 1024..{65536 - count}, got {port}")
    return port


@contextlib.contextmanager
def _where(prefix: str) -> Iterator[None]:
    try:
        yield
    except InvalidArgument as exc:
        raise InvalidArgument(f"{prefix}: {exc}") from None


# --- the state directory ---------------------------------------------------------------------------------


def default_state_dir() -> Path:
    """ORBITVAULT_CONSTELLATION_DIR, else the platformdirs user data dir / constellation."""
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("orbitvault", appauthor=False) / "constellation"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything of one local constellation lives (see the module docstring)."""

    root: Path

    @classmethod
    def at(cls, state_dir: str | Path | None) -> Layout:
        return cls((Path(state_dir) if state_dir is not None else default_state_dir()).expanduser().absolute())

    @property
    def state_file(self) -> Path:
        return self.root / "constellation.json"

    @property
    def spec_copy(self) -> Path:
        return self.root / "constellation.toml"

    @property
    def master_key(self) -> Path:
        return self.root / "master.key"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def client_file(self) -> Path:
        return self.root / "client.toml"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def config(self, name: str) -> Path:
        return self.root / "config" / f"{name}.toml"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pid(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    def data(self, name: str) -> Path:
        return self.root / "data" / name

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.pki_dir / f"{name}.crt", self.pki_dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.pki_dir / pki.CA_CERT

    def exists(self) -> bool:
        return self.state_file.is_file()


@dataclass(frozen=True, slots=True)
class Member:
    """One process of the constellation."""

    name: str
    role: Role
    address: str
    satellite: str = ""
    plane: str = ""


@dataclass(frozen=True, slots=True)
class State:
    """constellation.json: what `up` laid out, read back by `status`, `down` and clients."""

    name: str
    source: str
    host: str
    members: tuple[Member, ...]
    tls: bool
    orbit_path: str
    mode: str
    clock: str
    tenant: str
    bucket: str
    storage_class: str
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0
    node_grace_s: float = 5.0
    gateway_grace_s: float = 5.0

    @property
    def gateway(self) -> Member:
        return next(m for m in self.members if m.role == GATEWAY)

    @property
    def nodes(self) -> list[Member]:
        return [m for m in self.members if m.role == "node"]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise NotFound(f"no process {name!r} in this constellation; known: {', '.join(x.name for x in self.members)}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = STATE_VERSION
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> State:
        members = tuple(Member(**m) for m in d["members"])
        return cls(**{**{k: d[k] for k in d if k not in ("version", "members")}, "members": members})


def read_state(layout: Layout) -> State | None:
    """The laid-out constellation, or None when the directory holds none."""
    try:
        raw = layout.state_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {layout.state_file}: {exc.strerror or exc}") from None
    try:
        d = json.loads(raw)
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"version {d.get('version')!r}")
        return State.from_json(d)
    except (ValueError, TypeError, KeyError) as exc:
        raise FailedPrecondition(
            f"{layout.state_file} is damaged or from another orbitvault version ({exc}); "
            "`orbitvault constellation down --purge` starts afresh"
        ) from None


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers (a client, `status`) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One `up` or `down` at a time per state dir."""
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FailedPrecondition(
                f"another `orbitvault constellation up` or `down` is working on {layout.root}; wait for it"
            ) from None
        yield
    finally:
        os.close(fd)


# --- TOML output ---------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, dt.datetime):  # e.g. sim_start written as a TOML date-time
        value = value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidArgument(f"cannot write {value!r} into a generated TOML file")


def to_toml(doc: Mapping[str, Any], header: str = "") -> str:
    """Flat keys, then one level of tables: all the generated configs need."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {k: v for k, v in doc.items() if isinstance(v, Mapping)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in doc.items() if k not in tables and v is not None]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


# --- laying out ------------------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; IANA's is 49152-65535


def _pick_free_ports(host: str, count: int, avoid: set[int]) -> list[int]:
    """Free ports below the ephemeral range, all held until every one is picked (no duplicates).

    Not port 0's pick: those come from the ephemeral range, where any outgoing connection on the
    machine (our own health probes included) may take one as its local port before our process
    binds it, or at a later `up`, since the ports are kept.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, _ = _ephemeral_range()
    first, last = (10000, lo - 1) if lo > 11000 else (0, -1)
    candidates = random.sample(range(first, last + 1), min(last - first + 1, 4096)) if last > first else []
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for port in [*candidates, *[0] * count]:  # port 0 only if the range below is exhausted
            if len(ports) == count:
                break
            if port in avoid:
                continue
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(s.getsockname()[1])
        if len(ports) < count:
            raise FailedPrecondition(f"cannot find {count} free ports on {host}")
        return ports
    finally:
        for s in socks:
            s.close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def lay_out(spec: ConstellationSpec, layout: Layout, *, repick: frozenset[str] = frozenset()) -> State:
    """Members and their addresses: explicit ports from the spec, else those kept from an earlier `up`
    (except for the members named in `repick`), else free ones. Refuses a state dir made for other
    satellites."""
    old = read_state(layout)
    names = [n.name for n in spec.nodes]
    if old is not None and [m.name for m in old.nodes] != names:
        raise FailedPrecondition(
            f"{layout.root} holds a constellation of other satellites ({', '.join(m.name for m in old.nodes)}); "
            "use another --state-dir, or `orbitvault constellation down --purge` to delete it"
        )
    kept = {m.name: _port_of(m.address) for m in old.members if m.name not in repick} if old is not None else {}
    wanted: dict[str, int] = {GATEWAY: spec.gateway_port}
    for i, n in enumerate(spec.nodes):
        wanted[n.name] = spec.node_base_port + i if spec.node_base_port else 0
    ports = {name: port or kept.get(name, 0) for name, port in wanted.items()}
    missing = [name for name, port in ports.items() if not port]
    free = iter(_pick_free_ports(spec.host, len(missing), avoid=set(ports.values())))
    for name in missing:
        ports[name] = next(free)
    members = [Member(GATEWAY, "gateway", _address(spec.host, ports[GATEWAY]))]
    members += [Member(n.name, "node", _address(spec.host, ports[n.name]), n.satellite, n.plane) for n in spec.nodes]
    if len({m.address for m in members}) != len(members):
        raise InvalidArgument(f"{spec.source}: the gateway port and the node ports overlap; choose other ports")
    return State(
        name=spec.name,
        source=spec.source,
        host=spec.host,
        members=tuple(members),
        tls=spec.pki,
        orbit_path=str(spec.orbit_path),
        mode=spec.mode,
        clock=spec.clock,
        tenant=spec.tenant,
        bucket=spec.bucket,
        storage_class=f"{spec.k}+{spec.m}",
        start_timeout_s=spec.start_timeout_s,
        stop_timeout_s=spec.stop_timeout_s,
        node_grace_s=spec.node_shutdown_grace_s,
        gateway_grace_s=spec.gateway_shutdown_grace_s,
    )


def _ensure_pki(layout: Layout, state: State, now: float) -> None:
    """A CA at the first `up`, then certificates for whoever lacks one; the short-lived client
    certificate is re-issued under a new name when it is about to expire (nothing is overwritten)."""
    if not layout.ca.exists():
        pki.init(layout.pki_dir, name=f"{state.name} CA")
    for m in state.members:
        if not layout.cert(m.name)[0].exists():
            pki.issue(layout.pki_dir, pki.Role.GATEWAY if m.role == GATEWAY else pki.Role.NODE, m.name)
    cert, _ = _client_cert(layout)
    if cert is None or _expires(cert) - now < CLIENT_CERT_RENEW_S:
        name = CLIENT_CERT if cert is None else f"{CLIENT_CERT}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}"
        pki.issue(layout.pki_dir, pki.Role.CLIENT, name)


def _client_cert(layout: Layout) -> tuple[Path | None, Path | None]:
    """The newest client certificate (client.crt, then client-<timestamp>.crt)."""
    certs = sorted(layout.pki_dir.glob(f"{CLIENT_CERT}-*.crt"))
    base = layout.pki_dir / f"{CLIENT_CERT}.crt"
    best = certs[-1] if certs else (base if base.exists() else None)
    return (best, best.with_suffix(".key")) if best is not None else (None, None)


def _expires(cert: Path) -> float:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()


def _tls_keys(layout: Layout, name: str, tls: bool) -> dict[str, Any]:
    if not tls:
        return {"insecure": True}
    cert, key = layout.cert(name)
    return {"tls_ca": layout.ca, "tls_cert": cert, "tls_key": key}


def _node_doc(spec: ConstellationSpec, layout: Layout, state: State, m: Member) -> dict[str, Any]:
    return {
        "name": m.name,
        "satellite": m.satellite,
        "plane": m.plane,
        "data_dir": layout.data(m.name),
        "capacity": spec.capacity,
        "listen": m.address,
        "metrics_port": 0,
        "peers": [p.address for p in state.nodes if p.name != m.name],
        "simulation": spec.simulation,
        "shutdown_grace_s": spec.node_shutdown_grace_s,
        "max_concurrent_puts": spec.max_concurrent_puts,
        **_tls_keys(layout, m.name, state.tls),
        "scrub": {
            "enabled_in_process": spec.scrub_enabled,
            "rate_mb_s": spec.scrub_rate_mb_s,
            "interval_s": spec.scrub_interval_s,
        },
    }


def _gateway_doc(spec: ConstellationSpec, layout: Layout, state: State) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "state_dir": layout.data(GATEWAY),
        "listen": state.gateway.address,
        "nodes": [n.address for n in state.nodes],
        "master_key_file": layout.master_key,
        **_tls_keys(layout, GATEWAY, state.tls),
        **spec.gateway_settings,
    }
    known = _gateway_fields()
    for key, value in spec.scheduled.items():
        if key in known:
            doc[key] = str(layout.root / value) if key == "spool_dir" and not Path(value).is_absolute() else value
        elif not (key == "mode" and value == "direct"):  # direct is what a gateway without modes does
            raise FailedPrecondition(
                f"{spec.source} [gateway] sets {key} = {value!r}, but this gateway has no such setting yet "
                '(scheduled mode is not available in this build); use mode = "direct"'
            )
    return doc


def prepare(
    spec: ConstellationSpec, layout: Layout, *, now: float | None = None, repick: frozenset[str] = frozenset()
) -> State:
    """Make (or complete) the state dir: layout, master key, PKI, every process's config; idempotent
    (`repick`: members whose kept port is given up for a free one).

    The generated configs are loaded back with the real loaders before anything starts, so a bad
    setting is reported now, naming the constellation file, not in a process's log.
    """
    now = time.time() if now is None else now
    for sub in ("config", "logs", "run", "data"):
        (layout.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    state = lay_out(spec, layout, repick=repick)
    _write_atomic(layout.state_file, json.dumps(state.to_json(), indent=2) + "\n")
    _write_atomic(layout.spec_copy, f"# copied from {spec.source} by `orbitvault constellation up`\n{spec.text}")
    if not layout.master_key.exists():
        MasterKey.generate().write_file(layout.master_key)
    if state.tls:
        _ensure_pki(layout, state, now)
    header = f"generated by `orbitvault constellation up` from {spec.source}; rewritten at every `up`"
    for m in state.nodes:
        _write_atomic(layout.config(m.name), to_toml(_node_doc(spec, layout, state, m), header))
        with _where(f"{spec.source} [nodes]/[scrub] (generated {layout.config(m.name)})"):
            load_node_config(layout.config(m.name), env={})
    _write_atomic(layout.config(GATEWAY), to_toml(_gateway_doc(spec, layout, state), header))
    with _where(f"{spec.source} [gateway] (generated {layout.config(GATEWAY)})"):
        load_gateway_config(layout.config(GATEWAY), env={})
    return state


# --- processes -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A pid file: which process, and its start time so a recycled pid is never taken for it."""

    name: str
    role: Role
    pid: int
    start_ticks: int | None
    address: str
    started_unix_ms: int

    def alive(self) -> bool:
        return process_alive(self.pid, self.start_ticks)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()  # fields from 3 (state) on; the name may hold spaces


def _start_ticks(pid: int) -> int | None:
    try:
        fields = _proc_stat(pid)
    except OSError:
        return None
    return int(fields[19]) if fields is not None else None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie) and, where /proc tells, the very process that was started."""
    if Path("/proc/self/stat").exists():
        try:
            fields = _proc_stat(pid)
        except OSError:
            fields = None
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return start_ticks is None or int(fields[19]) == start_ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_record(path: Path) -> ProcessRecord | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return ProcessRecord(**d)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # a torn or foreign pid file: nothing we could safely signal


def records(layout: Layout, state: State) -> dict[str, ProcessRecord]:
    """Pid files present, by member name (alive or not)."""
    out = {}
    for m in state.members:
        rec = read_record(layout.pid(m.name))
        if rec is not None:
            out[m.name] = rec
    return out


def running(layout: Layout, state: State | None = None) -> dict[str, ProcessRecord]:
    """The members whose process is alive."""
    state = state or read_state(layout)
    if state is None:
        return {}
    return {name: rec for name, rec in records(layout, state).items() if rec.alive()}


def _child_env() -> dict[str, str]:
    """The generated files are authoritative: a stray ORBITVAULT_NODE_*/GATEWAY_* must not override them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_STRIP)}
    env["PYTHONUNBUFFERED"] = "1"  # "listening on" reaches the log at once
    return env


def command(layout: Layout, m: Member, spec_grace_s: float) -> list[str]:
    cfg = str(layout.config(m.name))
    if m.role == GATEWAY:
        return [
            sys.executable,
            "-m",
            "orbitvault",
            "gateway",
            "serve",
            "--config",
            cfg,
            "--shutdown-grace",
            f"{spec_grace_s}",
        ]
    return [sys.executable, "-m", "orbitvault", "node", "serve", "--config", cfg]


@dataclass
class Started:
    """A process this Python process started (so it can also reap it)."""

    member: Member
    popen: subprocess.Popen[bytes]
    record: ProcessRecord
    log_offset: int


def start_process(layout: Layout, m: Member, argv: Sequence[str]) -> Started:
    """Detached (own session: a Ctrl-C in the terminal of `up` does not reach it), logging to its file."""
    log_path = layout.log(m.name)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting: {' '.join(argv)}\n".encode())
        log.flush()
        offset = log.tell()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=_child_env(),
            cwd=layout.root,
        )
    rec = ProcessRecord(m.name, m.role, popen.pid, _start_ticks(popen.pid), m.address, int(time.time() * 1000))
    _write_atomic(layout.pid(m.name), json.dumps(dataclasses.asdict(rec)) + "\n")
    return Started(m, popen, rec, offset)


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines a process wrote since `offset` (its start), for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(offset, size - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def check_ports(state: State, spec_source: str, kept: set[str]) -> None:
    """Every address must be free now, else a message naming the port and whose it is (`kept`: the
    members whose port was picked at an earlier `up` and is kept)."""
    for m in state.members:
        host, _, port = m.address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like the servers: TIME_WAIT is fine
            try:
                s.bind((host, int(port)))
            except OSError:
                what = "the gateway" if m.role == GATEWAY else f"node {m.name}"
                hint = (
                    "it was picked at the first `up` and is kept (the nodes and the catalog know each other by "
                    "address); stop whatever holds it, or `orbitvault constellation down --purge` to start afresh"
                    if m.name in kept
                    else f"stop whatever holds it, or choose other ports in {spec_source}"
                )
                raise FailedPrecondition(f"port {port} ({m.address}) for {what} is already in use: {hint}") from None


def _signal(pid: int, start_ticks: int | None, sig: int) -> None:
    if process_alive(pid, start_ticks):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate(
    recs: Sequence[ProcessRecord],
    *,
    timeout_s: float,
    popens: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> list[str]:
    """SIGTERM (graceful), wait, then SIGKILL whoever is left; returns the names that were killed."""
    popens = popens or {}

    def alive(r: ProcessRecord) -> bool:
        p = popens.get(r.pid)
        if p is not None:
            return p.poll() is None  # our own child: poll also reaps it
        return r.alive()

    live = [r for r in recs if alive(r)]
    for r in live:
        _signal(r.pid, r.start_ticks, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while (live := [r for r in live if alive(r)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for r in live:
        _signal(r.pid, r.start_ticks, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while [r for r in live if alive(r)] and time.monotonic() < deadline:
        time.sleep(0.02)
    return [r.name for r in live]


# --- up / down ---------------------------------------------------------------------------------------------

Probe = Callable[[Member], bool]


@dataclass
class Running:
    """What `up` brought up: the state, the API token, and the processes this Python process owns."""

    layout: Layout
    state: State
    token: str
    started: dict[str, Started] = field(default_factory=dict)

    @property
    def popens(self) -> dict[int, subprocess.Popen[bytes]]:
        return {s.popen.pid: s.popen for s in self.started.values()}


def up(
    spec: ConstellationSpec,
    layout: Layout,
    *,
    probe: Probe,
    on_ready: Callable[[Running], None] | None = None,
    progress: Progress | None = None,
) -> Running:
    """Lay out, bootstrap (tenant + API key at the first `up`), start the nodes then the gateway,
    wait until each answers `probe`, then `on_ready` (the CLI creates the bucket there).

    On any failure, or Ctrl-C, everything started is stopped again before the error propagates.
    """
    say = progress or (lambda _msg: None)
    with _locked(layout):
        old = read_state(layout)
        alive = running(layout, old) if old is not None else {}
        if old is not None and alive:
            raise AlreadyRunning(
                f"already running from {layout.root}: {', '.join(m.name for m in old.members if m.name in alive)}; "
                "use `orbitvault constellation down` first"
                + (f" (--state-dir {layout.root})" if layout.root != default_state_dir() else "")
            )
        if old is not None:
            for m in old.members:
                layout.pid(m.name).unlink(missing_ok=True)  # stale: their processes are gone
        repick: frozenset[str] = frozenset()
        for attempt in range(_PORT_RETRIES + 1):
            state = prepare(spec, layout, repick=repick)
            kept = set() if old is None else {m.name for m in old.members} - _explicit_ports(spec, state)
            check_ports(state, spec.source, kept)
            token = _bootstrap_client(spec, layout, state, say)
            run = Running(layout, state, token)
            try:
                _start_all(spec, layout, state, run, probe, on_ready, say)
                return run
            except BaseException as exc:
                for role in (GATEWAY, "node"):  # the gateway first, as `down` does
                    recs = [s.record for s in run.started.values() if s.member.role == role]
                    terminate(recs, timeout_s=spec.stop_timeout_s, popens=run.popens)
                for s in run.started.values():
                    layout.pid(s.member.name).unlink(missing_ok=True)
                # A port picked for this first `up` was free when picked, but another process (another
                # constellation starting on this host) may bind it before our process does: pick
                # again. Ports of an earlier `up` are kept (the catalog knows nodes by address), and
                # explicit ones are the user's: for those the error stands.
                if not isinstance(exc, PortTaken) or old is not None or attempt == _PORT_RETRIES:
                    raise
                if exc.member.name in _explicit_ports(spec, state):
                    raise
                say(f"the port picked for {_what(exc.member)} was taken meanwhile; picking another")
                repick = repick | {exc.member.name}
        raise AssertionError("unreachable")


def _start_all(
    spec: ConstellationSpec,
    layout: Layout,
    state: State,
    run: Running,
    probe: Probe,
    on_ready: Callable[[Running], None] | None,
    say: Progress,
) -> None:
    """The nodes, then the gateway, each waited for until it answers `probe`; then `on_ready`."""
    say(f"starting {len(state.nodes)} storage nodes")
    for m in state.nodes:
        run.started[m.name] = start_process(layout, m, command(layout, m, spec.node_shutdown_grace_s))
    _wait_healthy([run.started[m.name] for m in state.nodes], layout, probe, spec.start_timeout_s)
    say(f"starting the gateway ({spec.mode} mode)")
    gw = state.gateway
    run.started[gw.name] = start_process(layout, gw, command(layout, gw, spec.gateway_shutdown_grace_s))
    _wait_healthy([run.started[gw.name]], layout, probe, spec.start_timeout_s)
    if on_ready is not None:
        on_ready(run)


def _explicit_ports(spec: ConstellationSpec, state: State) -> set[str]:
    names = {GATEWAY} if spec.gateway_port else set()
    return names | ({m.name for m in state.nodes} if spec.node_base_port else set())


def _wait_healthy(started: Sequence[Started], layout: Layout, probe: Probe, timeout_s: float) -> None:
    """Until every process answers its health check; a process that exits or stays silent fails `up`."""
    waiting = list(started)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for s in list(waiting):
            code = s.popen.poll()
            if code is not None:
                tail = log_tail(layout.log(s.member.name), s.log_offset)
                msg = (
                    f"{_what(s.member)} exited at start (exit code {code}); the last lines of "
                    f"{layout.log(s.member.name)}:\n{tail}"
                )
                if _LISTEN_FAILED in tail:
                    raise PortTaken(msg, s.member)
                raise StartFailed(msg)
            if probe(s.member):
                waiting.remove(s)
        if waiting and time.monotonic() > deadline:
            s = waiting[0]
            tail = log_tail(layout.log(s.member.name), s.log_offset)
            raise StartFailed(
                f"{_what(s.member)} did not answer health checks on {s.member.address} within {timeout_s:g} s; "
                f"the last lines of {layout.log(s.member.name)}:\n{tail}"
            )
        if waiting:
            time.sleep(0.1)


def _what(m: Member) -> str:
    return "the gateway" if m.role == GATEWAY else f"node {m.name}"


def down(
    layout: Layout,
    *,
    timeout_s: float | None = None,
    purge: bool = False,
    popens: Mapping[int, subprocess.Popen[bytes]] | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Stop the gateway, then the nodes (SIGTERM, SIGKILL after `timeout_s`); remove pid files.

    Idempotent. `purge` then deletes the state dir (only one that holds a constellation). Returns
    the names of the processes that were running.
    """
    say = progress or (lambda _msg: None)
    state = read_state(layout)
    if state is None:
        if purge and layout.root.exists() and _looks_like_state_dir(layout):
            shutil.rmtree(layout.root)
        return []
    if timeout_s is None:
        timeout_s = state.stop_timeout_s
    with _locked(layout):
        alive = running(layout, state)
        gw = [alive[GATEWAY]] if GATEWAY in alive else []
        if gw:
            say("stopping the gateway")
            _report_killed(terminate(gw, timeout_s=timeout_s, popens=popens), say)
        nodes = [alive[m.name] for m in state.nodes if m.name in alive]
        if nodes:
            say(f"stopping {len(nodes)} storage node(s)")
            _report_killed(terminate(nodes, timeout_s=timeout_s, popens=popens), say)
        for m in state.members:
            layout.pid(m.name).unlink(missing_ok=True)
    if purge:
        say(f"deleting {layout.root}")
        shutil.rmtree(layout.root)
    return [m.name for m in state.members if m.name in alive]


def _report_killed(killed: list[str], say: Progress) -> None:
    if killed:
        say(f"did not stop in time, killed: {', '.join(killed)}")


def _looks_like_state_dir(layout: Layout) -> bool:
    """`--purge` deletes only what `up` made, never a directory given by mistake."""
    return any((layout.root / p).exists() for p in ("constellation.json", "client.toml", "run", "master.key"))


def _member_record(layout: Layout, name: str) -> tuple[State, ProcessRecord | None]:
    state = read_state(layout)
    if state is None:
        raise NotFound(f"no local constellation in {layout.root}")
    state.member(name)
    return state, read_record(layout.pid(name))


def kill(layout: Layout, name: str, *, popens: Mapping[int, subprocess.Popen[bytes]] | None = None) -> bool:
    """SIGKILL one process at once (a satellite lost), remove its pid file; False if it was not running."""
    _, rec = _member_record(layout, name)
    was = rec is not None and rec.alive()
    if rec is not None:
        terminate([rec], timeout_s=0.0, popens=popens)
    layout.pid(name).unlink(missing_ok=True)
    return was


def stop_one(layout: Layout, name: str, *, popens: Mapping[int, subprocess.Popen[bytes]] | None = None) -> bool:
    """Stop one process gracefully (SIGTERM, SIGKILL after the timeout); False if it was not running."""
    state, rec = _member_record(layout, name)
    was = rec is not None and rec.alive()
    if rec is not None:
        terminate([rec], timeout_s=state.stop_timeout_s, popens=popens)
    layout.pid(name).unlink(missing_ok=True)
    return was


def start_one(layout: Layout, name: str, *, probe: Probe) -> Started:
    """Start one process again from its generated config (e.g. the gateway after `gateway rebuild`)
    and wait until it answers `probe`; a process that fails is stopped and its log's tail raised."""
    state, rec = _member_record(layout, name)
    if rec is not None and rec.alive():
        raise AlreadyRunning(f"{name} is already running (pid {rec.pid})")
    m = state.member(name)
    grace = state.gateway_grace_s if m.role == GATEWAY else state.node_grace_s
    started = start_process(layout, m, command(layout, m, grace))
    try:
        _wait_healthy([started], layout, probe, state.start_timeout_s)
    except BaseException:
        terminate([started.record], timeout_s=state.stop_timeout_s, popens={started.popen.pid: started.popen})
        layout.pid(name).unlink(missing_ok=True)
        raise
    return started


# --- client settings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How a client reaches a local constellation: what `client.toml` holds."""

    repository: str
    gateway: str
    bucket: str
    tenant: str
    api_key: str = field(repr=False)
    insecure: bool
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    state_dir: Path


def _bootstrap_client(spec: ConstellationSpec, layout: Layout, state: State, say: Progress) -> str:
    """The tenant and its API key at the first `up` (with the gateway's own admin commands, which
    work on the catalog directly); client.toml rewritten at every `up` (addresses, newest client
    certificate), keeping the token."""
    token = _read_client_file(layout).get("api_key") if layout.client_file.exists() else None
    if not token:
        say(f"creating tenant {spec.tenant!r} and its API key")
        cfg = str(layout.config(GATEWAY))
        _admin(["gateway", "tenant", "create", spec.tenant, "--config", cfg], layout, ok_if="already exists")
        token = _admin(["gateway", "key", "create", spec.tenant, "--config", cfg], layout).strip().splitlines()[-1]
    _write_client_file(layout, state, token)
    return token


def _admin(args: list[str], layout: Layout, *, ok_if: str | None = None) -> str:
    try:
        r = subprocess.run(
            [sys.executable, "-m", "orbitvault", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=_child_env(),
            cwd=layout.root,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"`orbitvault {' '.join(args[:3])}` did not finish in 120 s") from None
    if r.returncode != 0 and not (ok_if and ok_if in r.stderr):
        raise FailedPrecondition(f"`orbitvault {' '.join(args[:3])}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _write_client_file(layout: Layout, state: State, token: str) -> None:
    doc: dict[str, Any] = {
        "repository": f"orbit://{state.gateway.address}/{state.bucket}",
        "gateway": state.gateway.address,
        "bucket": state.bucket,
        "tenant": state.tenant,
        "api_key": token,
        "insecure": not state.tls,
    }
    if state.tls:
        cert, key = _client_cert(layout)
        doc |= {"tls_ca": layout.ca, "tls_cert": cert, "tls_key": key}
    header = (
        f"written by `orbitvault constellation up` ({layout.root}): how clients reach this local constellation.\n"
        "The backup client uses it when no repository is configured. Keep it private: it holds an API key."
    )
    _write_atomic(layout.client_file, to_toml(doc, header), 0o600)


def _read_client_file(layout: Layout) -> dict[str, Any]:
    try:
        return tomllib.loads(layout.client_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"cannot read {layout.client_file}: {exc}") from None


def client_settings(layout: Layout) -> ClientSettings:
    """client.toml of `layout`, whether or not the constellation runs."""
    if not layout.client_file.exists():
        raise NotFound(f"no local constellation in {layout.root}: run `orbitvault constellation up`")
    d = _read_client_file(layout)
    try:

        def path(key: str) -> Path | None:
            return Path(d[key]) if d.get(key) else None

        return ClientSettings(
            repository=str(d["repository"]),
            gateway=str(d["gateway"]),
            bucket=str(d["bucket"]),
            tenant=str(d["tenant"]),
            api_key=str(d["api_key"]),
            insecure=bool(d.get("insecure", False)),
            tls_ca=path("tls_ca"),
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            state_dir=layout.root,
        )
    except KeyError as exc:
        raise FailedPrecondition(f"{layout.client_file} lacks {exc}; run `orbitvault constellation up` again") from None


def default_client_settings(state_dir: str | Path | None = None) -> ClientSettings | None:
    """What the backup client uses when no repository is configured: the local constellation's
    repository, API key and TLS files, if one is running (its gateway process alive); else None."""
    layout = Layout.at(state_dir)
    try:
        state = read_state(layout)
        if state is None or not layout.client_file.exists():
            return None
        rec = read_record(layout.pid(GATEWAY))
        if rec is None or not rec.alive():
            return None
        return client_settings(layout)
    except OrbitVaultError:
        return None


# --- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScrubCounters:
    activity: str
    passes_completed: int
    shards_verified: int
    bytes_verified: int
    damaged_found: int
    repaired_in_place: int
    repaired_from_peers: int
    unrecoverable: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node's NodeInfo says (filled by the CLI's gRPC call)."""

    capacity_bytes: int
    used_bytes: int
    shard_count: int
    scrub: ScrubCounters
    node_time_unix_ms: int


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What GetGatewayStatus says (filled by the CLI's call through the SDK)."""

    nodes_known: int
    nodes_up: int
    shards_missing: int
    rows_damaged: int
    bytes_pending: int
    stripes_at_risk: int
    spooled_shards: int
    spooled_bytes: int
    time_unix_ms: int
    version: str


@dataclass(frozen=True, slots=True)
class Contact:
    """A satellite's next pass over a ground station."""

    station: str
    aos: float
    los: float
    max_elevation_deg: float


@dataclass(frozen=True, slots=True)
class MemberStatus:
    name: str
    role: Role
    address: str
    satellite: str
    plane: str
    pid: int | None
    process: str  # running, exited, not started
    up: bool  # the process runs and answered
    error: str | None
    info: NodeInfo | GatewayInfo | None
    next_contact: Contact | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    state_dir: Path
    exists: bool
    running: bool
    name: str = ""
    mode: str = ""
    clock: str = ""
    tls: bool = False
    time: float = 0.0
    repository: str = ""
    gateway: MemberStatus | None = None
    nodes: tuple[MemberStatus, ...] = ()

    @property
    def nodes_up(self) -> int:
        return sum(n.up for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        def member(m: MemberStatus) -> dict[str, Any]:
            d = dataclasses.asdict(m)
            if m.next_contact is not None:
                c = m.next_contact
                d["next_contact"] = {
                    "station": c.station,
                    "aos_unix_ms": int(c.aos * 1000),
                    "los_unix_ms": int(c.los * 1000),
                    "in_s": round(max(c.aos - self.time, 0.0), 1),
                    "duration_s": round(c.los - max(c.aos, self.time), 1),
                    "max_elevation_deg": round(c.max_elevation_deg, 1),
                }
            return d

        return {
            "state_dir": str(self.state_dir),
            "exists": self.exists,
            "running": self.running,
            "name": self.name,
            "mode": self.mode,
            "clock": self.clock,
            "tls": self.tls,
            "time_unix_ms": int(self.time * 1000),
            "repository": self.repository,
            "gateway": member(self.gateway) if self.gateway is not None else None,
            "nodes": [member(n) for n in self.nodes],
            "nodes_up": self.nodes_up,
        }


def next_contacts(
    orbit_path: str | Path, satellites: Sequence[str], now: float, horizon_s: float = DAY
) -> dict[str, Contact | None]:
    """Each satellite's next pass over any station from `now` (one under way counts, from now)."""
    model = load_constellation(orbit_path)
    out: dict[str, Contact | None] = dict.fromkeys(satellites)
    for p in predict_passes(model, now, now + horizon_s):
        if p.satellite in out and out[p.satellite] is None and p.los > now:
            out[p.satellite] = Contact(p.station, p.aos, p.los, p.max_elevation_deg)
    return out


def status(
    layout: Layout,
    *,
    node_info: Callable[[Member], NodeInfo],
    gateway_info: Callable[[Member], GatewayInfo],
    now: Callable[[], float] = time.time,
) -> StatusReport:
    """Processes from the pid files, then NodeInfo and GetGatewayStatus (asked in parallel, passed in
    by the caller) for the live ones, and the next contacts from the orbit model at the gateway's
    time (simulated in scheduled mode), else the wall clock's."""
    state = read_state(layout)
    if state is None:
        return StatusReport(layout.root, exists=False, running=False)
    recs = records(layout, state)
    results: dict[str, tuple[Any, str | None]] = {}

    def ask(m: Member) -> None:
        try:
            results[m.name] = ((gateway_info if m.role == GATEWAY else node_info)(m), None)
        except OrbitVaultError as exc:
            results[m.name] = (None, str(exc) or type(exc).__name__)
        except Exception as exc:  # an adapter's surprise must not hide the other members
            results[m.name] = (None, f"{type(exc).__name__}: {exc}")

    live = [m for m in state.members if m.name in recs and recs[m.name].alive()]
    threads = [threading.Thread(target=ask, args=(m,), daemon=True) for m in live]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gw_info = results.get(GATEWAY, (None, None))[0]
    t_now = gw_info.time_unix_ms / 1000 if isinstance(gw_info, GatewayInfo) and gw_info.time_unix_ms else now()
    try:
        contacts = next_contacts(state.orbit_path, [m.satellite for m in state.nodes], t_now)
    except OrbitVaultError:
        contacts = {}

    def member(m: Member) -> MemberStatus:
        rec = recs.get(m.name)
        alive = rec is not None and rec.alive()
        info, error = results.get(m.name, (None, None))
        process = "running" if alive else ("exited" if rec is not None else "stopped")
        return MemberStatus(
            m.name,
            m.role,
            m.address,
            m.satellite,
            m.plane,
            rec.pid if rec is not None else None,
            process,
            alive and info is not None,
            error,
            info,
            contacts.get(m.satellite) if m.role == "node" else None,
        )

    client = _read_client_file(layout) if layout.client_file.exists() else {}
    return StatusReport(
        layout.root,
        exists=True,
        running=bool(live),
        name=state.name,
        mode=state.mode,
        clock=state.clock,
        tls=state.tls,
        time=t_now,
        repository=str(client.get("repository", "")),
        gateway=member(state.gateway),
        nodes=tuple(member(m) for m in state.nodes),
    )
