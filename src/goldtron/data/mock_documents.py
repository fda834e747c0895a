"""`--mock-data`: synthetic documents, the same for the same seed, nothing read from disk.

Like Megatron's mock dataset: 100000 documents with lengths drawn from the seed in [1, 4096);
document d holds the counting sequence d, d+1, ... (mod the vocabulary, so a model can learn it
and the loss falls) and ends with the end-of-document id. It offers the two things the GPT
dataset reads from an IndexedDataset: `sequence_lengths` and `get`.
"""

from __future__ import annotations

import numpy as np

MOCK_DOCUMENTS = 100_000
MOCK_MAX_DOCUMENT_LENGTH = 4096


class MockDocuments:
    def __init__(self, seed: int, vocab_size: int, eod: int):
        if vocab_size < 2:
            raise ValueError("mock data needs a vocabulary of at least 2 tokens")
        rng = np.random.default_rng(seed)
        self.sequence_lengths = rng.integers(1, MOCK_MAX_DOCUMENT_LENGTH, size=MOCK_DOCUMENTS, dtype=np.int32)
        # Counting tokens stay below the last id, which both tokenizers use as eod.
        self.modulus = vocab_size - 1
        self.eod = eod
        self.prefix = f"mock(seed={seed})"

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def get(self, sequence: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        size = int(self.sequence_lengths[sequence])
        if length is None:
            length = size - offset
        positions = np.arange(offset, offset + length, dtype=np.int64)
        tokens = (sequence + positions) % self.modulus
        tokens[positions == size - 1] = self.eod
        return tokens
