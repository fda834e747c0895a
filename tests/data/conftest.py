"""Shared helpers for the data tests: small indexed datasets whose tokens tell where they came from."""

import argparse

import numpy as np
import pytest

from goldtron.data.indexed_dataset import IndexedDatasetWriter


def write_documents(prefix, documents, dtype=np.int32):
    with IndexedDatasetWriter(prefix, dtype) as writer:
        for document in documents:
            writer.add_document(document)
    return str(prefix)


def unique_token_documents(lengths, first_token=0):
    """Documents whose every token is a distinct id, so a sample shows exactly which tokens it used."""
    documents, next_token = [], first_token
    for length in lengths:
        documents.append(list(range(next_token, next_token + length)))
        next_token += length
    return documents


def data_args(**overrides):
    values = dict(tokenizer_type="NullTokenizer", vocab_file=None, merge_file=None, vocab_size=1_000_000,
                  mock_data=False, data_path=None, seq_length=16, seed=1234, split="949,50,1", data_cache_path=None)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture
def unique_prefix(tmp_path):
    """200 documents of 1..60 tokens, all token ids distinct."""
    lengths = np.random.RandomState(7).randint(1, 61, size=200)
    return write_documents(tmp_path / "unique_text_document", unique_token_documents(lengths))
