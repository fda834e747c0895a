"""The GPT dataset: fixed windows of seq_length + 1 tokens cut across document boundaries.

Megatron's semantics, which decide the order every sample is seen in:
- A split's documents are repeated for as many epochs as `num_samples` needs; each epoch's
  documents are shuffled with one numpy RandomState(seed) (the last epoch separately when it is
  used for less than 80% of its samples, so a short tail does not reshuffle the whole run).
- The shuffled documents are laid end to end; sample i is the tokens at positions
  [i*seq, i*seq + seq + 1), so consecutive samples overlap by exactly one token (the last input
  of one sample is the first label of the next) and no token is skipped.
- The samples are shuffled again with the same RandomState.
The three index arrays (document order, sample start, sample order) are built once and cached.
"""

from __future__ import annotations

import math

import numpy as np

from goldtron.data.errors import DataError

# Megatron's threshold: a final epoch used for less than this fraction is shuffled on its own.
SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80


def count_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Fewest epochs (at least one) whose tokens make `num_samples` windows of seq + 1 tokens."""
    return max(1, math.ceil((num_samples * seq_length + 1) / tokens_per_epoch))


def needs_separate_final_epoch(tokens_per_epoch: int, seq_length: int, num_samples: int, num_epochs: int) -> bool:
    if num_epochs == 1:
        return False
    samples_before_final_epoch = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
    samples_per_epoch = (tokens_per_epoch - 1) // seq_length
    samples_from_final_epoch = num_samples - samples_before_final_epoch
    return samples_from_final_epoch < int(SEPARATE_FINAL_EPOCH_THRESHOLD * samples_per_epoch)


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState, separate_final_epoch: bool) -> np.ndarray:
    """Documents repeated num_epochs times, shuffled (final epoch apart when asked)."""
    if separate_final_epoch:
        first = build_document_index(documents, num_epochs - 1, rng, False)
        last = build_document_index(documents, 1, rng, False)
        return np.concatenate((first, last))
    order = np.tile(np.asarray(documents, dtype=np.int64), num_epochs)
    rng.shuffle(order)
    return order


def build_sample_index(sequence_lengths: np.ndarray, document_index: np.ndarray, seq_length: int) -> np.ndarray:
    """[num_samples + 1, 2] array of (position in document_index, token offset) where each
    sample starts; sample i ends (inclusive of its extra label token) where sample i + 1 starts."""
    lengths = np.asarray(sequence_lengths, dtype=np.int64)[document_index]
    starts = np.concatenate(([0], np.cumsum(lengths)))
    num_samples = (int(starts[-1]) - 1) // seq_length
    # Sample i starts at token i * seq_length, in the document e with starts[e] <= it < starts[e+1]
    # (an empty document holds no start). Document e's first sample is ceil(starts[e] / seq_length),
    # so each document's count of starts is a difference: the samples then come out in one pass
    # (a search per sample took seconds for the ~25M samples of a short --seq-length on mock data).
    first_sample = np.minimum(-(-starts // seq_length), num_samples + 1)
    starts_per_document = np.diff(first_sample)
    result = np.empty((num_samples + 1, 2), dtype=np.int64)
    result[:, 0] = np.repeat(np.arange(len(lengths), dtype=np.int64), starts_per_document)
    np.multiply(np.arange(num_samples + 1, dtype=np.int64), seq_length, out=result[:, 1])
    result[:, 1] -= np.repeat(starts[:-1], starts_per_document)
    return result


def sample_index_by_loop(sequence_lengths, document_index, seq_length: int) -> np.ndarray:
    """The same array as build_sample_index, by Megatron's sequential walk (its C++ helper).

    Kept as the readable specification: tests and the benchmark check the vectorised version
    against it. Too slow for real use (one Python step per document crossed).
    """
    total = int(sum(int(sequence_lengths[d]) for d in document_index))
    num_samples = (total - 1) // seq_length
    result = np.zeros((num_samples + 1, 2), dtype=np.int64)
    entry, offset = 0, 0
    for sample in range(1, num_samples + 1):
        remaining = seq_length + 1
        while remaining:
            length = int(sequence_lengths[document_index[entry]]) - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - 1  # the last token read is the next sample's first
                remaining = 0
            else:
                entry, offset = entry + 1, 0
        result[sample] = (entry, offset)
    return result


def build_shuffle_index(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Sample order: the first num_samples shuffled, then the rest shuffled on their own."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_gpt_indices(sequence_lengths: np.ndarray, documents: np.ndarray, seq_length: int, num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """The three index arrays of one split, exactly as Megatron orders them."""
    tokens_per_epoch = int(np.asarray(sequence_lengths, dtype=np.int64)[documents].sum())
    if tokens_per_epoch < 2:
        raise DataError(f"the split's {len(documents)} documents hold {tokens_per_epoch} tokens; a sample needs at least 2")
    num_epochs = count_epochs(tokens_per_epoch, seq_length, num_samples)
    separate = needs_separate_final_epoch(tokens_per_epoch, seq_length, num_samples, num_epochs)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(documents, num_epochs, rng, separate)
    sample_index = build_sample_index(sequence_lengths, document_index, seq_length)
    total = len(sample_index) - 1
    shuffled = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length if separate else total
    shuffle_index = build_shuffle_index(shuffled, total, rng)
    return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


class GPTDataset:
    """Samples of seq_length + 1 tokens (int64) from one split of a tokenized corpus.

    `tokens` is anything with `sequence_lengths` and `get(sequence, offset, length)`: an
    IndexedDataset or the mock documents.
    """

    def __init__(self, tokens, indices: dict[str, np.ndarray], seq_length: int, vocab_size: int | None, name: str):
        self.tokens = tokens
        self.document_index = indices["document_index"]
        self.sample_index = indices["sample_index"]
        self.shuffle_index = indices["shuffle_index"]
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.name = name

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range ({len(self)} samples)")
        sample = int(self.shuffle_index[index])
        first_entry, first_offset = (int(v) for v in self.sample_index[sample])
        last_entry, last_offset = (int(v) for v in self.sample_index[sample + 1])
        document = self.document_index
        if first_entry == last_entry:
            parts = [self.tokens.get(int(document[first_entry]), first_offset, last_offset - first_offset + 1)]
        else:
            parts = [self.tokens.get(int(document[first_entry]), first_offset)]
            parts += [self.tokens.get(int(document[entry])) for entry in range(first_entry + 1, last_entry)]
            parts.append(self.tokens.get(int(document[last_entry]), 0, last_offset + 1))
        result = np.concatenate(parts).astype(np.int64)
        if self.vocab_size is not None and result.size and int(result.max()) >= self.vocab_size:
            raise DataError(
                f"{self.name}: token id {int(result.max())} >= the tokenizer's vocabulary size {self.vocab_size}; "
                f"the data was tokenized with another tokenizer (check --tokenizer-type / --vocab-size)"
            )
        return result
