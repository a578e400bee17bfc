"""The LMDB shard store, by behaviour: atomic puts, verified reads, repair, capacity, listing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import StripeCoder
from orbitvault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from orbitvault.storage.header import ShardHeader, Sibling
from orbitvault.storage.store import CHECKSUMS, HEADER, RowBatch, RowStatus, ShardStore

GEOMETRY = Geometry(4, 2, fragment_size=4096)


def make_shard(data_len: int = 50_000, index: int = 1, object_id: bytes | None = None):
    enc = StripeCoder(GEOMETRY).encode(os.urandom(data_len))
    shard = enc.shards[index]
    header = ShardHeader(
        shard_id=os.urandom(32),
        object_id=object_id or os.urandom(32),
        stripe_index=0,
        stripe_count=1,
        shard_index=index,
        geometry=GEOMETRY,
        stripe_data_len=data_len,
        siblings=tuple(Sibling(i, os.urandom(32), os.urandom(32)) for i in range(GEOMETRY.n)),
        created_unix_ms=1_700_000_000_000,
        catalog_record=b"opaque",
    )
    return header, list(shard.fragments), list(shard.checksums)


def batches(frags: list[bytes], sums: list[bytes], per: int = 2) -> Iterator[RowBatch]:
    for i in range(0, len(frags), per):
        yield RowBatch(i, frags[i : i + per], sums[i : i + per])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShardStore]:
    with ShardStore(tmp_path / "node", capacity_bytes=4 << 20, simulation=True) as s:
        yield s


def test_put_read_head_delete_round_trip(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    info = store.put(header, batches(frags, sums))
    assert info.stored_bytes == store.required_bytes(header) == store.used_bytes()
    assert store.shard_count() == 1
    assert store.head(header.shard_id).header == header
    reads = list(store.read_rows(header.shard_id, range(header.row_count)))
    assert [r.fragment for r in reads] == frags
    assert [r.checksum for r in reads] == sums
    assert [r.fragment for r in store.read_rows(header.shard_id, [3, 1])] == [frags[3], frags[1]]
    assert store.delete(header.shard_id) == info.stored_bytes
    assert store.used_bytes() == 0 and store.shard_count() == 0
    assert store.delete(header.shard_id) == 0
    with pytest.raises(NotFound):
        store.head(header.shard_id)


def test_store_reopens_with_the_same_identity(tmp_path: Path) -> None:
    header, frags, sums = make_shard()
    with ShardStore(tmp_path / "n", capacity_bytes=1 << 20) as s:
        node_id = s.node_id
        s.put(header, batches(frags, sums))
    with ShardStore(tmp_path / "n", capacity_bytes=1 << 20, create=False) as s:
        assert s.node_id == node_id and not s.simulation
        assert [r.fragment for r in s.read_rows(header.shard_id, range(header.row_count))] == frags
    with pytest.raises(NotFound):
        ShardStore(tmp_path / "absent", capacity_bytes=1 << 20, create=False)


def test_capacity_is_refused_before_any_row_is_read(tmp_path: Path) -> None:
    header, frags, sums = make_shard()
    consumed = []

    def stream() -> Iterator[RowBatch]:
        consumed.append(True)
        yield from batches(frags, sums)

    with ShardStore(tmp_path / "n", capacity_bytes=ShardStore.required_bytes(header) - 1) as s:
        with pytest.raises(ResourceExhausted, match="node full"):
            s.put(header, stream())
        assert not consumed
        assert s.used_bytes() == 0 and s.shard_count() == 0


def test_capacity_counts_what_is_stored(tmp_path: Path) -> None:
    h1, f1, s1 = make_shard()
    with ShardStore(tmp_path / "n", capacity_bytes=ShardStore.required_bytes(h1) + 100) as s:
        s.put(h1, batches(f1, s1))
        h2, f2, s2 = make_shard()
        with pytest.raises(ResourceExhausted):
            s.put(h2, batches(f2, s2))
        s.delete(h1.shard_id)
        s.put(h2, batches(f2, s2))


def test_a_shard_is_stored_once(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    with pytest.raises(AlreadyExists):
        store.put(header, batches(frags, sums))


def lying_streams(frags: list[bytes], sums: list[bytes]) -> dict[str, list[RowBatch]]:
    flipped = bytearray(frags[2])
    flipped[100] ^= 1
    return {
        "out of order": [RowBatch(0, frags[:2], sums[:2]), RowBatch(3, frags[3:], sums[3:])],
        "overlap": [RowBatch(0, frags[:3], sums[:3]), RowBatch(2, frags[2:], sums[2:])],
        "too few rows": [RowBatch(0, frags[:-1], sums[:-1])],
        "too many rows": [RowBatch(0, [*frags, frags[0]], [*sums, sums[0]])],
        "checksum lies": [RowBatch(0, [*frags[:2], bytes(flipped), *frags[3:]], sums)],
        "short fragment": [RowBatch(0, [frags[0][:-1], *frags[1:]], sums)],
        "checksum count": [RowBatch(0, frags, sums[:-1])],
        "short checksum": [RowBatch(0, frags, [sums[0][:16], *sums[1:]])],
        "not a batch": [("rows", frags)],  # type: ignore[list-item]
        "empty stream": [],
    }


@pytest.mark.parametrize(
    "case",
    [
        "out of order",
        "overlap",
        "too few rows",
        "too many rows",
        "checksum lies",
        "short fragment",
        "checksum count",
        "short checksum",
        "not a batch",
        "empty stream",
    ],
)
def test_lying_streams_leave_nothing_behind(store: ShardStore, case: str) -> None:
    header, frags, sums = make_shard()
    with pytest.raises(InvalidArgument):
        store.put(header, iter(lying_streams(frags, sums)[case]))
    assert store.shard_count() == 0 and store.used_bytes() == 0
    with pytest.raises(NotFound):
        store.head(header.shard_id)


def test_a_broken_stream_leaves_nothing_behind(store: ShardStore) -> None:
    header, frags, sums = make_shard()

    def stream() -> Iterator[RowBatch]:
        yield RowBatch(0, frags[:2], sums[:2])
        raise ConnectionResetError("link lost")

    with pytest.raises(ConnectionResetError):
        store.put(header, stream())
    assert store.shard_count() == 0 and store.used_bytes() == 0


def test_damaged_fragments_are_never_returned(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    store.flip_bit(header.shard_id, 2, 8 * 32 + 1000)  # inside row 2's fragment
    reads = {r.row: r for r in store.read_rows(header.shard_id, range(header.row_count))}
    assert reads[2].status is RowStatus.DAMAGED and reads[2].fragment is None
    assert reads[2].checksum == sums[2]
    assert all(reads[r].fragment == frags[r] for r in reads if r != 2)
    check = store.verify_rows(header.shard_id)
    assert check.damaged == [2] and check.checksums_fixed == 0
    # The rebuilt fragment is accepted; garbage is not.
    with pytest.raises(InvalidArgument):
        store.write_row(header.shard_id, 2, frags[3] if len(frags[3]) == len(frags[2]) else frags[2][::-1])
    store.write_row(header.shard_id, 2, frags[2])
    assert store.verify_rows(header.shard_id).damaged == []


def test_damaged_checksums_are_outvoted_and_rewritten(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    store.flip_bit(header.shard_id, 0, 5)  # the checksum beside row 0
    store.flip_bit(header.shard_id, CHECKSUMS, 8 * 32 * 3 + 9)  # row 3's copy in the table
    assert [r.fragment for r in store.read_rows(header.shard_id, range(header.row_count))] == frags
    check = store.verify_rows(header.shard_id)
    assert check.damaged == [] and check.checksums_fixed == 2
    assert store.verify_rows(header.shard_id).checksums_fixed == 0


def test_fragment_and_one_checksum_copy_damaged_is_still_repairable(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    store.flip_bit(header.shard_id, 1, 8 * 32 + 77)  # fragment
    store.flip_bit(header.shard_id, 1, 3)  # and the checksum beside it
    assert store.verify_rows(header.shard_id).damaged == [1]
    store.write_row(header.shard_id, 1, frags[1])  # matches the table copy
    assert store.verify_rows(header.shard_id).damaged == []
    assert [r.checksum for r in store.read_rows(header.shard_id, [1])] == [sums[1]]


def test_header_damage_is_corrected_in_place(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    for bit in (3, 900, 5000):
        store.flip_bit(header.shard_id, HEADER, bit)
    assert store.header(header.shard_id) == header  # corrected in memory on read
    assert store.check_header(header.shard_id) == 3
    assert store.check_header(header.shard_id) == 0


def test_faults_only_on_simulation_stores(tmp_path: Path) -> None:
    header, frags, sums = make_shard()
    with ShardStore(tmp_path / "n", capacity_bytes=1 << 20) as s:
        s.put(header, batches(frags, sums))
        with pytest.raises(FailedPrecondition):
            s.flip_bit(header.shard_id, 0, 1)


def test_fault_targets_are_validated(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    assert store.stored_value_len(header.shard_id, 0) == 32 + len(frags[0])
    assert store.stored_value_len(header.shard_id, CHECKSUMS) == 32 * header.row_count
    for target, bit in [(0, 8 * (32 + len(frags[0]))), ("nonsense", 0), (-1, 0)]:
        with pytest.raises(InvalidArgument):
            store.flip_bit(header.shard_id, target, bit)
    with pytest.raises(NotFound):
        store.flip_bit(os.urandom(32), 0, 0)


def test_list_pages_in_id_order_and_filters_by_object(store: ShardStore) -> None:
    shared = os.urandom(32)
    headers = []
    for i in range(7):
        header, frags, sums = make_shard(data_len=3000, index=i % GEOMETRY.n, object_id=shared if i < 3 else None)
        store.put(header, batches(frags, sums))
        headers.append(header)
    ids = sorted(h.shard_id for h in headers)
    page1 = store.list(limit=4)
    page2 = store.list(after=page1[-1].header.shard_id, limit=4)
    assert [i.header.shard_id for i in page1 + page2] == ids
    assert list(store.shard_ids()) == ids
    mine = store.list(object_id=shared, limit=10)
    assert sorted(i.header.shard_id for i in mine) == sorted(h.shard_id for h in headers[:3])
    with pytest.raises(InvalidArgument):
        store.list(limit=0)


def test_bad_inputs(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    with pytest.raises(InvalidArgument):
        store.head(b"short")
    with pytest.raises(InvalidArgument):
        list(store.read_rows(header.shard_id, [header.row_count]))
    with pytest.raises(InvalidArgument):
        store.write_row(header.shard_id, 0, b"x")
    with pytest.raises(InvalidArgument):
        store.put("header", [])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.put_meta("used_bytes", b"0")
    with pytest.raises(InvalidArgument):
        ShardStore(store.path, capacity_bytes=0)
    store.put_meta("scrub.state", b"{}")
    assert store.get_meta("scrub.state") == b"{}" and store.get_meta("absent") is None


def test_both_checksum_copies_damaged_with_the_fragment_intact(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    store.flip_bit(header.shard_id, 2, 7)  # the checksum beside row 2
    store.flip_bit(header.shard_id, CHECKSUMS, 8 * 32 * 2 + 7)  # and row 2's copy in the table
    assert store.verify_rows(header.shard_id).damaged == [2]
    store.write_row(header.shard_id, 2, frags[2])  # the rebuild reproduces the stored fragment exactly
    assert store.verify_rows(header.shard_id).damaged == []
    assert [r.checksum for r in store.read_rows(header.shard_id, [2])] == [sums[2]]


def test_an_existing_store_opens_with_its_recorded_capacity(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "n", capacity_bytes=3 << 20):
        pass
    with ShardStore(tmp_path / "n", create=False) as s:
        assert s.capacity_bytes == 3 << 20
    with ShardStore(tmp_path / "n", capacity_bytes=5 << 20) as s:  # reconfigured
        assert s.capacity_bytes == 5 << 20
    with ShardStore(tmp_path / "n") as s:
        assert s.capacity_bytes == 5 << 20
    with pytest.raises(InvalidArgument):
        ShardStore(tmp_path / "new")  # a new store needs a capacity


def test_forced_faults_on_a_real_store(tmp_path: Path) -> None:
    header, frags, sums = make_shard()
    with ShardStore(tmp_path / "n", capacity_bytes=1 << 20) as s:
        s.put(header, batches(frags, sums))
        s.flip_bit(header.shard_id, 0, 8 * 40, force=True)
        assert s.verify_rows(header.shard_id).damaged == [0]


def test_listing_survives_a_header_beyond_repair(store: ShardStore) -> None:
    good, f1, s1 = make_shard()
    bad, f2, s2 = make_shard()
    store.put(good, batches(f1, s1))
    store.put(bad, batches(f2, s2))
    for bit in range(0, 8 * store.stored_value_len(bad.shard_id, HEADER), 3):
        store.flip_bit(bad.shard_id, HEADER, bit)
    assert [i.header.shard_id for i in store.list(limit=10)] == [good.shard_id]
    assert store.delete(bad.shard_id) > 0  # still deletable


# --- resumable uploads (scheduled mode) ------------------------------------------------------------

UPLOAD = b"u" * 16
NOW = 1_800_000_000_000


def cut_after(frags: list[bytes], sums: list[bytes], rows: int) -> Iterator[RowBatch]:
    """A transfer that loses signal after `rows` rows."""
    yield from batches(frags[:rows], sums[:rows])
    raise ConnectionResetError("loss of signal")


def test_a_cut_upload_keeps_its_rows_and_resumes_without_resending(store: ShardStore) -> None:
    header, frags, sums = make_shard(data_len=60_000)  # 4 rows (4+2, 4 KiB fragments)
    with pytest.raises(ConnectionResetError):
        store.put_rows(header, UPLOAD, cut_after(frags, sums, 2), now_unix_ms=NOW)
    state = store.upload_state(header.shard_id)
    assert state is not None and state.committed_rows == 2 and not state.complete
    assert store.used_bytes() == store.required_bytes(header)  # reserved, so it cannot fail for room later
    with pytest.raises(NotFound):
        store.head(header.shard_id)  # invisible until complete
    assert store.shard_count() == 0

    sent: list[int] = []

    def rest() -> Iterator[RowBatch]:
        for batch in batches(frags[2:], sums[2:]):
            sent.extend(range(batch.first_row + 2, batch.first_row + 2 + len(batch.fragments)))
            yield RowBatch(batch.first_row + 2, batch.fragments, batch.checksums)

    done = store.put_rows(header, UPLOAD, rest(), now_unix_ms=NOW + 60_000, resume=True)
    assert done.complete and done.committed_rows == header.row_count
    assert sent == list(range(2, header.row_count))  # nothing already received was resent
    assert [r.fragment for r in store.read_rows(header.shard_id, range(header.row_count))] == frags
    assert store.upload_state(header.shard_id) is None
    assert store.used_bytes() == store.required_bytes(header) and store.shard_count() == 1
    assert store.verify_rows(header.shard_id).damaged == []


def test_resume_may_resend_committed_rows_but_they_must_match(store: ShardStore) -> None:
    header, frags, sums = make_shard(data_len=60_000)
    with pytest.raises(ConnectionResetError):
        store.put_rows(header, UPLOAD, cut_after(frags, sums, 2), now_unix_ms=NOW)
    lying = [sums[0], b"x" * 32, *sums[2:]]
    with pytest.raises(InvalidArgument, match="differs from the row already committed"):
        store.put_rows(header, UPLOAD, batches(frags, lying), now_unix_ms=NOW, resume=True)
    done = store.put_rows(header, UPLOAD, batches(frags, sums), now_unix_ms=NOW, resume=True)  # from row 0
    assert done.complete
    assert [r.fragment for r in store.read_rows(header.shard_id, range(header.row_count))] == frags


def test_sender_closing_early_gets_an_incomplete_state(store: ShardStore) -> None:
    header, frags, sums = make_shard(data_len=60_000)
    state = store.put_rows(header, UPLOAD, batches(frags[:3], sums[:3]), now_unix_ms=NOW)
    assert (state.committed_rows, state.complete, state.expires_unix_ms > NOW) == (3, False, True)


def test_duplicate_delivery_of_a_complete_shard_is_harmless(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put_rows(header, UPLOAD, batches(frags, sums), now_unix_ms=NOW)
    again = store.put_rows(header, b"v" * 16, batches(frags, sums), now_unix_ms=NOW)
    assert again.complete and store.shard_count() == 1
    with pytest.raises(AlreadyExists):  # an all-or-nothing put of a stored shard is still refused
        store.put(header, batches(frags, sums))


def test_resume_needs_a_matching_partial_upload(store: ShardStore) -> None:
    header, frags, sums = make_shard(data_len=60_000)
    with pytest.raises(FailedPrecondition, match="no partial upload"):
        store.put_rows(header, UPLOAD, batches(frags, sums), now_unix_ms=NOW, resume=True)
    store.put_rows(header, UPLOAD, batches(frags[:1], sums[:1]), now_unix_ms=NOW)
    with pytest.raises(FailedPrecondition, match="does not match"):
        store.put_rows(header, b"w" * 16, batches(frags, sums), now_unix_ms=NOW, resume=True)
    with pytest.raises(InvalidArgument):
        store.put_rows(header, b"short", batches(frags, sums), now_unix_ms=NOW)


def test_expired_and_deleted_uploads_free_their_reservation(store: ShardStore) -> None:
    a, fa, sa = make_shard(data_len=60_000)
    b, fb, sb = make_shard(data_len=60_000)
    store.put_rows(a, UPLOAD, batches(fa[:1], sa[:1]), now_unix_ms=NOW, ttl_ms=1000)
    store.put_rows(b, UPLOAD, batches(fb[:1], sb[:1]), now_unix_ms=NOW, ttl_ms=10_000)
    assert store.expire_uploads(NOW + 5000) == 1
    assert store.upload_state(a.shard_id) is None and store.upload_state(b.shard_id) is not None
    assert store.delete(b.shard_id) == store.required_bytes(b)
    assert store.used_bytes() == 0 and store.upload_state(b.shard_id) is None


def test_a_whole_put_supersedes_a_partial_upload(store: ShardStore) -> None:
    header, frags, sums = make_shard(data_len=60_000)
    store.put_rows(header, UPLOAD, batches(frags[:2], sums[:2]), now_unix_ms=NOW)
    store.put(header, batches(frags, sums))
    assert store.upload_state(header.shard_id) is None
    assert store.used_bytes() == store.required_bytes(header)
    assert [r.fragment for r in store.read_rows(header.shard_id, range(header.row_count))] == frags


def test_flipped_fragment_bits_are_corrected_on_the_node_alone(store: ShardStore) -> None:
    """Upsets are mostly single bits: the node undoes up to two per 4 KiB block without peers."""
    from orbitvault.storage.scrubber import Scrubber

    header, frags, sums = make_shard(data_len=100_000)  # 4 KiB + 80-byte fragments: two blocks each
    store.put(header, batches(frags, sums))
    base = 8 * 32  # bits of the stored value before the fragment (its checksum)
    store.flip_bit(header.shard_id, 0, base + 3)  # one bit
    store.flip_bit(header.shard_id, 1, base + 100)  # an adjacent pair, a multi-bit upset
    store.flip_bit(header.shard_id, 1, base + 101)
    store.flip_bit(header.shard_id, 2, base + 8 * 100)  # one bit in each of two blocks
    store.flip_bit(header.shard_id, 2, base + 8 * 4100)
    for b in (base + 40, base + 42, base + 47):  # three in one block: beyond the node
        store.flip_bit(header.shard_id, 3, b)
    store.flip_bit(header.shard_id, 4, base + 8)  # the fragment and the checksum beside it
    store.flip_bit(header.shard_id, 4, 8)
    assert store.verify_rows(header.shard_id).damaged == [0, 1, 2, 3, 4]
    result = Scrubber(store, None).run_pass()  # no peers at all
    assert (result.damaged_found, result.repaired_in_place, result.repaired_from_peers) == (5, 4, 0)
    assert [(d.shard_id, d.rows) for d in result.unrecoverable_damage] == [(header.shard_id, [3])]
    reads = {r.row: r for r in store.read_rows(header.shard_id, range(5))}
    assert [reads[r].fragment == frags[r] for r in range(5)] == [True, True, True, False, True]


def test_rows_of_resumed_uploads_are_correctable_too(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put_rows(header, UPLOAD, batches(frags, sums), now_unix_ms=NOW)
    store.flip_bit(header.shard_id, 1, 8 * 32 + 77)
    assert store.correct_rows(header.shard_id, [1]) == [1]
    assert store.verify_rows(header.shard_id).damaged == []
    store.delete(header.shard_id)
    store.put(header, batches(frags, sums))  # stored again under the same id: fresh CRCs, no leftovers
    store.flip_bit(header.shard_id, 2, 8 * 32 + 5)
    assert store.correct_rows(header.shard_id, [2]) == [2]


def test_a_damaged_crc_record_is_rewritten_and_never_misleads(store: ShardStore) -> None:
    """Radiation hits the CRC records too: the scrub rewrites a damaged one from the verified
    fragment, and a damaged record next to a damaged fragment leaves the row to the peers."""
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    key = header.shard_id + (1).to_bytes(4, "big")
    crcs = store._env.open_db(b"crcs")

    def hit_record() -> None:
        with store._env.begin(write=True) as txn:
            record = bytearray(txn.get(key, db=crcs))
            record[2] ^= 0x10
            txn.put(key, bytes(record), db=crcs)

    hit_record()
    check = store.verify_rows(header.shard_id)
    assert (check.damaged, check.checksums_fixed) == ([], 1)  # rewritten from the intact fragment
    store.flip_bit(header.shard_id, 1, 8 * 32 + 50)
    assert store.correct_rows(header.shard_id, [1]) == [1]  # the rewritten record works

    hit_record()
    store.flip_bit(header.shard_id, 1, 8 * 32 + 50)
    assert store.correct_rows(header.shard_id, [1]) == []  # no guessing from a damaged record
    store.write_row(header.shard_id, 1, frags[1])  # the peers' rebuild, which refreshes the record
    store.flip_bit(header.shard_id, 1, 8 * 32 + 51)
    assert store.correct_rows(header.shard_id, [1]) == [1]


def test_rows_stored_before_block_crcs_get_them_from_the_scrub(store: ShardStore) -> None:
    header, frags, sums = make_shard()
    store.put(header, batches(frags, sums))
    crcs = store._env.open_db(b"crcs")
    with store._env.begin(write=True) as txn:  # as a store written by an older version has it
        for r in range(header.row_count):
            txn.delete(header.shard_id + r.to_bytes(4, "big"), db=crcs)
    store.flip_bit(header.shard_id, 0, 8 * 32 + 9)
    assert store.correct_rows(header.shard_id, [0]) == []  # nothing to correct from yet
    store.write_row(header.shard_id, 0, frags[0])
    check = store.verify_rows(header.shard_id)
    assert (check.damaged, check.checksums_fixed) == ([], 0)  # added, not counted as damage
    store.flip_bit(header.shard_id, 2, 8 * 32 + 9)
    assert store.correct_rows(header.shard_id, [2]) == [2]
