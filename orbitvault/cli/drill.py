"""`orbitvault demo [PATH]`: the disaster-recovery drill on a local constellation (issue 7).

The real system on one machine: a node process per satellite and a gateway in scheduled mode on a
simulated clock (a ten-minute pass takes no real time), mutual TLS, the backup client run as the
real CLI. The drill tells the whole story, one step after the other:

 1. constellation up: 8 satellites in 2 planes, 3 stations (the drill's own config and state dir)
 2. init, 3. backup PATH (default: a generated sample tree) into the constellation's repository
 4. scheduled uplink over simulated passes until every object of the repository is DURABLE
 5. radiation: bit flips in the backup's shards on every node at an accelerated LEO rate with a
    South Atlantic Anomaly burst (`storage.irradiate`)
 6. the scrubbers find every flip and repair it (or report it: unrecoverable, should be none)
 7. one satellite lost for good (its node killed, its store deleted)
 8. the gateway's repair coordinator rebuilds its shards on the others
 9. loss of the ground site: gateway stopped, its state (catalog, spool) and the client cache erased
10. the gateway rebuilt from orbit (`gateway rebuild`) and started again
11. restore by downlink: the client's restore asks RestoreObject, shows the ETA, waits, restores
12. verification against the source tree: contents byte for byte, and metadata
13. constellation down

Radiation and loss come one after the other on purpose: a stripe row survives while k of its
k+m fragments are healthy, and the drill stays inside that envelope (see `DRILL_TOML`).

The drill watches the gateway's log (`ground.telemetry`) for the simulated instants things
happened at: transfers, objects DURABLE, repair sweeps. It ends with a report (also written as
JSON) and a timeline picture (SVG: passes, transfers, faults, repairs) in the state dir; the exit
code is 0 only if the restore verified.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from orbitvault.errors import OrbitVaultError

PASSWORD = "orbitvault drill: not a secret"
LEO_ORBIT_S = 5_700.0  # a 550 km orbit: 95 minutes
POLL_S = 0.1
STEPS = 13

# The drill's constellation: the shipped 8-satellite sample in scheduled mode on a simulated clock,
# with short intervals so a drill takes seconds. Storage class 4+3 on 1 KiB fragments: radiation
# is survivable while no stripe row has more than m of its k+m fragments hit at once; small rows
# and m = 3 keep the chance of that, for a few flips per node, below 1e-4 per drill.
DRILL_TOML = """\
# The disaster-recovery drill's constellation (written by `orbitvault demo`).
name = "orbitvault-drill"
orbit = "{orbit}"
start_timeout_s = 30.0
stop_timeout_s = 10.0

[nodes]
capacity = "1GiB"
shutdown_grace_s = 2.0

[scrub]
enabled = true
interval_s = 1.0                 # scrub every second (a real node: hours)
rate_mb_s = 0.0

