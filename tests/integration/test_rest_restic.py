"""The real `restic` binary against orbitvault's REST endpoint (an in-process gateway on fake nodes).

Skipped when restic is not installed (Debian: `apt-get install restic`; `.ci/run` installs it).
Covers what an enterprise runs: init, backups, snapshots, check --read-data, forget --prune,
restore byte-identical; append-only keys refusing forget --prune; wrong credentials; tenant
isolation; degraded reads with nodes down; a read-only key; nested repositories; TLS with the
gateway's certificate.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orbitvault.ground.model import KeyMode
from orbitvault.rest import RestServer, RestSettings, serve_rest
from tests.unit.ground_fakes import Env

RESTIC = shutil.which("restic")
pytestmark = pytest.mark.skipif(
    RESTIC is None, reason="restic binary not found: install it (Debian: apt-get install restic) to run these"
)
MiB = 1 << 20
PASSWORD = "correct horse battery staple"


@dataclass
class Restic:
    server: RestServer
    tmp: Path

    def url(self, user: str, token: str, path: str = "bkp") -> str:
        scheme, _, host = self.server.url.partition("://")
        return f"rest:{scheme}://{user}:{token}@{host}/{path}/"

    def run(
        self, repo: str, *args: str, ok: bool = True, extra: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "RESTIC_PASSWORD": PASSWORD,
            "HOME": str(self.tmp),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        cmd = [RESTIC or "restic", "--repo", repo, "--no-cache", *(extra or []), *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        if ok and p.returncode != 0:
            raise AssertionError(f"restic {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def refused(self, repo: str, *args: str, status: str, extra: list[str] | None = None) -> str:
        """Run restic until the server's refusal `status` shows in its output, then interrupt it.

        restic 0.14 retries every failed request about ten times with exponential backoff (about a
        minute) before it gives up, also on 403; waiting for that proves nothing more.
        """
        env = {"RESTIC_PASSWORD": PASSWORD, "HOME": str(self.tmp), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        cmd = [RESTIC or "restic", "--repo", repo, "--no-cache", *(extra or []), *args]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(90, proc.kill)
        timer.start()
        seen: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                if status in line:
                    proc.send_signal(signal.SIGINT)  # restic stops and removes its lock
                    break
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        finally:
            timer.cancel()
            if proc.stderr is not None:
                proc.stderr.close()
        text = "".join(seen)
        assert status in text, f"restic {' '.join(args)} was not refused with {status}:\n{text}"
        return text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Restic]]:
    tmp = tmp_path_factory.mktemp("rest-restic")
    # 4+2 with 64 KiB fragments and 4 MiB stripes: restic's packs (up to 16 MiB) span several stripes
    env = Env(tmp / "sky", 6, segment_size=256 * 1024, stripe_size=4 * MiB)
    server = serve_rest(env.gw, RestSettings(listen="127.0.0.1:0", access_log=str(tmp / "access.log")))
    try:
        yield env, Restic(server, tmp)
    finally:
        server.stop()
        env.close()


def make_tree(root: Path, seed: int, n_files: int = 24) -> None:
    """A mixed tree: incompressible files of up to 2 MiB, text, an empty file, nested directories."""
    rnd = random.Random(seed)
    for i in range(n_files):
        d = root / f"dir{i % 4}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            data = rnd.randbytes(rnd.randint(200_000, 2 * MiB))
        else:
            data = f"line {rnd.random()} of file {i}: orbitvault restic\n".encode() * rnd.randint(10, 5000)
        (d / f"file{i}.bin").write_bytes(data)
    (root / "empty").write_bytes(b"")


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def restored(target: Path, source: Path) -> Path:
    return target / str(source).lstrip("/")


def snapshots(r: Restic, repo: str, **kw: Any) -> list[dict[str, Any]]:
    return json.loads(r.run(repo, "snapshots", "--json", **kw).stdout)


def test_backup_check_forget_prune_restore(world: tuple[Env, Restic], tmp_path: Path) -> None:
    env, r = world
    repo = r.url("acme", env.key.token, "cycle")
    src = tmp_path / "src"
    make_tree(src, 1)
    r.run(repo, "init")
    r.run(repo, "backup", str(src))
    first = digest_tree(src)
    (src / "dir0" / "sub0" / "file0.bin").write_bytes(random.Random(9).randbytes(MiB))  # change one file
    make_tree(src / "more", 2, n_files=6)  # and add some
    r.run(repo, "backup", str(src))
    snaps = snapshots(r, repo)
    assert len(snaps) == 2
    r.run(repo, "check", "--read-data")
    r.run(repo, "forget", "--keep-last", "1", "--prune")
    assert [s["id"] for s in snapshots(r, repo)] == [snaps[-1]["id"]]
    r.run(repo, "check", "--read-data")
    out = tmp_path / "out"
    r.run(repo, "restore", "latest", "--target", str(out))
    assert digest_tree(restored(out, src)) == digest_tree(src) != first
    # every listed blob came through the v2 listing, every read was a ranged 206
    log = (r.tmp / "access.log").read_text()
    assert '"GET /cycle/data/ HTTP/1.1" 200' in log and '"DELETE /cycle/data/' in log


def test_degraded_reads_with_nodes_down(world: tuple[Env, Restic], tmp_path: Path) -> None:
    env, r = world
    repo = r.url("acme", env.key.token, "degraded")
    src = tmp_path / "src"
    make_tree(src, 3, n_files=12)
    r.run(repo, "init")
    r.run(repo, "backup", str(src))
    links = env.links
    try:
        links[1].down = links[4].down = True  # m = 2 of 6 nodes gone: every read still succeeds
        # (restic writes a lock first, and a put needs k+1 = 5 nodes: read-only use needs --no-lock)
        r.run(repo, "check", "--read-data", extra=["--no-lock"])
        out = tmp_path / "out"
        r.run(repo, "restore", "latest", "--target", str(out), extra=["--no-lock"])
        assert digest_tree(restored(out, src)) == digest_tree(src)
        links[4].down = False  # one node gone: backups go on (k+1 up), missing shards queued for repair
        env.gw.refresh_nodes(force=True)
        (src / "new.bin").write_bytes(os.urandom(300_000))
        r.run(repo, "backup", str(src))
        r.run(repo, "check", "--read-data")
    finally:
        links[1].down = links[4].down = False
        env.gw.refresh_nodes(force=True)
    out2 = tmp_path / "out2"
    r.run(repo, "restore", "latest", "--target", str(out2))
    assert digest_tree(restored(out2, src)) == digest_tree(src)


def test_append_only_key_refuses_forget_prune(world: tuple[Env, Restic], tmp_path: Path) -> None:
    env, r = world
    ao = env.gw.create_api_key("acme", KeyMode.APPEND_ONLY).token
    repo = r.url("acme", ao, "appendonly")
    src = tmp_path / "src"
    make_tree(src, 4, n_files=6)
    r.run(repo, "init")
    r.run(repo, "backup", str(src))
    (src / "later.txt").write_text("second backup\n")
    r.run(repo, "backup", str(src))  # locks come and go: deleting locks is allowed
    r.refused(repo, "forget", "--keep-last", "1", "--prune", status="403 Forbidden")
    assert len(snapshots(r, repo)) == 2  # nothing was removed
    r.run(r.url("acme", env.key.token, "appendonly"), "check")  # and the repository is intact


def test_wrong_credentials_and_other_tenants(world: tuple[Env, Restic], tmp_path: Path) -> None:
    env, r = world
    repo = r.url("acme", env.key.token, "private")
    src = tmp_path / "src"
    make_tree(src, 5, n_files=3)
    r.run(repo, "init")
    r.run(repo, "backup", str(src))
    for bad in (
        r.url("acme", "ovk_0123456789abcdef_" + "0" * 64, "private"),
        r.url("mallory", env.key.token, "private"),
    ):
        r.refused(bad, "snapshots", status="401 Unauthorized")
    env.gw.create_tenant("globex")
    other = r.url("globex", env.gw.create_api_key("globex").token, "private")
    p = r.run(other, "snapshots", ok=False)  # acme's repository does not exist for globex
    assert p.returncode != 0
    r.run(other, "init")  # globex's own bucket of the same name
    assert snapshots(r, other) == []
    assert len(snapshots(r, repo)) == 1


def test_read_only_key_and_nested_repository(world: tuple[Env, Restic], tmp_path: Path) -> None:
    env, r = world
    repo = r.url("acme", env.key.token, "shared/team/alice")
    src = tmp_path / "src"
    make_tree(src, 6, n_files=4)
    r.run(repo, "init")
    r.run(repo, "backup", str(src))
    keys = {o.key.split("/")[2] for o in env.gw.list_objects(env.p, "shared")[0]}
    assert {"config", "data", "index", "keys", "snapshots"} <= keys  # all under team/alice/
    ro = r.url("acme", env.gw.create_api_key("acme", KeyMode.READ_ONLY).token, "shared/team/alice")
    assert len(snapshots(r, ro, extra=["--no-lock"])) == 1
    out = tmp_path / "out"
    r.run(ro, "restore", "latest", "--target", str(out), extra=["--no-lock"])
    assert digest_tree(restored(out, src)) == digest_tree(src)
    r.refused(ro, "backup", str(src), status="403 Forbidden")


def test_tls_with_the_gateways_certificate(world: tuple[Env, Restic], tmp_path: Path) -> None:
    from orbitvault.ground import pki

    env, _ = world
    pki.init(tmp_path / "pki")
    gw = pki.issue(tmp_path / "pki", "gateway", "gw")
    with serve_rest(env.gw, RestSettings(listen="127.0.0.1:0", tls_cert=gw.cert_path, tls_key=gw.key_path)) as srv:
        r = Restic(srv, tmp_path)
        repo = r.url("acme", env.key.token, "overtls").replace("127.0.0.1", "localhost")
        cacert = ["--cacert", str(tmp_path / "pki" / "ca.crt")]
        r.run(repo, "init", extra=cacert)
        assert snapshots(r, repo, extra=cacert) == []
        p = r.run(repo, "snapshots", ok=False)  # without the CA, restic refuses the certificate
        assert p.returncode != 0 and "certificate" in p.stderr
