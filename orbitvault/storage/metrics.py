"""Prometheus metrics of a storage node: scrub counters and progress, capacity and usage.

The numbers are read from the store at every scrape (the scrub state is persisted there, see
`orbitvault.storage.scrubber`), not kept in process memory, so `node serve` and a separate
`node scrub` process expose the same values for the same store, and a restart loses nothing.
Metrics go to a registry of their own, so several stores in one process (tests) do not collide.

Exposed (every series labelled with the node id):

    orbitvault_scrub_{shards,rows,bytes}_verified_total     verification work
    orbitvault_scrub_damaged_found_total                    damage incidents found
    orbitvault_scrub_repaired_in_place_total                header RS corrections, checksum copies, bit flips
    orbitvault_scrub_repaired_from_peers_total              fragments rebuilt from sibling rows
    orbitvault_scrub_unrecoverable_total                    damage that could not be repaired
    orbitvault_scrub_passes_completed_total                 whole passes
    orbitvault_scrub_open_damage                            rows/headers known damaged, not repaired
    orbitvault_scrub_running                                1 while a pass is being worked on
    orbitvault_scrub_pass_shards_done / _pass_shards_total  progress of the current pass
    orbitvault_scrub_last_pass_completed_timestamp_seconds  end of the last complete pass
    orbitvault_scrub_last_pass_duration_seconds             its wall time
    orbitvault_scrub_throttle_bytes_per_second              configured rate limit (0 = none)
    orbitvault_scrub_state_updated_timestamp_seconds        last write by a scrubber (staleness)
    orbitvault_node_{capacity,used}_bytes, orbitvault_node_shards
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orbitvault.errors import FailedPrecondition, OrbitVaultError
from orbitvault.storage.scrubber import ScrubState, load_state
from orbitvault.storage.store import ShardStore

log = logging.getLogger("orbitvault.metrics")

_COUNTERS = {
    "shards_verified": "Shards whose header and rows the scrubber verified.",
    "rows_verified": "Rows the scrubber verified against their checksums.",
    "bytes_verified": "Fragment bytes the scrubber verified.",
    "damaged_found": "Damage incidents found (a header, or a row's fragment or checksum copy).",
    "repaired_in_place": "Damage corrected on the node alone (header RS, checksum copies, 1-2 bit flips per block).",
    "repaired_from_peers": "Fragments rebuilt from the same row of k sibling shards.",
    "unrecoverable": "Damage that could not be repaired when found.",
    "passes_completed": "Complete scrub passes over the store.",
}


class ScrubCollector(Collector):
    """Reads the store's persisted scrub state and usage at each scrape."""

    def __init__(self, store: ShardStore, *, node_gauges: bool = True) -> None:
        self.store = store
        self.node = store.node_id.hex()
        self.node_gauges = node_gauges  # off when the host process exports capacity/usage itself

    def collect(self) -> Iterator[Metric]:
        try:
            st = load_state(self.store)
            used, shards = self.store.used_bytes(), self.store.shard_count()
        except OrbitVaultError as exc:  # an unreadable state must not break the whole scrape
            log.warning("metrics: cannot read the scrub state: %s", exc)
            st, used, shards = ScrubState(), 0, 0
        labels = ["node_id"]
        for name, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"orbitvault_scrub_{name}", doc, labels=labels)
            c.add_metric([self.node], getattr(st, name))
            yield c
        gauges = [
            ("orbitvault_scrub_open_damage", "Rows and headers known damaged and not repaired.", st.open_rows()),
            ("orbitvault_scrub_running", "1 while a scrub pass is being worked on.", int(st.activity == "running")),
            ("orbitvault_scrub_pass_shards_done", "Shards done in the current pass.", st.pass_shards_done),
            ("orbitvault_scrub_pass_shards_total", "Shards when the current pass started.", st.pass_shards_total),
            (
                "orbitvault_scrub_last_pass_completed_timestamp_seconds",
                "When the last complete scrub pass ended (Unix time; 0 = never).",
                st.last_pass_completed_unix_ms / 1000,
            ),
            (
                "orbitvault_scrub_last_pass_duration_seconds",
                "Wall time of the last complete scrub pass.",
                st.last_pass_duration_ms / 1000,
            ),
            (
                "orbitvault_scrub_throttle_bytes_per_second",
                "Configured scrub rate limit; 0 = unthrottled.",
                st.throttle_bytes_per_sec,
            ),
            (
                "orbitvault_scrub_state_updated_timestamp_seconds",
                "Last time a scrubber wrote its state (Unix time); stale while running = scrubber died.",
                st.updated_unix_ms / 1000,
            ),
        ]
        if self.node_gauges:
            gauges += [
                ("orbitvault_node_capacity_bytes", "Bytes the node may use for shards.", self.store.capacity_bytes),
                ("orbitvault_node_used_bytes", "Bytes used by shards.", used),
                ("orbitvault_node_shards", "Shards stored.", shards),
            ]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([self.node], value)
            yield g


def registry_for(store: ShardStore) -> CollectorRegistry:
    """A registry holding only this store's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrubCollector(store))
    return registry


def start_metrics_server(port: int, store: ShardStore, *, addr: str = "0.0.0.0") -> tuple[object, int]:
    """Serve the store's metrics over HTTP at /metrics; returns (server, bound port). Port 0 picks one.

    Stop it with `server.shutdown()`; the serving thread is a daemon, so it never blocks exit.
    """
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry_for(store))
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    return server, server.server_port
