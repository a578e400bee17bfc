"""`orbitvault gateway serve` with a `[rest]` table: gRPC and restic's REST protocol in one process."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from orbitvault.cli import cli
from orbitvault.client.sdk import ObjectStoreClient


def _admin(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["gateway", *args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def _request(url: str, method: str, tenant: str, token: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{tenant}:{token}".encode()).decode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def test_rest_section_serves_restic_protocol_beside_grpc(constellation: Any, spawn_gateway: Any) -> None:
    config = constellation.toml()
    with config.open("a") as f:
        f.write('\n[rest]\nlisten = "127.0.0.1:0"\n')
    assert _admin(config, "tenant", "create", "acme") == "tenant acme created"
    token = _admin(config, "key", "create", "acme")
    gp = spawn_gateway(config)
    rest_line = gp.proc.stdout.readline().strip()
    assert rest_line.startswith("listening on http://127.0.0.1:") and rest_line.endswith("(restic REST)")
    base = rest_line.split()[2].rstrip("/")

    with ObjectStoreClient(gp.address, token, insecure=True) as c:
        c.create_bucket("backups")
    status, _ = _request(f"{base}/backups/?create=true", "POST", "acme", token)
    assert status == 200
    blob = b"pack contents " * 1000
    name = hashlib.sha256(blob).hexdigest()
    assert _request(f"{base}/backups/data/{name}", "POST", "acme", token, blob)[0] == 200
    assert _request(f"{base}/backups/data/{name}", "GET", "acme", token) == (200, blob)
    # The same object through gRPC: one facade, one catalog.
    with ObjectStoreClient(gp.address, token, insecure=True) as c:
        keys = [o.key for o in c.list("backups")]
    assert f"data/{name}" in keys
    assert gp.terminate() == 0