[gateway]
storage_class = "4+3"
fragment_size = "1KiB"
mode = "scheduled"
clock = "simulated"
sim_start = "{sim_start}"
repair_interval_s = 1.0
node_refresh_s = 1.0
node_grace_s = 900.0             # simulated seconds: a satellite silent for 15 minutes is gone for good
checkpoint_interval_s = 60.0
shutdown_grace_s = 2.0
"""


class DrillError(Exception):
    """A step did not do what it should (the message says what)."""


@dataclass
class Settings:
    path: Path | None
    state_dir: Path
    seed: int = 2026
    acceleration: float = 4.0
    saa_burst: float = 20.0
    duration_s: float = LEO_ORBIT_S
    scale: float = 1.0
    timeout_s: float = 180.0


def _iso(t: float | None) -> str | None:
    from orbitvault.orbit.timeutil import format_time

    return format_time(t) if t else None


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


class Drill:
    """One run of the drill; `run()` returns the exit code."""

    def __init__(self, settings: Settings, console: Any) -> None:
        self.s = settings
        self.console = console
        root = settings.state_dir
        self.root = root
        self.const_dir = root / "constellation"
        self.cache_dir = root / "client-cache"
        self.target = root / "restored"
        self.config_path = root / "drill.toml"
        self.report_path = root / "report.json"
        self.svg_path = root / "timeline.svg"
        self.source: Path | None = settings.path
        self.c: Any = None
        self.gateway_up = False  # no gateway, no simulated time to ask for (and no retries to wait out)
        self._sdk: Any = None
        self._probes: Any = None
        self._log: Any = None
        self.victim: str | None = None  # the satellite lost for good
        self._status: Any = None
        self._n = 0
        self.markers: list[Any] = []
        self.t0: float | None = None  # simulated time at the first step
        self.report: dict[str, Any] = {"verified": False, "state_dir": str(root), "steps": []}

    # --- output -------------------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.console.print(f"   [dim]{text}[/]", highlight=False)

    def live(self, text: str) -> None:
        """A changing detail: the spinner's text on a terminal, nothing in a log."""
        if self._status is not None:
            self._status.update(f"[bold]{self._n}/{STEPS} {self._title}[/] · {text}")

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        self._n += 1
        self._title = title
        rec: dict[str, Any] = {"step": self._n, "name": title, "ok": False, "detail": ""}
        self.report["steps"].append(rec)
        t0 = time.monotonic()
        sim0 = self._now_or_none()
        if self.console.is_terminal:
            self._status = self.console.status(f"[bold]{self._n}/{STEPS} {title}[/]")
            self._status.start()
        else:
            self.console.print(f"[bold]▶ {self._n}/{STEPS} {title}[/]")
        try:
            yield rec
        except BaseException as exc:
            rec["error"] = str(exc) or type(exc).__name__
            self._stop_status()
            self.console.print(f"[red]✗ {self._n}/{STEPS} {title}[/] ({time.monotonic() - t0:.1f} s): {rec['error']}")
            raise
        finally:
            rec["wall_s"] = round(time.monotonic() - t0, 2)
            rec["sim_start"], rec["sim_end"] = _iso(sim0), _iso(self._now_or_none())
        self._stop_status()
        rec["ok"] = True
        detail = f" — {rec['detail']}" if rec["detail"] else ""
        self.console.print(f"[green]✓ {self._n}/{STEPS} {title}[/]{detail} [dim]({rec['wall_s']:.1f} s)[/]")

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def mark(self, t: float, label: str, *, row: str | None = None, kind: str = "event") -> None:
        from orbitvault.orbit.timeline import Marker

        self.markers.append(Marker(t, label, row, kind))

    # --- the system under drill ---------------------------------------------------------------------

    def cli(
        self,
        *args: str,
        check: bool = True,
        show: bool = True,
        timeout: float = 600,
        on_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess:
        """The real `orbitvault` command, with the local constellation as its default repository;
        `on_line` sees each line of its stdout as it comes (a restore's ETAs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_")}
        env |= {
            "ORBITVAULT_CONSTELLATION_DIR": str(self.const_dir),
            "ORBITVAULT_PASSWORD": PASSWORD,
            "ORBITVAULT_CACHE_DIR": str(self.cache_dir),
            "PYTHONUNBUFFERED": "1",
        }
        if show:
            self.note(f"$ orbitvault {' '.join(args)}")
        argv = [sys.executable, "-m", "orbitvault", *args]
        if on_line is None:
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
        else:
            with tempfile.TemporaryFile(mode="w+") as err:
                proc = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env, stdin=subprocess.DEVNULL
                )
                watchdog = threading.Timer(timeout, proc.kill)
                watchdog.start()
                out: list[str] = []
                try:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        out.append(line)
                        on_line(line)
                    proc.wait()
                finally:
                    watchdog.cancel()
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                err.seek(0)
                r = subprocess.CompletedProcess(argv, proc.returncode, "".join(out), err.read())
        if check and r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
            raise DrillError(f"`orbitvault {' '.join(args[:2])}` exited with {r.returncode}: {tail}")
        return r

    def sdk(self) -> Any:
        if self._sdk is None:
            self._sdk = self.c.client(timeout_s=30.0)
        return self._sdk

    def close_sdk(self) -> None:
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None

    def now(self) -> float:
        """The gateway's (simulated) time."""
        return self.sdk().gateway_status().gateway_time_unix_ms / 1000

    def _now_or_none(self) -> float | None:
        if self.c is None or not self.gateway_up:
            return None
        try:
            return self.now()
        except Exception:  # the gateway is down in this step: no simulated time to tell
            return None

    def gateway_log(self) -> Any:
        """What the gateway logged so far (read incrementally: the drill polls it)."""
        from orbitvault.ground.telemetry import LogFollower

        if self._log is None:
            self._log = LogFollower(self.c.layout.log("gateway"))
        return self._log.read()

    def repo_objects(self) -> dict[str, Any]:
        """The repository's objects (locks aside) by name: the SDK's ObjectInfo."""
        return {o.key: o for o in self.sdk().list(self.c.bucket) if not o.key.startswith("locks/")}

    def wait(self, what: str, check: Callable[[], str | None]) -> None:
        """Poll `check` (None: done, else a progress text) until done, or fail after the timeout."""
        deadline = time.monotonic() + self.s.timeout_s
        while (text := check()) is not None:
            self.live(text)
            if time.monotonic() > deadline:
                raise DrillError(f"{what} did not happen within {self.s.timeout_s:g} s: {text}")
            time.sleep(POLL_S)

    def node_infos(self) -> dict[str, Any]:
        """NodeInfo of every node that answers (name -> ground.constellation.NodeInfo): the
        constellation's own probes, without the rest of its status (next passes cost CPU)."""
        from orbitvault.cli.constellation import _Probes

        if self._probes is None:
            self._probes = _Probes(self.c.layout, self.c.state.tls)
        out = {}
        for m in self.c.state.nodes:
            if m.name == self.victim:
                continue
            with contextlib.suppress(OrbitVaultError):
                out[m.name] = self._probes.node_info(m)
        return out

    # --- the drill --------------------------------------------------------------------------------------

    def run(self) -> int:
        began = time.monotonic()
        try:
            self._prepare()
            with self.step("constellation up") as st:
                self._up(st)
            with self.step("init the repository") as st:
                self._init(st)
            with self.step("backup") as st:
                self._backup(st)
            with self.step("scheduled uplink until DURABLE") as st:
                self._uplink(st)
            with self.step("radiation on every node") as st:
                self._radiation(st)
            with self.step("scrubbers heal") as st:
                self._scrub(st)
            with self.step("a satellite lost for good") as st:
                self._lose_satellite(st)
            with self.step("repair coordinator rebuilds its shards") as st:
                self._repair(st)
            with self.step("loss of the ground site") as st:
                self._ground_loss(st)
            with self.step("gateway rebuilt from orbit") as st:
                self._rebuild(st)
            with self.step("restore by downlink") as st:
                self._restore(st)
            with self.step("verify against the source") as st:
                self._verify(st)
        except (DrillError, OrbitVaultError, OSError, subprocess.TimeoutExpired) as exc:
            self.report["error"] = str(exc)
        except KeyboardInterrupt:
            self.report["error"] = "interrupted"
        finally:
            self.close_sdk()
            if self._probes is not None:
                self._probes.close()
            self.gateway_up = False
            if self.c is not None:
                self._n = STEPS - 1
                try:
                    with self.step("constellation down") as st:
                        stopped = self.c.down()
                        st["detail"] = f"{len(stopped)} process(es) stopped"
                except Exception as exc:  # the report must still be written
                    self.report.setdefault("error", f"constellation down: {exc}")
            self.report["runtime_s"] = round(time.monotonic() - began, 1)
            self.report["exit_code"] = 0 if self.report["verified"] else 1
            self._write_outputs()
        self._print_report()
        return self.report["exit_code"]

    def _prepare(self) -> None:
        from orbitvault.client.sample_tree import make_sample_tree
        from orbitvault.ground.constellation import sample_dir
        from orbitvault.orbit.timeutil import format_time
        from orbitvault.orbit.walker import SAMPLE_EPOCH

        self.root.mkdir(parents=True, exist_ok=True)
        if self.source is None:
            tree = make_sample_tree(self.root / "sample", seed=self.s.seed, scale=self.s.scale)
            self.source = tree.root
            self.console.print(
                f"sample tree: {tree.files} files, {_mib(tree.bytes)} of text, code, CSV, telemetry, photos "
                f"(with a duplicate, a symlink, a hard link, empty dirs) in {tree.root}"
            )
        self.source = self.source.resolve()
        self.report["source"] = {"path": str(self.source)}
        self.config_path.write_text(
            DRILL_TOML.format(orbit=sample_dir() / "sample.toml", sim_start=format_time(SAMPLE_EPOCH)), encoding="utf-8"
        )
        self.console.print(
            f"state dir {self.root} · the real system: processes, gRPC, LMDB, mutual TLS, simulated time"
        )

    def _up(self, st: dict[str, Any]) -> None:
        from orbitvault.cli.constellation import Constellation

        self.c = Constellation.up(self.config_path, self.const_dir, progress=self.note)
        self.gateway_up = True
        spec = self.c.state
        self.t0 = self.now()
        nodes = self.node_infos()
        self.base_used = sum(i.used_bytes for i in nodes.values())
        planes = sorted({m.plane for m in spec.nodes})
        self.report["constellation"] = {
            "name": spec.name,
            "satellites": len(spec.nodes),
            "planes": len(planes),
            "storage_class": spec.storage_class,
            "fragment_size": 1024,
            "mode": spec.mode,
            "clock": spec.clock,
            "tls": spec.tls,
            "gateway": self.c.gateway_address,
            "sim_start": _iso(self.t0),
        }
        st["detail"] = (
            f"{len(spec.nodes)} satellites in {len(planes)} planes + gateway ({spec.mode} mode, {spec.clock} clock "
            f"at {_iso(self.t0)}), storage class {spec.storage_class}, mutual TLS"
        )
        self.mark(self.t0, "constellation up")

    def _init(self, st: dict[str, Any]) -> None:
        out = json.loads(self.cli("init", "--json").stdout.strip().splitlines()[-1])
        st["detail"] = f"repository {out['id'][:10]} at {out['repository']}"
        self.report["repository"] = out["repository"]

    def _backup(self, st: dict[str, Any]) -> None:
        r = self.cli("backup", str(self.source), "--json")
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        self.snapshot = summary["snapshot_id"]
        snap_key = f"snapshots/{self.snapshot}"
        saved = self.sdk().head(self.c.bucket, snap_key).created_unix_ms / 1000
        predicted = None
        # The gateway logs its plan for the finished backup within milliseconds when the machine is
        # quiet; on a loaded one its executor may take seconds to see the locks go.
        deadline = time.monotonic() + min(self.s.timeout_s, 30.0)
        while time.monotonic() < deadline:
            log = self.gateway_log()
            stored = next((e for e in log.stored() if e.fields.get("key") == snap_key), None)
            # The backup's locks are deleted as it ends: the prediction is the first plan without them.
            settled = log.settled("locks/")
            if stored is not None and settled is not None:
                predicted = log.plan_after(stored, settled=settled)
                if predicted is not None:
                    break
            time.sleep(0.1)
        self.saved_at, self.predicted_durable = saved, predicted
        self.report["backup"] = summary
        self.report["source"] |= {"files": summary["total_files_processed"], "bytes": summary["total_bytes_processed"]}
        st["detail"] = (
            f"snapshot {self.snapshot[:8]}: {summary['total_files_processed']} files, "
            f"{_mib(summary['total_bytes_processed'])} read, {_mib(summary['data_added'])} new, "
            f"{_mib(summary['data_added_packed'])} after compression and encryption; queued on the ground spool"
        )
        if predicted:
            self.note(f"the gateway's plan: all DURABLE by {_iso(predicted)} (simulated)")
        self.mark(saved, "backup saved (QUEUED)")

    def _uplink(self, st: dict[str, Any]) -> None:
        from orbitvault.client.sdk import DurabilityState

        objects = self.repo_objects()
        sdk = self.sdk()

        def check() -> str | None:
            states = [sdk.status(self.c.bucket, name) for name in objects]
            durable = sum(s.state is DurabilityState.DURABLE for s in states)
            if durable == len(states):
                return None
            in_orbit = sum(s.shards_in_orbit for s in states)
            total = sum(s.shards_total for s in states)
            return f"{durable}/{len(states)} objects DURABLE, {in_orbit}/{total} shards in orbit · {_iso(self.now())}"

        self.wait("the uplink of the backup", check)
        status = json.loads(self.cli("status", "latest", "--json").stdout.strip().splitlines()[-1])
        if status["state"] != "durable":
            raise DrillError(f"`orbitvault status latest` says {status['state']}, expected durable")
        self.objects = objects
        self.object_ids = {o.version_id for o in objects.values()}
        prefixes = {o.version_id.hex()[:16] for o in objects.values()}
        log = self.gateway_log()
        durable = [at for oid, at in log.durable_at().items() if oid in prefixes]
        done = max(durable) if durable else self.now()
        store = [t for t in log.transfers() if t.purpose == "store" and t.object in prefixes]
        uplinked = sum(t.bytes for t in store if t.hop == "uplink")
        relayed = sum(t.bytes for t in store if t.hop == "isl")
        windows = {(t.source, t.dest, round(t.start)) for t in store if t.hop == "uplink"}
        used = sum(i.used_bytes for i in self.node_infos().values())
        repo_bytes = sum(o.size for o in objects.values())
        new = self.report["backup"]["data_added"]
        self.report["bytes"] = {
            "backed_up": self.report["backup"]["total_bytes_processed"],
            "new": new,
            "repository": repo_bytes,
            "stored_in_orbit": used - self.base_used,
            "uplinked": uplinked,
            "isl_relayed": relayed,
            "uplinked_per_repository_byte": round(uplinked / repo_bytes, 3) if repo_bytes else None,
        }
        self.report["rpo"] = {
            "saved_at": _iso(self.saved_at),
            "durable_at": _iso(done),
            "predicted_s": round(self.predicted_durable - self.saved_at, 1) if self.predicted_durable else None,
            "achieved_s": round(max(done - self.saved_at, 0.0), 1),
            "uplink_passes": len(windows),
        }
        st["detail"] = (
            f"{len(objects)} objects DURABLE at {_iso(done)}: {_mib(uplinked)} uplinked in {len(windows)} station "
            f"passes, {_mib(relayed)} relayed over inter-satellite links"
        )
        self.durable_at = done
        self.mark(done, "backup DURABLE")

    def _radiation(self, st: dict[str, Any]) -> None:
        from orbitvault.storage.config import load_node_config
        from orbitvault.storage.irradiate import LEO_UPSET_RATE, irradiate
        from orbitvault.storage.store import ShardStore

        # The backup spends an orbit in space first, so the exposure lies after it was DURABLE (the
        # gateway's clock moves on by itself: each catalog checkpoint goes up in the next pass).
        deadline = time.monotonic() + 10.0
        while (now := self.now()) < self.durable_at + self.s.duration_s and time.monotonic() < deadline:
            self.live(f"one orbit after DURABLE · {_iso(now)}")
            time.sleep(POLL_S)
        infos = self.node_infos()
        self.scrub_base = {name: i.scrub for name, i in infos.items()}
        per_node: dict[str, Any] = {}
        results = {}
        for i, m in enumerate(self.c.state.nodes):
            cfg = load_node_config(self.c.node_config(m.name), env={})
            with ShardStore(cfg.data_dir, capacity_bytes=cfg.capacity, create=False) as store:
                results[m.name] = irradiate(
                    store,
                    rate=LEO_UPSET_RATE,
                    duration_s=self.s.duration_s,
                    acceleration=self.s.acceleration,
                    saa_burst=self.s.saa_burst,
                    seed=self.s.seed * 100 + i,
                    objects=self.object_ids,
                )
        # The exposure window ends now; should the clock not have moved a whole orbit since the
        # backup was DURABLE, it is squeezed in between, so no flip predates the shards it hit.
        t_end = self.now()
        t_start = max(t_end - self.s.duration_s, self.durable_at)
        squeeze = (t_end - t_start) / self.s.duration_s
        for name, r in results.items():
            per_node[name] = {
                "bits_exposed": r.bits_exposed,
                "upsets": r.upsets,
                "bits_flipped": len(r.flips),
                "in_saa": sum(1 for f in r.flips if f.saa),
                "damaged_units": len(r.damaged_units()),
            }
            for f in r.flips:
                t = t_start + (f.t_s or 0.0) * squeeze
                self.mark(t, f"bit flip ({f.region}{', SAA' if f.saa else ''})", row=name, kind="fault")
        self.expected_units = sum(v["damaged_units"] for v in per_node.values())
        flips = sum(v["bits_flipped"] for v in per_node.values())
        saa = sum(v["in_saa"] for v in per_node.values())
        self.report["radiation"] = {
            "rate_per_bit_day": LEO_UPSET_RATE,
            "duration_s": self.s.duration_s,
            "acceleration": self.s.acceleration,
            "saa_burst": self.s.saa_burst,
            "bits_exposed": sum(v["bits_exposed"] for v in per_node.values()),
            "upsets": sum(v["upsets"] for v in per_node.values()),
            "bits_flipped": flips,
            "in_saa": saa,
            "damaged_units": self.expected_units,
            "per_node": per_node,
        }
        st["detail"] = (
            f"{flips} bits flipped ({saa} in the South Atlantic Anomaly) in {self.expected_units} rows and headers "
            f"of the backup's shards on {len(per_node)} nodes: one {self.s.duration_s / 60:.0f}-minute orbit at "
            f"{self.s.acceleration:g}x the LEO rate of {LEO_UPSET_RATE:g} per bit per day, "
            f"{self.s.saa_burst:g}x in the SAA"
        )
        if flips == 0:
            raise DrillError("no bit was flipped: raise --acceleration or give a larger tree")

    def _scrub_totals(self) -> dict[str, int]:
        tot = {"found": 0, "repaired_in_place": 0, "repaired_from_peers": 0, "unrecoverable": 0}
        for name, info in self.node_infos().items():
            base, s = self.scrub_base.get(name), info.scrub
            tot["found"] += s.damaged_found - (base.damaged_found if base else 0)
            tot["repaired_in_place"] += s.repaired_in_place - (base.repaired_in_place if base else 0)
            tot["repaired_from_peers"] += s.repaired_from_peers - (base.repaired_from_peers if base else 0)
            tot["unrecoverable"] += s.unrecoverable - (base.unrecoverable if base else 0)
        return tot

    def _scrub(self, st: dict[str, Any]) -> None:
        last: dict[str, int] = {}

        def check() -> str | None:
            tot = self._scrub_totals()
            last.update(tot)
            fixed = tot["repaired_in_place"] + tot["repaired_from_peers"]
            if tot["found"] >= self.expected_units and fixed + tot["unrecoverable"] >= tot["found"]:
                return None
            return f"found {tot['found']}/{self.expected_units}, repaired {fixed}, unrecoverable {tot['unrecoverable']}"

        self.wait("the scrubbers' repair", check)
        t = self.now()
        fixed = last["repaired_in_place"] + last["repaired_from_peers"]
        self.report["radiation"] |= {**last, "repaired": fixed, "healed_at": _iso(t)}
        st["detail"] = (
            f"found {last['found']} of {self.expected_units} damaged rows/headers; repaired {fixed} "
            f"({last['repaired_in_place']} in place, {last['repaired_from_peers']} from peers' rows), "
            f"unrecoverable {last['unrecoverable']}"
        )
        self.mark(t, "scrubbers healed", kind="repair")

    def _lose_satellite(self, st: dict[str, Any]) -> None:
        infos = self.node_infos()
        victim = max(sorted(infos), key=lambda n: infos[n].shard_count)
        member = self.c.state.member(victim)
        self.victim, self.victim_address = victim, member.address
        t = self.now()
        self.log_mark = self.gateway_log().last_seq
        self.c.kill_node(victim)
        shutil.rmtree(self.c.layout.data(victim))
        self.report["satellite_lost"] = {
            "name": victim,
            "plane": member.plane,
            "shards_held": infos[victim].shard_count,
            "bytes_held": infos[victim].used_bytes,
            "lost_at": _iso(t),
        }
        st["detail"] = (
            f"{victim} (plane {member.plane}) with {infos[victim].shard_count} shards, "
            f"{_mib(infos[victim].used_bytes)}: node killed, store deleted"
        )
        self.mark(t, f"{victim} lost for good", row=victim, kind="fault")

    def _repair(self, st: dict[str, Any]) -> None:
        from orbitvault.client.sdk import DurabilityState

        sdk = self.sdk()

        def check() -> str | None:
            log = self.gateway_log()
            gone = any(int(e.num("nodes_gone")) for e in log.named("repair sweep") if e.seq > self.log_mark)
            rebuilt = log.shards_rebuilt(self.log_mark)
            if not gone:
                return f"waiting for the gateway to declare {self.victim} gone · {_iso(self.now())}"
            backlog = sdk.gateway_status().repair
            states = [sdk.status(self.c.bucket, name).state for name in self.objects]
            durable = sum(s is DurabilityState.DURABLE for s in states)
            if backlog.shards_missing == 0 and durable == len(states):
                return None
            return (
                f"{rebuilt} shards rebuilt, {backlog.shards_missing} missing, {durable}/{len(states)} objects DURABLE"
            )

        self.wait("the repair of the lost satellite's shards", check)
        t = self.now()
        rebuilt = self.gateway_log().shards_rebuilt(self.log_mark)
        self.report["satellite_lost"] |= {"shards_rebuilt": rebuilt, "repaired_at": _iso(t)}
        st["detail"] = f"{rebuilt} shards rebuilt from k healthy siblings onto the other satellites; backlog empty"
        self.mark(t, f"{rebuilt} shards rebuilt", kind="repair")

    def _ground_loss(self, st: dict[str, Any]) -> None:
        t = self.now()
        self.close_sdk()
        self.gateway_up = False
        self.c.stop("gateway")
        gw_state = self.c.layout.data("gateway")
        erased = sum(p.stat().st_size for p in gw_state.rglob("*") if p.is_file())
        shutil.rmtree(gw_state)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.lost_at = t
        self.report["ground_site"] = {"lost_at": _iso(t), "gateway_state_erased_bytes": erased}
        st["detail"] = f"gateway stopped; its catalog, spool and audit log ({_mib(erased)}) and the client cache erased"
        self.mark(t, "ground site lost", kind="fault")

    def _rebuild(self, st: dict[str, Any]) -> None:
        from orbitvault.ground.constellation import to_toml
        from orbitvault.orbit.timeutil import format_time

        # The lost satellite leaves the gateway's node list, and the mission clock goes on from
        # where the old gateway stopped (a simulated clock starts at sim_start).
        cfg = self.c.gateway_config
        doc = tomllib.loads(cfg.read_text(encoding="utf-8"))
        doc["nodes"] = [a for a in doc["nodes"] if a != self.victim_address]
        doc["sim_start"] = format_time(math.ceil(self.lost_at))
        cfg.write_text(to_toml(doc, "rewritten by the drill: the lost satellite retired, the clock resumed"))
        self.note(
            f"{cfg.name}: {self.victim} retired from the node list; simulated clock resumes at {_iso(self.lost_at)}"
        )
        r = self.cli("gateway", "rebuild", "--config", str(cfg))
        text = r.stdout.strip()
        for line in text.splitlines():
            self.note(line)
        rebuilt = _parse_rebuild(text)
        self.c.start("gateway")
        self.gateway_up = True
        t = self.now()
        self.log_restart = self.gateway_log().last_seq
        self.report["ground_site"] |= {"rebuild": rebuilt, "gateway_restarted_at": _iso(t)}
        st["detail"] = (
            f"catalog recovered from the nodes alone: {rebuilt.get('objects', '?')} objects, "
            f"{rebuilt.get('tenants', '?')} tenants, {rebuilt.get('keys', '?')} API keys "
            f"(checkpoint {rebuilt.get('checkpoint', '?')}); gateway serving again"
        )
        self.mark(t, "gateway rebuilt from orbit", kind="repair")

    def _restore(self, st: dict[str, Any]) -> None:
        from orbitvault.orbit.timeutil import format_duration

        def progress(line: str) -> None:
            try:
                d = json.loads(line)
            except ValueError:
                return
            if d.get("message_type") == "restore_objects" and d["pending"]:
                wait = format_duration((d["eta_unix_ms"] - d["gateway_time_unix_ms"]) / 1000)
                self.note(
                    f"{d['phase']}: {d['pending']} object(s) only in orbit; RestoreObject ETA "
                    f"{_iso(d['eta_unix_ms'] / 1000)} (in {wait}, bound {_iso(d['eta_bound_unix_ms'] / 1000)})"
                )
                self.live(f"downlinking {d['phase']}")
            elif d.get("message_type") == "restore_objects_ready" and d["pending"]:
                waited = format_duration((d["ready_unix_ms"] - d["requested_unix_ms"]) / 1000)
                self.note(f"{d['phase']}: readable at {_iso(d['ready_unix_ms'] / 1000)}, after {waited} of passes")

        t0 = time.monotonic()
        r = self.cli("restore", "latest", "--target", str(self.target), "--json", on_line=progress)
        wall = time.monotonic() - t0
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        phases = [d for d in lines if d.get("message_type") == "restore_objects_ready"]
        summary = next((d for d in reversed(lines) if d.get("message_type") == "summary"), {})
        waiting = [p for p in phases if p["pending"]]
        predicted = sum(p["eta_unix_ms"] - p["requested_unix_ms"] for p in waiting) / 1000
        achieved = sum(p["ready_unix_ms"] - p["requested_unix_ms"] for p in waiting) / 1000
        log = self.gateway_log()
        down = [t for t in log.transfers() if t.purpose == "restore" and t.hop == "downlink"]
        first = min((p["requested_unix_ms"] for p in phases), default=0) / 1000
        last = max((p["ready_unix_ms"] for p in phases), default=0) / 1000
        self.report["rto"] = {
            "predicted_s": round(predicted, 1),
            "achieved_s": round(achieved, 1),
            "requested_at": _iso(first),
            "ready_at": _iso(last),
            "wall_s": round(wall, 2),
            "phases": [
                {
                    "phase": p["phase"],
                    "objects": p["objects"],
                    "pending": p["pending"],
                    "predicted_s": round((p["eta_unix_ms"] - p["requested_unix_ms"]) / 1000, 1),
                    "achieved_s": round((p["ready_unix_ms"] - p["requested_unix_ms"]) / 1000, 1),
                }
                for p in phases
            ],
        }
        self.report["bytes"]["downlinked"] = sum(t.bytes for t in down if t.start >= self.lost_at)
        self.report["restore"] = summary
        if not waiting:
            raise DrillError("the restore found every object readable at once: nothing came down from orbit")
        st["detail"] = (
            f"{sum(p['objects'] for p in phases)} objects restored from orbit in {len(waiting)} rounds "
            f"(metadata, trees, data), ready {_iso(last)}; {summary.get('files_restored', 0)} files, "
            f"{_mib(summary.get('bytes_restored', 0))} written in {wall:.1f} s"
        )
        for p in waiting:
            self.mark(p["ready_unix_ms"] / 1000, f"{p['phase']} restored", kind="event")

    def _verify(self, st: dict[str, Any]) -> None:
        from orbitvault.client.compare import compare_trees

        assert self.source is not None
        res = compare_trees(self.source, self.target / self.source.relative_to(self.source.anchor))
        self.report["verification"] = res.to_json()
        self.report["verified"] = res.ok
        if not res.ok:
            for m in res.mismatches:
                self.note(m)
            raise DrillError(f"the restored tree differs from the source in {res.mismatch_count} place(s)")
        st["detail"] = (
            f"{res.files} files ({_mib(res.bytes)}), {res.dirs} dirs, {res.symlinks} symlinks, "
            f"{res.hardlink_groups} hard-link groups identical: contents, modes, owners, mtimes"
        )

    # --- outputs ------------------------------------------------------------------------------------------

    def _write_outputs(self) -> None:
        self.report["report_json"] = str(self.report_path)
        try:
            svg = self._timeline()
        except Exception as exc:  # the picture is a bonus; the report matters
            self.report["timeline_error"] = str(exc)
        else:
            if svg is not None:
                self.svg_path.write_text(svg, encoding="utf-8")
                self.report["timeline_svg"] = str(self.svg_path)
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            self.report_path.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")

    def _timeline(self) -> str | None:
        from orbitvault.orbit.config import load_constellation
        from orbitvault.orbit.plan import ContactPlan
        from orbitvault.orbit.timeline import Transfer, render_timeline

        if self.c is None or self.t0 is None:
            return None
        transfers = self.gateway_log().transfers()
        times = [m.time for m in self.markers] + [t.end for t in transfers]
        start = self.t0 - 600
        end = max(times, default=self.t0) + 1800
        con = load_constellation(self.c.state.orbit_path)
        stations = [s.name for s in con.stations]
        full = ContactPlan.from_model(con, start, end)
        # Every ground pass; inter-satellite windows only those that carried a relay (they are many).
        isl = [t for t in transfers if t.hop == "isl"]

        def shown(c: Any) -> bool:
            if c.source in stations or c.dest in stations:
                return True
            pair = {c.source, c.dest}
            return any({t.source, t.dest} == pair and t.start <= c.end and t.end >= c.start for t in isl)

        plan = replace(full, contacts=[c for c in full.contacts if shown(c)])
        drawn = [
            Transfer(
                t.source, t.dest, t.start, t.end, f"{t.purpose} {t.hop} {t.bytes} B", restore=t.purpose == "restore"
            )
            for t in transfers
            if t.end >= start
        ]
        return render_timeline(
            plan,
            stations=stations,
            transfers=drawn,
            markers=self.markers,
            start=start,
            end=end,
            rows=stations + [s.name for s in con.satellites],
            title="orbitvault disaster-recovery drill (simulated time)",
            width=1800,
        )

    def _print_report(self) -> None:
        from rich import box
        from rich.table import Table

        r = self.report
        table = Table(title="drill report", box=box.SIMPLE_HEAD, show_header=True, pad_edge=False)
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("result")

        def row(what: str, text: str) -> None:
            table.add_row(what, text)

        b = r.get("bytes", {})
        if b:
            row(
                "bytes",
                f"backed up {_mib(b['backed_up'])} (new {_mib(b['new'])}); repository {_mib(b['repository'])}; "
                f"stored in orbit {_mib(b['stored_in_orbit'])}; uplinked {_mib(b['uplinked'])} "
                f"({b['uplinked_per_repository_byte']}x the repository), relayed {_mib(b['isl_relayed'])}"
                + (f"; downlinked {_mib(b['downlinked'])}" if "downlinked" in b else ""),
            )
        if "rpo" in r:
            p = r["rpo"]
            row("RPO", f"achieved {_dur(p['achieved_s'])} vs predicted {_dur(p['predicted_s'])} (simulated)")
        if "rto" in r:
            p = r["rto"]
            row(
                "RTO",
                f"achieved {_dur(p['achieved_s'])} vs predicted {_dur(p['predicted_s'])} (simulated, "
                f"{len([x for x in p['phases'] if x['pending']])} downlink rounds); {p['wall_s']:.1f} s real",
            )
        rad = r.get("radiation")
        if rad:
            row(
                "radiation",
                f"bits flipped {rad['bits_flipped']} ({rad['in_saa']} in the SAA) in "
                f"{rad['damaged_units']} rows/headers; "
                f"found {rad.get('found', '-')}, repaired {rad.get('repaired', '-')}, "
                f"unrecoverable {rad.get('unrecoverable', '-')}",
            )
        sat = r.get("satellite_lost")
        if sat:
            row(
                "satellite lost",
                f"{sat['name']}: {sat['shards_held']} shards held, {sat.get('shards_rebuilt', '-')} rebuilt",
            )
        gs = r.get("ground_site", {}).get("rebuild")
        if gs:
            row(
                "ground site",
                f"catalog rebuilt from orbit: {gs.get('objects', '?')} objects, checkpoint {gs.get('checkpoint', '?')}",
            )
        v = r.get("verification")
        if v:
            verdict = "[green]VERIFIED[/]" if v["verified"] else f"[red]FAILED[/] ({v['mismatches']} mismatches)"
            row("verification", f"{verdict}: {v['files']} files, {_mib(v['bytes'])}, byte for byte and metadata")
        if "error" in r:
            row("error", f"[red]{r['error']}[/]")
        row("runtime", f"{r.get('runtime_s', 0):.1f} s real")
        self.console.print(table)
        self.console.print(f"report: {self.report_path}")
        if "timeline_svg" in r:
            self.console.print(f"timeline: {self.svg_path}")
        size = sum(p.lstat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())
        self.console.print(f"everything is in {self.root} ({size / 2**20:.0f} MiB): delete it when done")
        outcome = "[green]drill passed: the restore verified[/]" if r["verified"] else "[red]drill failed[/]"
        self.console.print(outcome)


def _dur(seconds: float | None) -> str:
    from orbitvault.orbit.timeutil import format_duration

    return "-" if seconds is None else format_duration(seconds)


_REBUILD = re.compile(
    r"checkpoint (?P<checkpoint>\S+), (?P<tenants>\d+) tenant\(s\), (?P<keys>\d+) key\(s\), (?P<buckets>\d+) "
    r"bucket\(s\), (?P<objects>\d+) object\(s\) \((?P<from_headers>\d+) newer"
)
_REBUILD_NODES = re.compile(r"nodes listed (?P<nodes_listed>\d+), unreachable (?P<nodes_unreachable>\d+)")


def _parse_rebuild(text: str) -> dict[str, Any]:
    """The figures `gateway rebuild` prints (what it recovered, from how many nodes)."""
    out: dict[str, Any] = {}
    for pattern in (_REBUILD, _REBUILD_NODES):
        if m := pattern.search(text):
            out |= {k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()}
    return out


@click.command("demo")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="An empty or new directory for everything (constellation, restore, report).  [default: a new temporary one]",
)
@click.option("--seed", type=int, default=2026, show_default=True, help="Seeds the sample tree and the radiation.")
@click.option("--acceleration", type=float, default=4.0, show_default=True, help="Radiation: times the LEO upset rate.")
@click.option("--saa-burst", type=float, default=20.0, show_default=True, help="Radiation: rate multiplier in the SAA.")
@click.option(
    "--timeout", "timeout_s", type=float, default=180.0, show_default=True, help="Real seconds a step may wait."
)
@click.option("--scale", type=float, default=1.0, hidden=True, help="Tests: size of the sample tree.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (steps go to stderr).")
def demo(
    path: Path | None,
    state_dir: Path | None,
    seed: int,
    acceleration: float,
    saa_burst: float,
    timeout_s: float,
    scale: float,
    as_json: bool,
) -> None:
    """The disaster-recovery drill: back up PATH to a local constellation, survive radiation, a lost
    satellite and the loss of the ground site, restore from orbit, and verify.

    Without PATH a sample tree (~4.5 MB) is made in the state dir. Everything is real (processes,
    gRPC, LMDB, encryption, mutual TLS) except time, which is simulated. Exit code 0 only if the
    restored tree is identical to the source. The erasure-layer demo is `orbitvault erasure-demo`.
    """
    from rich.console import Console

    console = Console(stderr=as_json, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=as_json, highlight=False, width=160)
    if state_dir is not None and state_dir.exists() and any(state_dir.iterdir()):
        raise click.UsageError(f"{state_dir} is not empty: give the drill an empty or new --state-dir")
    if path is not None and state_dir is not None and state_dir.resolve().is_relative_to(path.resolve()):
        raise click.UsageError("the --state-dir must not be inside PATH (the drill would back up itself)")
    root = state_dir if state_dir is not None else Path(tempfile.mkdtemp(prefix="orbitvault-drill-"))
    settings = Settings(path, root.absolute(), seed, acceleration, saa_burst, LEO_ORBIT_S, scale, timeout_s)
    code = Drill(settings, console).run()
    if as_json:
        report = json.loads((root / "report.json").read_text(encoding="utf-8"))
        click.echo(json.dumps(report, indent=2))
    sys.exit(code)
