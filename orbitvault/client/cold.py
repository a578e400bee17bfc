"""Restoring from cold storage: stage a repository's objects down from orbit before reading them.

A gateway in scheduled mode keeps objects on satellites that are reachable only in contact
windows; reading one needs a RestoreObject first, which plans the downlinks and answers with an
ETA (like a cold-storage restore). A restore does it in the order it learns what it needs:

1. metadata: config, keys, snapshots and index (the ones not in the local cache);
2. trees: every pack holding tree blobs (tree and data blobs are packed apart, so these are few
   and small; the snapshot's trees are only known once they are read);
3. data: the packs holding the content of the files being restored.

Each phase asks for all its objects at once (the gateway plans them together), reports the ETA,
then polls until every object is readable. A direct-mode gateway, or a backend that is not
`orbit://`, needs none of this: `ColdStager.for_backend` returns None and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from orbitvault.client.backend import CONFIG, object_name
from orbitvault.client.pack import BlobType
from orbitvault.errors import OrbitVaultError, Unavailable

METADATA_KINDS = ("keys", "snapshots", "index")


@dataclass
class StagePhase:
    """One phase as it went: times are the gateway's clock (simulated on a simulated gateway)."""

    phase: str
    objects: int
    pending: int = 0  # not readable when asked
    requested_unix_ms: int = 0
    eta_unix_ms: int = 0  # predicted: the last object readable (0: all were ready)
    eta_bound_unix_ms: int = 0
    ready_unix_ms: int = 0  # achieved: when the gateway made the last one readable
    simulated: bool = False
    wall_s: float = 0.0
    polls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "message_type": "restore_objects_ready",
            "phase": self.phase,
            "objects": self.objects,
            "pending": self.pending,
            "requested_unix_ms": self.requested_unix_ms,
            "eta_unix_ms": self.eta_unix_ms,
            "eta_bound_unix_ms": self.eta_bound_unix_ms,
            "ready_unix_ms": self.ready_unix_ms,
            "simulated_clock": self.simulated,
            "wall_s": round(self.wall_s, 3),
        }


@dataclass(frozen=True)
class StageEvent:
    """What a display shows: `kind` is "requested" (with the ETA), "waiting" or "ready"."""

    kind: str
    phase: StagePhase
    pending: int
    now_unix_ms: int


@dataclass
class ColdStager:
    """Stages objects of one `orbit://` backend; `on_event` sees every step (for the CLI)."""

    backend: Any
    on_event: Callable[[StageEvent], None] | None = None
    timeout_s: float | None = None  # None: as long as the contact plan takes
    phases: list[StagePhase] = field(default_factory=list)

    @classmethod
    def for_backend(cls, backend: Any, **kwargs: Any) -> ColdStager | None:
        """A stager when the backend's gateway keeps objects cold (scheduled mode), else None."""
        if not hasattr(backend, "restore_objects"):
            return None
        try:
            cold = backend.cold_storage()
        except OrbitVaultError:
            return None  # a gateway that cannot say: reads will tell
        return cls(backend, **kwargs) if cold else None

    def stage(self, phase: str, names: Iterable[str]) -> StagePhase:
        """RestoreObject every name, report the ETA, and return once all are readable."""
        names = sorted(set(names))
        st = StagePhase(phase, len(names))
        self.phases.append(st)
        began = time.monotonic()
        if not names:
            return st
        eta = self.backend.restore_objects(names)
        st.pending, st.requested_unix_ms, st.simulated = eta.staged, eta.now_unix_ms, eta.simulated
        st.eta_unix_ms, st.eta_bound_unix_ms = eta.eta_unix_ms, eta.eta_bound_unix_ms
        self._emit("requested", st, eta.staged, eta.now_unix_ms)
        ready_at = eta.ready_unix_ms
        while eta.pending:
            if self.timeout_s is not None and time.monotonic() - began > self.timeout_s:
                raise Unavailable(
                    f"{len(eta.pending)} object(s) of the {phase} phase still not restored after {self.timeout_s:g}s"
                )
            time.sleep(_poll_s(eta))
            eta = self.backend.restore_objects(eta.pending)
            ready_at = max(ready_at, eta.ready_unix_ms)
            st.polls += 1
            self._emit("waiting", st, len(eta.pending), eta.now_unix_ms)
        # When the gateway made the last object readable (from its copy's expiry), else when we saw it.
        st.ready_unix_ms = max(ready_at, st.requested_unix_ms) if ready_at and st.pending else eta.now_unix_ms
        st.wall_s = time.monotonic() - began
        self._emit("ready", st, 0, eta.now_unix_ms)
        return st

    def _emit(self, kind: str, st: StagePhase, pending: int, now_ms: int) -> None:
        if self.on_event is not None:
            self.on_event(StageEvent(kind, st, pending, now_ms))


def _poll_s(eta: Any) -> float:
    """Simulated time runs fast: poll often. Wall time: a fraction of what is left, 1-30 s."""
    if eta.simulated:
        return 0.1
    left_s = max(eta.eta_unix_ms - eta.now_unix_ms, 0) / 1000
    return min(max(left_s / 4, 1.0), 30.0)


def metadata_names(backend: Any) -> list[str]:
    """What opening the repository and finding a snapshot reads, minus what the cache holds."""
    names = [CONFIG]
    for kind in METADATA_KINDS:
        names.extend(o.name for o in backend.list(kind))
    cached = getattr(backend, "cached", None)
    return [n for n in names if cached is None or not cached(n)]


def tree_pack_names(repo: Any) -> list[str]:
    """Every pack holding a tree blob (a snapshot's trees are only known once read)."""
    return [
        object_name("data", pid.hex())
        for pid, entries in repo.index.packs().items()
        if any(e.type == BlobType.TREE for e in entries)
    ]


def data_pack_names(pack_ids: Iterable[bytes]) -> list[str]:
    return [object_name("data", pid.hex()) for pid in pack_ids]
