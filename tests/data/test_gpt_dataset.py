"""GPT dataset semantics: windows, epochs, shuffling, splits; checked against Megatron's loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import data_args, unique_token_documents, write_documents
from goldtron.data.errors import DataError
from goldtron.data.gpt_dataset import build_gpt_indices, build_sample_index, count_epochs, sample_index_by_loop
from goldtron.data.indexed_dataset import IndexedDataset
from goldtron.data.provider import build_datasets, build_tokenizer
from goldtron.data.split import parse_split, split_document_ranges


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30), seq_length=st.integers(1, 40),
       epochs=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_vectorized_sample_index_equals_megatron_loop(sizes, seq_length, epochs, seed):
    sizes = np.array(sizes)
    document_index = np.tile(np.arange(len(sizes)), epochs)
    np.random.RandomState(seed).shuffle(document_index)
    if sizes[document_index].sum() < 2:
        return
    expected = sample_index_by_loop(sizes, document_index, seq_length)
    assert np.array_equal(build_sample_index(sizes, document_index, seq_length), expected)


def test_epoch_count_matches_megatron_loop():
    for tokens_per_epoch, seq, samples in [(100, 10, 9), (100, 10, 10), (100, 10, 0), (7, 16, 50), (1000, 1, 999)]:
        epochs, tokens = 0, 0
        while True:  # Megatron's loop
            epochs += 1
            tokens += tokens_per_epoch
            if (tokens - 1) // seq >= samples:
                break
        assert count_epochs(tokens_per_epoch, seq, samples) == epochs


def test_split_matches_megatron_rounding():
    assert parse_split("949,50,1") == pytest.approx([0.949, 0.05, 0.001])
    assert parse_split("1") == [1.0, 0.0, 0.0]
    assert split_document_ranges(1000, parse_split("949,50,1")) == [(0, 949), (949, 999), (999, 1000)]
    # Python rounds halves to even (1.5 -> 2, 2.5 -> 2); the surplus or shortfall is taken off
    # every boundary after the first, so the last split ends at N.
    assert split_document_ranges(3, [0.5, 0.5, 0.0]) == [(0, 1), (1, 3), (3, 3)]
    assert split_document_ranges(10, [0.25, 0.25, 0.5]) == [(0, 3), (3, 5), (5, 10)]
    with pytest.raises(DataError, match="--split 'a,b'"):
        parse_split("a,b")


def samples_in_stream_order(dataset):
    """Samples ordered as they were cut from the stream (undoing the sample shuffle)."""
    order = np.argsort(dataset.shuffle_index, kind="stable")
    return [dataset[int(i)] for i in order]


def test_one_epoch_uses_every_token_once_with_one_token_overlap(tmp_path):
    lengths = np.random.RandomState(3).randint(1, 40, size=50)
    prefix = write_documents(tmp_path / "u", unique_token_documents(lengths))
    dataset_tokens = IndexedDataset(prefix)
    documents = np.arange(50)
    seq = 8
    num_samples = (int(lengths.sum()) - 1) // seq  # everything one epoch offers
    indices = build_gpt_indices(dataset_tokens.sequence_lengths, documents, seq, num_samples, seed=5)
    from goldtron.data.gpt_dataset import GPTDataset

    dataset = GPTDataset(dataset_tokens, indices, seq, None, "u")
    assert len(dataset) == num_samples
    samples = samples_in_stream_order(dataset)
    assert all(len(sample) == seq + 1 for sample in samples)
    for previous, following in zip(samples, samples[1:]):
        assert previous[-1] == following[0]  # the last label is the next sample's first input
    inputs = np.concatenate([sample[:-1] for sample in samples] + [samples[-1][-1:]])
    assert len(set(inputs.tolist())) == len(inputs)  # no token used twice in one epoch
    stream = np.concatenate([dataset_tokens[int(d)] for d in indices["document_index"]])
    assert np.array_equal(inputs, stream[: len(inputs)])
    assert len(stream) - len(inputs) < seq  # only the tail that cannot fill a window is left
    assert sorted(indices["document_index"].tolist()) == documents.tolist()  # each document once


def test_later_epochs_repeat_every_document(tmp_path):
    prefix = write_documents(tmp_path / "e", unique_token_documents([5] * 10))
    lengths = IndexedDataset(prefix).sequence_lengths
    indices = build_gpt_indices(lengths, np.arange(10), seq_length=4, num_samples=30, seed=1)
    counts = np.bincount(indices["document_index"], minlength=10)
    assert counts.tolist() == [counts[0]] * 10 and counts[0] == count_epochs(50, 4, 30)


def test_same_seed_same_order_other_seed_other_order(unique_prefix):
    args = data_args(data_path=[unique_prefix])
    tokenizer = build_tokenizer(args)
    first, _, _ = build_datasets(args, tokenizer, 100, 0, 0)
    again, _, _ = build_datasets(data_args(data_path=[unique_prefix], data_cache_path=None), tokenizer, 100, 0, 0)
    other, _, _ = build_datasets(data_args(data_path=[unique_prefix], seed=99), tokenizer, 100, 0, 0)
    assert all(np.array_equal(first[i], again[i]) for i in range(len(first)))
    assert any(not np.array_equal(first[i], other[i]) for i in range(20))


def test_splits_are_disjoint(unique_prefix):
    args = data_args(data_path=[unique_prefix], split="80,20,0")
    train, valid, test = build_datasets(args, build_tokenizer(args), 50, 20, 0)
    assert test is None
    train_tokens = set(np.concatenate([train[i] for i in range(len(train))]).tolist())
    valid_tokens = set(np.concatenate([valid[i] for i in range(len(valid))]).tolist())
    assert train_tokens and valid_tokens and not train_tokens & valid_tokens


def test_token_beyond_vocabulary_is_named(tmp_path):
    prefix = write_documents(tmp_path / "big_ids", [[5, 70000, 3, 4]] * 10)
    args = data_args(data_path=[prefix], vocab_size=1000, seq_length=3, split="1")
    train, _, _ = build_datasets(args, build_tokenizer(args), 5, 0, 0)
    with pytest.raises(DataError, match=r"big_ids.*token id 70000 >= .* vocabulary size 1001"):
        [train[i] for i in range(len(train))]


def test_weighted_blend_follows_weights(tmp_path):
    a = write_documents(tmp_path / "a", unique_token_documents([30] * 40))
    b = write_documents(tmp_path / "b", unique_token_documents([30] * 40, first_token=10_000))
    args = data_args(data_path=["0.25", a, "0.75", b], split="1")
    train, _, _ = build_datasets(args, build_tokenizer(args), 400, 0, 0)
    assert len(train) == 400
    from_b = sum(int(train[i][0]) >= 10_000 for i in range(400))
    assert from_b == 300  # the greedy interleave hits the weights exactly at multiples of 4
    with pytest.raises(DataError, match="--data-path 0.25 .*pairs of a positive weight"):
        build_datasets(data_args(data_path=["0.25", a, b]), build_tokenizer(args), 10, 0, 0)


def test_mock_data_is_deterministic_and_in_vocabulary():
    args = data_args(mock_data=True, vocab_size=500, seq_length=64)
    tokenizer = build_tokenizer(args)
    first, valid, _ = build_datasets(args, tokenizer, 50, 10, 0)
    again, _, _ = build_datasets(args, tokenizer, 50, 10, 0)
    other, _, _ = build_datasets(data_args(mock_data=True, vocab_size=500, seq_length=64, seed=7), tokenizer, 50, 0, 0)
    assert all(np.array_equal(first[i], again[i]) for i in range(50))
    assert not all(np.array_equal(first[i], other[i]) for i in range(50))
    tokens = np.concatenate([first[i] for i in range(50)])
    assert tokens.min() >= 0 and tokens.max() <= tokenizer.eod and (tokens == tokenizer.eod).any()
    assert len(valid) >= 10
