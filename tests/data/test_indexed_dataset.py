"""The .bin/.idx writer matches Megatron's format byte for byte; the reader checks every size."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goldtron.data.errors import DataError
from goldtron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, token_dtype_for_vocab

# Two documents [1, 2, 3] and [4, 5] as uint16, written out by hand from the documented layout.
HAND_BUILT_IDX = bytes.fromhex(
    "4d4d494449445800 00"  # magic MMIDIDX\0\0
    "0100000000000000"  # version 1
    "08"  # dtype code 8 = uint16
    "0200000000000000"  # S = 2 sequences
    "0300000000000000"  # D = 2 documents + 1
    "03000000 02000000"  # lengths
    "0000000000000000 0600000000000000"  # byte pointers
    "0000000000000000 0100000000000000 0200000000000000"  # document indices
)
HAND_BUILT_BIN = bytes.fromhex("0100 0200 0300 0400 0500")


def write(prefix, documents, dtype=np.uint16):
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for document in documents:
            writer.add_document(document)


def test_writer_matches_hand_built_bytes(tmp_path):
    prefix = tmp_path / "tiny"
    write(prefix, [[1, 2, 3], [4, 5]])
    assert (tmp_path / "tiny.idx").read_bytes() == HAND_BUILT_IDX
    assert (tmp_path / "tiny.bin").read_bytes() == HAND_BUILT_BIN


def test_reader_reads_hand_built_files(tmp_path):
    (tmp_path / "hand.idx").write_bytes(HAND_BUILT_IDX)
    (tmp_path / "hand.bin").write_bytes(HAND_BUILT_BIN)
    dataset = IndexedDataset(tmp_path / "hand")
    assert len(dataset) == 2 and dataset.num_documents == 2
    assert dataset[0].tolist() == [1, 2, 3]
    assert dataset.get(1, offset=1).tolist() == [5]
    assert dataset.get(0, offset=1, length=1).tolist() == [2]


def test_megatron_dtype_choice():
    assert token_dtype_for_vocab(50257) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32


documents_strategy = st.lists(st.lists(st.integers(0, 2**16 - 1), max_size=40), max_size=30)


@settings(max_examples=60, deadline=None)
@given(documents=documents_strategy, wide=st.booleans())
def test_round_trip_random_documents(tmp_path_factory, documents, wide):
    dtype = np.int32 if wide else np.uint16
    prefix = tmp_path_factory.mktemp("rt") / "docs"
    write(prefix, documents, dtype)
    dataset = IndexedDataset(prefix)
    assert dataset.dtype == dtype
    # Empty documents hold no sequence; the rest are one sequence each.
    non_empty = [document for document in documents if document]
    assert [dataset[i].tolist() for i in range(len(dataset))] == non_empty
    assert dataset.num_documents == len(documents)


@pytest.fixture
def good_prefix(tmp_path):
    prefix = tmp_path / "good"
    write(prefix, [[1, 2, 3], [4, 5]])
    return prefix


def test_missing_files_are_named(good_prefix):
    good_prefix.with_suffix(".bin").unlink()
    with pytest.raises(DataError, match=r"good\.bin: no such file"):
        IndexedDataset(good_prefix)
    with pytest.raises(DataError, match=r"other\.idx: no such file"):
        IndexedDataset(good_prefix.parent / "other")


def patch_idx(prefix, offset, raw):
    path = prefix.with_suffix(".idx")
    data = bytearray(path.read_bytes())
    data[offset : offset + len(raw)] = raw
    path.write_bytes(bytes(data))


def test_wrong_magic_is_named(good_prefix):
    patch_idx(good_prefix, 0, b"XXXXXXX")
    with pytest.raises(DataError, match=r"good\.idx: not a Megatron index file"):
        IndexedDataset(good_prefix)


def test_wrong_version_is_named(good_prefix):
    patch_idx(good_prefix, 9, struct.pack("<Q", 2))
    with pytest.raises(DataError, match=r"good\.idx: index version 2"):
        IndexedDataset(good_prefix)


def test_truncated_index_is_named(good_prefix):
    path = good_prefix.with_suffix(".idx")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"good\.idx: .*truncated"):
        IndexedDataset(good_prefix)


def test_bin_size_mismatch_is_named(good_prefix):
    path = good_prefix.with_suffix(".bin")
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(DataError, match=r"good\.bin: 12 bytes but good\.idx describes 10"):
        IndexedDataset(good_prefix)


def test_bad_pointers_are_named(good_prefix):
    patch_idx(good_prefix, 34 + 8 + 8, struct.pack("<q", 4))  # second pointer 6 -> 4
    with pytest.raises(DataError, match="pointers"):
        IndexedDataset(good_prefix)
