"""The committed generated protobuf code matches the IDL, imports, and exposes the contracted rpcs.

Generated code is committed (design §1), so a .proto edit without `make proto` must fail here
rather than surface as a confusing wire mismatch between a node and the gateway.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from orbitvault.grpc import codegen

SHARD_STORE_RPCS = {
    "PutShard": (True, False),
    "GetShard": (False, True),
    "HeadShard": (False, False),
    "DeleteShard": (False, False),
    "ListShards": (False, False),
    "ReadRows": (False, True),
    "NodeInfo": (False, False),
    "ForwardShard": (False, False),
}
OBJECT_STORE_RPCS = {
    "CreateBucket": (False, False),
    "ListBuckets": (False, False),
    "DeleteBucket": (False, False),
    "PutObject": (True, False),
    "GetObject": (False, True),
    "HeadObject": (False, False),
    "ListObjects": (False, False),
    "DeleteObject": (False, False),
    "SetObjectRetention": (False, False),
    "SetLegalHold": (False, False),
    "GetObjectStatus": (False, False),
    "RestoreObject": (False, False),
    "GetGatewayStatus": (False, False),
}


def test_committed_code_is_fresh() -> None:
    stale = codegen.stale_files()
    assert not stale, "generated protobuf code is stale; run `make proto` and commit: " + ", ".join(stale)


def test_generation_is_deterministic_and_check_catches_drift(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    written = codegen.generate(out)
    assert {Path(p).name for p in written} == set(codegen.render())
    assert codegen.generate(out) == []  # second run: byte-identical, nothing to write
    assert codegen.stale_files(out) == []

    (out / "common_pb2.py").write_bytes(b"# edited by hand\n")
    (out / "gone_pb2.py").write_bytes(b"")  # left over from a deleted .proto
    (out / "shard_store_pb2_grpc.py").unlink()
    stale = {Path(p).name for p in codegen.stale_files(out)}
    assert stale == {"common_pb2.py", "gone_pb2.py", "shard_store_pb2_grpc.py"}


def test_imports_are_rewritten_to_the_real_package() -> None:
    for name, data in codegen.render().items():
        text = data.decode()
        assert "from orbitvault.v1 import" not in text, name
        assert "import orbitvault.v1" not in text, name


def test_messages_round_trip() -> None:
    from orbitvault.grpc.v1 import common_pb2, object_store_pb2, shard_store_pb2

    header = shard_store_pb2.ShardHeader(
        shard_id=b"\x01" * 32,
        object_id=b"\x02" * 32,
        stripe_index=3,
        stripe_count=4,
        shard_index=11,
        geometry=common_pb2.Geometry(k=10, m=4, fragment_size=65536, stripe_size=10 * 65536 * 100),
        stripe_data_len=12345,
        row_count=1,
        siblings=[
            common_pb2.ShardLocation(shard_index=i, node_id=bytes([i]) * 32, shard_id=b"\x03" * 32) for i in range(14)
        ],
        created_unix_ms=1_700_000_000_000,
        catalog_record=b"opaque",
    )
    request = shard_store_pb2.PutShardRequest(start=shard_store_pb2.PutShardStart(header=header, upload_id=b"u" * 16))
    again = shard_store_pb2.PutShardRequest.FromString(request.SerializeToString())
    assert again == request
    assert again.WhichOneof("body") == "start"
    assert again.start.header.siblings[13].node_id == b"\x0d" * 32

    rows = shard_store_pb2.PutShardRequest(
        rows=shard_store_pb2.RowBatch(first_row=16, fragments=[b"a" * 100, b"b" * 100], checksums=[b"c" * 32] * 2)
    )
    assert shard_store_pb2.PutShardRequest.FromString(rows.SerializeToString()).rows.fragments[1] == b"b" * 100

    start = object_store_pb2.PutObjectStart(
        bucket="backups",
        key="packs/00/ab",
        content_type="application/octet-stream",
        metadata={"owner": "ops"},
        retention=object_store_pb2.Retention(
            mode=object_store_pb2.RETENTION_MODE_COMPLIANCE, retain_until_unix_ms=1_800_000_000_000
        ),
        mode=object_store_pb2.PUT_MODE_SCHEDULED,
    )
    assert not start.HasField("size")  # "size if known" has presence
    start.size = 0
    decoded = object_store_pb2.PutObjectStart.FromString(start.SerializeToString())
    assert decoded == start and decoded.HasField("size")

    # Message classes name the module they really live in, so they pickle.
    assert type(decoded).__module__ == "orbitvault.grpc.v1.object_store_pb2"
    assert pickle.loads(pickle.dumps(decoded)) == decoded


@pytest.mark.parametrize(
    ("module", "service", "expected"),
    [("shard_store_pb2", "ShardStore", SHARD_STORE_RPCS), ("object_store_pb2", "ObjectStore", OBJECT_STORE_RPCS)],
)
def test_services_have_the_contracted_rpcs(module: str, service: str, expected: dict[str, tuple[bool, bool]]) -> None:
    import importlib

    pb2 = importlib.import_module(f"orbitvault.grpc.v1.{module}")
    grpc_module = importlib.import_module(f"orbitvault.grpc.v1.{module}_grpc")
    descriptor = pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"orbitvault.v1.{service}"
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in descriptor.methods}
    assert streaming == expected
    assert hasattr(grpc_module, f"{service}Stub")
    assert hasattr(grpc_module, f"{service}Servicer")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")


def test_enums_start_unspecified() -> None:
    from orbitvault.grpc.v1 import common_pb2, object_store_pb2, shard_store_pb2

    for pb2 in (common_pb2, shard_store_pb2, object_store_pb2):
        for enum in pb2.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
