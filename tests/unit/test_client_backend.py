from __future__ import annotations

import os
from pathlib import Path

import pytest

from orbitvault.client.backend import Backend, LocalBackend, check_name, object_name, open_backend, parse_orbit_url
from orbitvault.errors import InvalidArgument, NotFound

H = "ab" + "0" * 62


def test_local_backend_roundtrip(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "r")
    assert isinstance(b, Backend)
    b.create()
    name = object_name("data", H)
    assert name == f"data/ab/{H}"
    b.put(name, b"0123456789")
    assert b.get(name) == b"0123456789"
    assert b.get(name, 3, 4) == b"3456"
    assert b.get(name, 8, 100) == b"89"
    assert b.stat(name).size == 10
    assert [i.name for i in b.list("data")] == [name]
    b.put(f"index/{H}", memoryview(b"idx"))
    assert [i.name for i in b.list("index")] == [f"index/{H}"]
    assert oct((tmp_path / "r" / "index" / H).stat().st_mode & 0o777) == "0o600"
    b.delete(name)
    b.delete(name)  # idempotent
    with pytest.raises(NotFound):
        b.get(name)
    with pytest.raises(NotFound):
        b.stat(name)
    assert not b.exists(name)


def test_create_refuses_an_existing_repository(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.create()
    b.put("config", b"x")
    with pytest.raises(InvalidArgument):
        b.create()


def test_temporary_files_are_invisible_and_cleaned(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.create()
    (tmp_path / "index" / ".tmp-deadbeef").write_bytes(b"partial")
    assert list(b.list("index")) == []
    os.utime(tmp_path / "index" / ".tmp-deadbeef", (0, 0))
    assert b.remove_temporary(older_than_s=60) == 1


@pytest.mark.parametrize(
    "bad", ["../config", "data/../../etc/passwd", f"data/cd/{H}", f"snapshots/{H}/x", "keys/xyz", "/abs", "locks/"]
)
def test_names_outside_the_format_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_name(bad)


def test_open_backend_urls(tmp_path: Path) -> None:
    assert isinstance(open_backend(f"local:{tmp_path}"), LocalBackend)
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    os.environ.pop("ORBITVAULT_API_KEY", None)
    with pytest.raises(InvalidArgument, match="needs an API key"):
        open_backend("orbit://gw.example:7000/backups")
    with pytest.raises(InvalidArgument):
        open_backend("orbit://gw.example/backups")
    with pytest.raises(InvalidArgument):
        open_backend("s3://bucket")
    with pytest.raises(InvalidArgument):
        open_backend("")
    loc = parse_orbit_url("orbit://[::1]:7000/b-1")
    assert (loc.host, loc.port, loc.bucket) == ("::1", 7000, "b-1")


class _Replanning:
    """A scheduled gateway in miniature: every new restore re-plans all of them, and the plan
    serves the objects in its own order (here: names descending), so a new one can move the
    objects asked before it to a later window."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def gateway_status(self) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(gateway_time_unix_ms=1000, simulated_clock=True)

    def restore(self, bucket: str, key: str, *, keep_for_ms: int = 0) -> object:
        from orbitvault.client.sdk import RestoreStatus

        if key not in self.jobs:
            self.jobs.append(key)  # a new restore: planned with the others
        order = sorted(self.jobs, reverse=True)
        return RestoreStatus(False, 1100 + 100 * order.index(key), 0, 1000)


def test_restore_eta_is_read_from_the_plan_holding_every_object() -> None:
    from orbitvault.client.backend_orbit import OrbitBackend

    gw = _Replanning()
    backend = OrbitBackend("orbit://127.0.0.1:1/b", client=gw)
    eta = backend.restore_objects(["data/aa", "data/bb", "data/cc"])
    assert eta.pending == ("data/aa", "data/bb", "data/cc")
    # Each was told 1100 when asked; in the plan holding all three the first one comes last.
    assert eta.eta_unix_ms == 1300
    assert backend.restore_objects(["data/aa"]).eta_unix_ms == 1300  # polling re-plans nothing


class _FastClock(_Replanning):
    """The same, on a simulated clock that runs ahead between two calls: by the time the
    client asks again, the object planned first has come down (readable since 1100)."""

    def __init__(self, done: set[str]) -> None:
        super().__init__()
        self.done = done
        self.asked: set[str] = set()

    def restore(self, bucket: str, key: str, *, keep_for_ms: int = 0) -> object:
        from orbitvault.client.sdk import RestoreStatus

        if key in self.asked and key in self.done:
            return RestoreStatus(True, 0, 1100 + keep_for_ms, 0)
        self.asked.add(key)
        return super().restore(bucket, key, keep_for_ms=keep_for_ms)


def test_objects_restored_between_the_two_rounds_still_count_as_staged() -> None:
    from orbitvault.client.backend_orbit import OrbitBackend

    backend = OrbitBackend("orbit://127.0.0.1:1/b", client=_FastClock({"data/cc"}))
    eta = backend.restore_objects(["data/aa", "data/bb", "data/cc"])
    assert eta.staged == 3 and eta.pending == ("data/aa", "data/bb")  # all three came from orbit
    assert eta.eta_unix_ms == 1300 and eta.ready_unix_ms == 1100
    assert 1000 <= eta.eta_bound_unix_ms <= eta.eta_unix_ms

    # Every one readable by the second round: the ETA is when the last became readable.
    backend = OrbitBackend("orbit://127.0.0.1:1/b", client=_FastClock({"data/aa", "data/bb"}))
    eta = backend.restore_objects(["data/aa", "data/bb"])
    assert eta.staged == 2 and eta.pending == () and eta.ready
    assert eta.eta_unix_ms == eta.ready_unix_ms == 1100
    assert 1000 <= eta.eta_bound_unix_ms <= eta.eta_unix_ms
