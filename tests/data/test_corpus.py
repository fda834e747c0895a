"""The embedded corpus: built on first use, Megatron's file layout, idempotent, safe in parallel."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import data_args
from goldtron.data.corpus import ensure_embedded_corpus, embedded_documents
from goldtron.data.indexed_dataset import IndexedDataset
from goldtron.data.provider import build_datasets, build_tokenizer
from goldtron.data.tokenizer import GPT2BPETokenizer


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    ensure_embedded_corpus(directory)
    return directory


def test_layout_mirrors_megatron_data_path(corpus_dir):
    paths = ensure_embedded_corpus(corpus_dir)
    base = corpus_dir / "text/common_pile/v01_filtered_data"
    assert paths == {
        "prefix": str(base / "my-gpt3_00_text_document"),
        "vocab_file": str(base / "bpe/vocab.json"),
        "merge_file": str(base / "bpe/merges.txt"),
    }
    assert (base / "my-gpt3_00_text_document.bin").is_file() and (base / "bpe/merges.txt").is_file()
    # Megatron's older cases name `text/the_pile/shard00`: the same bytes there
    older = corpus_dir / "text/the_pile/shard00"
    for name in ("my-gpt3_00_text_document.bin", "my-gpt3_00_text_document.idx", "bpe/vocab.json", "bpe/merges.txt"):
        assert (older / name).read_bytes() == (base / name).read_bytes(), name


def test_corpus_holds_the_documents_tokenized_with_eod(corpus_dir):
    paths = ensure_embedded_corpus(corpus_dir)
    tokenizer = GPT2BPETokenizer(paths["vocab_file"], paths["merge_file"])
    dataset = IndexedDataset(paths["prefix"])
    documents = embedded_documents()
    manifest = json.loads((corpus_dir / "goldtron_corpus.json").read_text())
    assert len(dataset) == len(documents) == manifest["documents"]
    assert int(dataset.sequence_lengths.sum()) == manifest["tokens"] > 100_000
    assert dataset.dtype == np.uint16
    for index in (0, len(documents) // 2, len(documents) - 1):
        tokens = dataset[index]
        assert tokens[-1] == tokenizer.eod
        assert tokenizer.detokenize(tokens[:-1]) == documents[index]


def test_second_call_does_not_rebuild(corpus_dir):
    bin_file = corpus_dir / "text/common_pile/v01_filtered_data/my-gpt3_00_text_document.bin"
    before = bin_file.stat().st_mtime_ns
    ensure_embedded_corpus(corpus_dir)
    assert bin_file.stat().st_mtime_ns == before


def test_truncated_corpus_is_rebuilt(tmp_path):
    paths = ensure_embedded_corpus(tmp_path)
    bin_file = paths["prefix"] + ".bin"
    with open(bin_file, "r+b") as handle:
        handle.truncate(100)
    ensure_embedded_corpus(tmp_path)
    assert len(IndexedDataset(paths["prefix"])) > 0  # would raise on a size mismatch


BUILD_IN_CHILD = "import sys; from goldtron.data.corpus import ensure_embedded_corpus; " \
                 "print(ensure_embedded_corpus(sys.argv[1])['prefix'])"


def test_parallel_first_use_is_safe(tmp_path):
    # Three separate processes (not a multiprocessing pool, which hangs if a child cannot
    # import the test module) build the same corpus folder at once.
    children = [subprocess.Popen([sys.executable, "-c", BUILD_IN_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    prefixes = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        prefixes.append(out.strip().splitlines()[-1])
    assert len(set(prefixes)) == 1
    assert len(IndexedDataset(prefixes[0])) == len(embedded_documents())
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".corpus-build-")]
    assert leftovers == []


def test_default_data_is_the_embedded_corpus(corpus_dir, monkeypatch):
    monkeypatch.setenv("GOLDTRON_DATA_DIR", str(corpus_dir))
    args = data_args(tokenizer_type="GPT2BPETokenizer", seq_length=128)
    tokenizer = build_tokenizer(args)
    train, valid, test = build_datasets(args, tokenizer, 64, 16, 0)
    assert len(train) >= 64 and len(valid) >= 16 and test is None
    sample = train[0]
    assert sample.shape == (129,) and sample.dtype == np.int64
    assert tokenizer.detokenize(sample).strip()  # real text, not ids


def test_embedded_corpus_with_too_small_vocabulary_is_refused(corpus_dir, monkeypatch):
    from goldtron.data.errors import DataError

    monkeypatch.setenv("GOLDTRON_DATA_DIR", str(corpus_dir))
    args = data_args(tokenizer_type="NullTokenizer", vocab_size=1000)
    with pytest.raises(DataError, match="embedded corpus is GPT-2 BPE tokens"):
        build_datasets(args, build_tokenizer(args), 8, 0, 0)


@pytest.mark.parametrize("folder", ["text/common_pile/v01_filtered_data", "text/the_pile/shard00"])
def test_megatron_config_paths_build_the_corpus_on_first_use(tmp_path, folder):
    # What the gate passes for Megatron's flagship case (and, under the_pile, its older cases) with
    # DATA_PATH=tmp_path, before any build.
    base = tmp_path / folder
    args = data_args(tokenizer_type="GPT2BPETokenizer", vocab_file=str(base / "bpe/vocab.json"),
                     merge_file=str(base / "bpe/merges.txt"), data_path=[str(base / "my-gpt3_00_text_document")],
                     data_cache_path=str(tmp_path / "cache"), seq_length=64)
    tokenizer = build_tokenizer(args)
    train, _, _ = build_datasets(args, tokenizer, 32, 0, 0)
    assert tokenizer.vocab_size == 50257 and len(train) >= 32
    assert (tmp_path / "goldtron_corpus.json").is_file()


def test_other_missing_prefix_is_not_built(tmp_path):
    from goldtron.data.errors import DataError

    args = data_args(tokenizer_type="GPT2BPETokenizer", data_path=[str(tmp_path / "elsewhere_text_document")])
    with pytest.raises(DataError, match=r"elsewhere_text_document\.idx: no such file"):
        build_datasets(args, build_tokenizer(args), 8, 0, 0)
    assert list(tmp_path.iterdir()) == []
