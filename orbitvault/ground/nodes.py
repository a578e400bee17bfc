"""The storage nodes the gateway knows: their links, last reported status, and health.

A node is *up* after its last call succeeded and *down* after one failed with Unavailable;
`refresh()` asks every node for NodeInfo (concurrently). `last_seen` is the clock time of the last
success; a node not seen for the gateway's grace period counts as gone (its shards are rebuilt
elsewhere). Node ids come from NodeInfo; ids of nodes that are down at startup come from the
catalog (`seed`), so their shards are still found by id.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from orbitvault.errors import OrbitVaultError
from orbitvault.ground.ports import NodeLink, NodeStatus
from orbitvault.orbit.clock import Clock, WallClock


@dataclass
class NodeState:
    """What the gateway knows about one node (mutable; guarded by the directory's lock)."""

    link: NodeLink
    node_id: bytes | None = None
    status: NodeStatus | None = None
    up: bool = False
    last_seen: float = 0.0
    last_error: str = ""
    reserved: int = 0  # bytes placed since the last status, so concurrent puts do not overfill

    @property
    def address(self) -> str:
        return self.link.address

    @property
    def plane(self) -> str:
        return self.status.plane if self.status else ""

    @property
    def free_bytes(self) -> int:
        return max((self.status.free_bytes if self.status else 0) - self.reserved, 0)


class NodeDirectory:
    """The set of NodeLinks with their last NodeStatus; thread-safe."""

    def __init__(self, links: Iterable[NodeLink] = (), *, clock: Clock | None = None) -> None:
        self._lock = threading.Lock()
        self._by_addr: dict[str, NodeState] = {}
        self._by_id: dict[bytes, NodeState] = {}
        self.clock: Clock = clock or WallClock()
        self._clock_given = clock is not None
        self.last_refresh: float | None = None
        for link in links:
            self.add(link)

    def use_clock(self, clock: Clock) -> None:
        """The gateway's clock, unless the directory was built with one."""
        if not self._clock_given:
            self.clock = clock

    def add(self, link: NodeLink) -> None:
        with self._lock:
            if link.address in self._by_addr:
                raise ValueError(f"node address {link.address} is listed twice")
            self._by_addr[link.address] = NodeState(link)

    def seed(self, known: Iterable[tuple[bytes, str, float]]) -> None:
        """(node_id, address, last_seen) remembered from earlier runs, for nodes not answering now."""
        with self._lock:
            for node_id, address, last_seen in known:
                st = self._by_addr.get(address)
                if st is None or node_id in self._by_id:
                    continue
                if st.node_id is None:
                    st.node_id = node_id
                    st.last_seen = max(st.last_seen, last_seen)
                    self._by_id[node_id] = st

    # --- health -----------------------------------------------------------------------------------

    def refresh(self, executor: Executor | None = None) -> None:
        """Ask every node for NodeInfo, concurrently; failures mark nodes down."""
        states = list(self._by_addr.values())
        if not states:
            self.last_refresh = self.clock.now()
            return
        own = executor is None
        pool = executor or ThreadPoolExecutor(max_workers=min(len(states), 32), thread_name_prefix="node-info")
        try:
            futures = [(st, pool.submit(st.link.info)) for st in states]
            for st, fut in futures:
                try:
                    self._learn(st, fut.result())
                except OrbitVaultError as exc:
                    self._down(st, str(exc))
                except Exception as exc:  # a broken link must not stop the others from being asked
                    self._down(st, f"{type(exc).__name__}: {exc}")
        finally:
            if own:
                pool.shutdown(wait=True)
        self.last_refresh = self.clock.now()

    def _learn(self, st: NodeState, status: NodeStatus) -> None:
        with self._lock:
            if st.node_id is not None and st.node_id != status.node_id:
                self._by_id.pop(st.node_id, None)  # a different store now answers at this address
            other = self._by_id.get(status.node_id)
            if other is not None and other is not st:
                other.node_id = None  # the node moved to this address
                other.up = False
            st.node_id = status.node_id
            st.status = status
            st.reserved = 0
            st.up = True
            st.last_error = ""
            st.last_seen = self.clock.now()
            self._by_id[status.node_id] = st

    def _down(self, st: NodeState, error: str) -> None:
        with self._lock:
            st.up = False
            st.last_error = error

    def mark_down(self, node_id: bytes, error: str = "") -> None:
        st = self._by_id.get(node_id)
        if st is not None:
            self._down(st, error)

    def mark_seen(self, node_id: bytes) -> None:
        """A call to the node succeeded."""
        with self._lock:
            st = self._by_id.get(node_id)
            if st is not None and st.status is not None:
                st.up = True
                st.last_seen = self.clock.now()

    def reserve(self, node_id: bytes, nbytes: int) -> None:
        with self._lock:
            st = self._by_id.get(node_id)
            if st is not None:
                st.reserved += nbytes

    # --- lookups ------------------------------------------------------------------------------------

    def link(self, node_id: bytes) -> NodeLink | None:
        st = self._by_id.get(node_id)
        return None if st is None else st.link

    def get(self, node_id: bytes) -> NodeState | None:
        return self._by_id.get(node_id)

    def is_up(self, node_id: bytes) -> bool:
        st = self._by_id.get(node_id)
        return st is not None and st.up

    def up_nodes(self) -> list[NodeState]:
        with self._lock:
            return [st for st in self._by_id.values() if st.up and st.status is not None]

    def states(self) -> list[NodeState]:
        """Every node, known by id or not (a node never reached has no id)."""
        with self._lock:
            return list(self._by_addr.values())

    def gone(self, node_id: bytes, grace_s: float) -> bool:
        """Not up, and not seen for `grace_s` (never seen counts from when the gateway first knew it)."""
        st = self._by_id.get(node_id)
        if st is None:
            return True  # a node id no configured link answers for
        return not st.up and self.clock.now() - st.last_seen > grace_s

    def __len__(self) -> int:
        return len(self._by_addr)

    def close(self) -> None:
        for st in self.states():
            with contextlib.suppress(Exception):  # closing must go on for the others
                st.link.close()
