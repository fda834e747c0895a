"""Megatron's indexed dataset: `<prefix>.bin` holds the raw tokens, `<prefix>.idx` the index.

`.idx` layout (little endian), byte for byte what Megatron writes:

    b"MMIDIDX\\x00\\x00"          9 bytes magic
    u64 version = 1
    u8  dtype code               1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    u64 S = sequence count
    u64 D = document count + 1
    int32[S] sequence lengths    in tokens
    int64[S] sequence pointers   byte offset of each sequence in .bin
    int64[D] document indices    sequence index where each document starts, then S

A "sequence" is what the GPT dataset indexes (preprocessing writes one per document).
The reader memory-maps both files and checks every size against the index, so a truncated
or foreign file is named in an error instead of yielding garbage tokens.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from goldtron.data.errors import DataError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_MAGIC) + 8 + 1 + 8 + 8

DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 while every id fits with room to spare, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.idx")


class IndexedDatasetWriter:
    """Appends documents to `<prefix>.bin`; `finalize()` writes `<prefix>.idx`.

    Use as a context manager; the index is written only when the block ends without error,
    so a failed run never leaves a valid-looking dataset behind.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise DataError(f"{self.prefix}: token dtype {self.dtype} has no Megatron dtype code")
        self._bin = open(bin_path(prefix), "wb")
        self._sequence_lengths: list[int] = []
        self._document_indices: list[int] = [0]

    def add_document(self, tokens, sequence_lengths: list[int] | None = None) -> None:
        """Append one document; by default it is a single sequence of all its tokens."""
        array = np.asarray(tokens, dtype=self.dtype)
        lengths = [len(array)] if sequence_lengths is None else list(sequence_lengths)
        if sum(lengths) != len(array):
            raise ValueError(f"sequence lengths {lengths} do not add up to {len(array)} tokens")
        if len(array):
            self._bin.write(array.tobytes(order="C"))
            self._sequence_lengths.extend(lengths)
        self._document_indices.append(len(self._sequence_lengths))

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.asarray(self._sequence_lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64)) * self.dtype.itemsize
        documents = np.asarray(self._document_indices, dtype=np.int64)
        with open(idx_path(self.prefix), "wb") as index:
            index.write(INDEX_MAGIC)
            index.write(struct.pack("<Q", INDEX_VERSION))
            index.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            index.write(struct.pack("<Q", len(lengths)))
            index.write(struct.pack("<Q", len(documents)))
            index.write(lengths.astype("<i4").tobytes())
            index.write(pointers.astype("<i8").tobytes())
            index.write(documents.astype("<i8").tobytes())

    def close_without_index(self) -> None:
        """Stop writing without an index (after a failure); safe to call more than once."""
        self._bin.close()

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.finalize()
        else:
            self.close_without_index()


class IndexedDataset:
    """Read-only, memory-mapped view of `<prefix>.{bin,idx}`."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        index_file, data_file = idx_path(prefix), bin_path(prefix)
        for path in (index_file, data_file):
            if not path.is_file():
                raise DataError(
                    f"{path}: no such file; --data-path takes the prefix of a .bin/.idx pair "
                    f"(written by `goldtron data preprocess`), without the extension"
                )
        self._read_index(index_file)
        self._check_data_size(data_file)
        if data_file.stat().st_size:
            self._tokens = np.memmap(data_file, dtype=self.dtype, mode="r")
        else:  # numpy cannot map an empty file
            self._tokens = np.empty(0, dtype=self.dtype)

    def _read_index(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as index:
            header = index.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or header[: len(INDEX_MAGIC)] != INDEX_MAGIC:
            raise DataError(f"{path}: not a Megatron index file (wrong magic); rebuild it with `goldtron data preprocess`")
        version, code, sequence_count, document_count = struct.unpack("<QBQQ", header[len(INDEX_MAGIC):])
        if version != INDEX_VERSION:
            raise DataError(f"{path}: index version {version}, only version {INDEX_VERSION} is supported; rebuild it")
        if code not in DTYPE_CODES:
            raise DataError(f"{path}: unknown token dtype code {code}; the file is corrupt, rebuild it")
        expected = HEADER_SIZE + sequence_count * (4 + 8) + document_count * 8
        if size != expected:
            raise DataError(
                f"{path}: {size} bytes but its header (S={sequence_count}, D={document_count}) needs "
                f"{expected}; the file is truncated or corrupt, rebuild it"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        offset = HEADER_SIZE
        self.sequence_lengths = np.frombuffer(mapped, dtype="<i4", count=sequence_count, offset=offset)
        offset += 4 * sequence_count
        self.sequence_pointers = np.frombuffer(mapped, dtype="<i8", count=sequence_count, offset=offset)
        offset += 8 * sequence_count
        self.document_indices = np.frombuffer(mapped, dtype="<i8", count=document_count, offset=offset)
        if document_count < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != sequence_count:
            raise DataError(f"{path}: document indices do not run from 0 to {sequence_count}; the file is corrupt, rebuild it")
        # Sequences are stored back to back, so every pointer is the previous one plus its bytes.
        expected_pointers = np.concatenate(([0], np.cumsum(self.sequence_lengths[:-1], dtype=np.int64))) * self.dtype.itemsize
        if sequence_count and not np.array_equal(self.sequence_pointers, expected_pointers):
            raise DataError(f"{path}: sequence pointers do not follow the sequence lengths; the file is corrupt, rebuild it")

    def _check_data_size(self, path: Path) -> None:
        itemsize = self.dtype.itemsize
        expected = int(self.sequence_lengths.sum(dtype=np.int64)) * itemsize
        actual = path.stat().st_size
        if actual != expected:
            raise DataError(
                f"{path}: {actual} bytes but {idx_path(self.prefix).name} describes {expected} "
                f"({expected // itemsize} tokens of {self.dtype}); the .bin and .idx do not belong "
                f"together or one is truncated, rebuild them"
            )

    def __len__(self) -> int:
        """Number of sequences (the unit the GPT dataset indexes)."""
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def get(self, sequence: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of one sequence, as a view into the mapped file."""
        start = int(self.sequence_pointers[sequence]) // self.dtype.itemsize + offset
        if length is None:
            length = int(self.sequence_lengths[sequence]) - offset
        return self._tokens[start : start + length]

    def __getitem__(self, sequence: int) -> np.ndarray:
        return self.get(sequence)
