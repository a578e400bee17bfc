"""A small, realistic directory tree made deterministically from a seed (the drill's default data).

What a backup meets on a real machine, in a few MB: prose and notes (compressible text), source
code, a CSV export, structured binary telemetry (compressible), photos and an archive (random,
incompressible), a duplicate file (deduplicated), a symbolic link, a hard link, an empty file, empty
directories, an executable and a private (0600) file, and fixed modification times. Made at run
time rather than shipped, so the package stays small and any size can be asked for (`scale`).
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

EPOCH_NS = 1_790_000_000 * 10**9  # 2026-09-21: every mtime is this plus a fixed offset
_VOCABULARY = (
    "orbit satellite ground station pass uplink downlink shard stripe parity scrub radiation "
    "anomaly backup restore snapshot archive catalog gateway node plane window contact schedule "
    "latency checksum repair rebuild durable queued partial telemetry antenna band optical link "
    "relay the a of and to in is for on with as by at from that this be are was it or an not which "
    "recovery disaster region site copy policy retention encryption key tenant bucket object"
)
_WORDS = _VOCABULARY.split()


@dataclass(frozen=True, slots=True)
class SampleTree:
    root: Path
    files: int
    bytes: int


def make_sample_tree(root: str | os.PathLike[str], *, seed: int = 2026, scale: float = 1.0) -> SampleTree:
    """Write the tree under `root` (created; must not exist or be empty). About 4 MB at scale 1."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    rng = random.Random(seed)

    def size(n: int) -> int:
        return max(int(n * scale), 1)

    files: dict[str, bytes] = {}
    files["README.md"] = _text(rng, size(6_000), title="Mission archive")
    for i, n in enumerate((180_000, 95_000, 40_000, 12_000)):
        files[f"docs/reports/report-{2026 - i}.md"] = _text(rng, size(n), title=f"Annual report {2026 - i}")
    for i in range(6):
        files[f"docs/notes/note-{i:02d}.txt"] = _text(rng, size(rng.randrange(2_000, 30_000)))
    for i in range(8):
        files[f"src/orbit_tools/module_{i}.py"] = _code(rng, size(rng.randrange(3_000, 25_000)), i)
    files["src/orbit_tools/__init__.py"] = b""
    files["data/measurements.csv"] = _csv(rng, size(450_000))
    files["data/telemetry.bin"] = _telemetry(rng, size(700_000))
    files["media/photos/pass-0001.jpg"] = _jpeg_like(rng, size(900_000))
    files["media/photos/pass-0002.jpg"] = _jpeg_like(rng, size(600_000))
    files["media/archive-2025.tar.zst"] = rng.randbytes(size(500_000))
    files["media/photos/pass-0001-copy.jpg"] = files["media/photos/pass-0001.jpg"]  # deduplicated
    files["keys/operator.pem"] = _text(rng, 1_700, title="-----BEGIN PRIVATE NOTE-----")
    files["empty.log"] = b""

    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "src/orbit_tools/module_0.py").chmod(0o755)
    (root / "keys/operator.pem").chmod(0o600)
    (root / "keys").chmod(0o700)
    os.link(root / "data/telemetry.bin", root / "data/telemetry-latest.bin")  # a hard link
    (root / "latest.csv").symlink_to("data/measurements.csv")  # a relative symbolic link
    (root / "empty-dir").mkdir()
    (root / "media/incoming").mkdir()

    # Fixed times, deepest first so a directory's time is set after its contents are written.
    paths = sorted(root.rglob("*"), key=lambda p: (-len(p.parts), str(p)))
    for i, p in enumerate(paths):
        t = EPOCH_NS + i * 3_600_123_456_789
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(EPOCH_NS, EPOCH_NS))
    return SampleTree(root, len(files) + 1, sum(len(d) for d in files.values()))


def _text(rng: random.Random, n: int, *, title: str = "") -> bytes:
    words = rng.choices(_WORDS, k=max(n // 6, 1))
    lines = [f"# {title}", ""] if title else []
    for i in range(0, len(words), 13):
        line = " ".join(words[i : i + 13])
        lines.append(line[:1].upper() + line[1:] + ".")
        if rng.random() < 0.08:
            lines.append("")
    return ("\n".join(lines) + "\n").encode()[:n]


def _code(rng: random.Random, n: int, i: int) -> bytes:
    out = [f'"""Orbit tools, module {i}."""', "", "import math", ""]
    total, k = sum(len(line) + 1 for line in out), 0
    while total < n:
        a, b = rng.sample(_WORDS[:40], 2)
        block = [
            f"def {a}_{b}_{k}(x: float, y: float = {rng.randrange(1, 99)}.0) -> float:",
            f'    """Return the {a} of the {b}."""',
            f"    return math.hypot(x, y) * {rng.random():.6f} + {rng.randrange(1000)}",
            "",
        ]
        out += block
        total += sum(len(line) + 1 for line in block)
        k += 1
    return "\n".join(out).encode()[:n]


def _csv(rng: random.Random, n: int) -> bytes:
    rows = ["time_s,satellite,station,elevation_deg,snr_db,bytes"]
    total, t = len(rows[0]) + 1, 0
    while total < n:
        t += rng.randrange(1, 30)
        row = (
            f"{t},OV-{rng.choice((11, 12, 13, 14, 21, 22, 23, 24))},{rng.choice(('Redu', 'Wallops', 'HBK'))},"
            f"{rng.uniform(5, 90):.2f},{rng.gauss(12, 3):.2f},{rng.randrange(0, 2**24)}"
        )
        rows.append(row)
        total += len(row) + 1
    return ("\n".join(rows) + "\n").encode()[:n]


def _telemetry(rng: random.Random, n: int) -> bytes:
    """Fixed-size records of slowly varying values: binary, yet compressible like real telemetry."""
    rec = struct.Struct("<dIhhhH")
    out = bytearray(b"OVTM\x01\x00\x00\x00")
    temp, volt = 2000, 28000
    t = 1_790_000_000.0
    while len(out) < n:
        t += 1.0
        temp += rng.randrange(-3, 4)
        volt += rng.randrange(-10, 11)
        out += rec.pack(t, rng.randrange(8), temp, volt, rng.randrange(-5, 6), 0xA55A)
    return bytes(out[:n])


def _jpeg_like(rng: random.Random, n: int) -> bytes:
    """A JPEG header and random entropy-coded data: incompressible, as photos are."""
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + rng.randbytes(max(n - len(head) - 2, 0)) + b"\xff\xd9"
