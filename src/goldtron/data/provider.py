"""What the trainer calls: `build_tokenizer(args)` and `build_datasets(args, tokenizer, ...)`.

`args` carries Megatron's flag names (argparse dests): tokenizer_type, vocab_file, merge_file,
vocab_size, mock_data, data_path, split, seq_length, seed, data_cache_path.

Where the tokens come from, first match wins:
1. `--mock-data`: synthetic documents from the seed (no files, no cache).
2. `--data-path P` or `--data-path 0.3 A 0.7 B`: Megatron indexed datasets.
3. Neither: the embedded corpus, built on first use under $GOLDTRON_DATA_DIR or
   ~/.cache/goldtron/data (see corpus.py).

Index arrays are cached under `--data-cache-path` (default: `cache/GPTDataset_indices` next to
the data, as Megatron does). The builder rank builds every cache entry, then all ranks meet at
`barrier()` exactly once, then the other ranks load the entries.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from goldtron import megatron_defaults
from goldtron.data.blended_dataset import BlendedDataset, build_blending_indices, samples_per_dataset
from goldtron.data.corpus import corpus_root_for, default_data_dir, ensure_embedded_corpus
from goldtron.data.errors import DataError
from goldtron.data.gpt_dataset import GPTDataset, build_gpt_indices
from goldtron.data.index_cache import IndexCache, load_or_build
from goldtron.data.indexed_dataset import IndexedDataset
from goldtron.data.mock_documents import MockDocuments
from goldtron.data.split import SPLIT_NAMES, parse_split, split_document_ranges
from goldtron.data.tokenizer import GPT2_VOCAB_SIZE, make_tokenizer


def _build_corpus_if_named(path) -> None:
    """A missing file that names the embedded corpus (as Megatron configs do under ${DATA_PATH}) is built."""
    if path is not None and not Path(path).exists() and not Path(f"{path}.idx").exists():
        root = corpus_root_for(path)
        if root is not None:
            ensure_embedded_corpus(root)


def build_tokenizer(args):
    """The tokenizer `--tokenizer-type` names (GPT-2's packaged BPE files when none are given)."""
    _build_corpus_if_named(getattr(args, "vocab_file", None))
    _build_corpus_if_named(getattr(args, "merge_file", None))
    return make_tokenizer(
        getattr(args, "tokenizer_type", None) or "GPT2BPETokenizer",
        vocab_file=getattr(args, "vocab_file", None),
        merge_file=getattr(args, "merge_file", None),
        vocab_size=getattr(args, "vocab_size", None),
    )


def parse_data_path(data_path: list[str]) -> list[tuple[float, str]]:
    """['P'] -> [(1.0, 'P')]; ['0.3', 'A', '0.7', 'B'] -> normalised [(0.3, 'A'), (0.7, 'B')]."""
    if len(data_path) == 1:
        return [(1.0, data_path[0])]
    pairs = []
    try:
        if len(data_path) % 2:
            raise ValueError
        for i in range(0, len(data_path), 2):
            weight = float(data_path[i])
            if not weight > 0:
                raise ValueError
            pairs.append((weight, data_path[i + 1]))
    except ValueError:
        raise DataError(
            f"--data-path {' '.join(data_path)}: give one prefix, or pairs of a positive weight and "
            f"a prefix, for example --data-path 0.3 /data/A_text_document 0.7 /data/B_text_document"
        ) from None
    total = sum(weight for weight, _ in pairs)
    return [(weight / total, prefix) for weight, prefix in pairs]


def _split_datasets(source, cache_dir, name, weights, num_samples, args, tokenizer, is_builder_rank):
    """GPTDataset per split of one token source (None where a split gets no samples)."""
    ranges = split_document_ranges(len(source.sequence_lengths), weights)
    datasets = []
    for split_name, (begin, end), wanted in zip(SPLIT_NAMES, ranges, num_samples):
        if wanted <= 0:
            datasets.append(None)
            continue
        if end <= begin:
            # Megatron's behaviour: a split without documents has no dataset. Said once, by the builder.
            if is_builder_rank:
                print(f"goldtron data: --split {args.split!r} gives {split_name} no documents of {name}; "
                      f"its {wanted} samples are skipped", file=sys.stderr)
            datasets.append(None)
            continue
        cache = None
        if cache_dir is not None:
            description = {
                "data": name, "sequences": len(source.sequence_lengths),
                "tokens": int(np.asarray(source.sequence_lengths, dtype=np.int64).sum()),
                "documents": [begin, end], "seq_length": args.seq_length, "seed": args.seed, "num_samples": wanted,
            }
            cache = IndexCache(cache_dir, f"GPTDataset-{split_name}", description)
        documents = np.arange(begin, end, dtype=np.int64)
        try:
            indices = load_or_build(
                cache, lambda: build_gpt_indices(source.sequence_lengths, documents, args.seq_length, wanted, args.seed),
                is_builder_rank,
            )
        except DataError as error:
            raise DataError(f"{name} ({split_name} split): {error}") from error
        datasets.append(GPTDataset(source, indices, args.seq_length, tokenizer.vocab_size, f"{name} [{split_name}]"))
    return datasets


def _default_cache_dir(prefix: str) -> Path:
    return Path(prefix).absolute().parent / "cache" / "GPTDataset_indices"


def _build_all(args, tokenizer, num_samples, is_builder_rank):
    weights = parse_split(args.split)
    cache_path = args.data_cache_path
    if args.mock_data:
        source = MockDocuments(args.seed, tokenizer.vocab_size, tokenizer.eod)
        return _split_datasets(source, None, source.prefix, weights, num_samples, args, tokenizer, is_builder_rank)

    data_path = args.data_path
    if not data_path:
        if tokenizer.vocab_size < GPT2_VOCAB_SIZE:
            raise DataError(
                f"the embedded corpus is GPT-2 BPE tokens but the tokenizer has {tokenizer.vocab_size} ids; "
                f"use --tokenizer-type GPT2BPETokenizer, --mock-data, or --data-path"
            )
        data_path = [ensure_embedded_corpus(default_data_dir())["prefix"]]
    blend = parse_data_path(list(data_path))
    parts = []
    for weight, prefix in blend:
        # Each part of a blend gets its share plus Megatron's small surplus.
        wanted = [samples_per_dataset([weight], n)[0] if len(blend) > 1 else n for n in num_samples]
        cache_dir = cache_path if cache_path else _default_cache_dir(prefix)
        _build_corpus_if_named(prefix)
        source = IndexedDataset(prefix)
        parts.append(_split_datasets(source, cache_dir, str(Path(prefix).absolute()), weights, wanted, args, tokenizer, is_builder_rank))
    if len(blend) == 1:
        return parts[0]
    return [
        _blend([part[s] for part in parts], [w for w, _ in blend], [p for _, p in blend], num_samples[s], SPLIT_NAMES[s], cache_path, is_builder_rank)
        for s in range(len(SPLIT_NAMES))
    ]


def _blend(datasets, weights, prefixes, num_samples, split_name, cache_path, is_builder_rank):
    if num_samples <= 0 or all(dataset is None for dataset in datasets):
        return None
    for dataset, prefix in zip(datasets, prefixes):
        if dataset is None:
            raise DataError(
                f"--data-path: {prefix} has no documents in the {split_name} split; "
                f"give it more documents or change --split"
            )
    cache_dir = cache_path if cache_path else _default_cache_dir(prefixes[0])
    description = {"datasets": [d.name for d in datasets], "dataset_sizes": [len(d) for d in datasets],
                   "weights": weights, "num_samples": num_samples}
    cache = IndexCache(cache_dir, f"BlendedDataset-{split_name}", description)
    indices = load_or_build(cache, lambda: build_blending_indices(weights, num_samples), is_builder_rank)
    return BlendedDataset(datasets, indices, f"blend [{split_name}]")


def _with_megatron_defaults(args):
    """A copy of args with Megatron's defaults for the data flags a caller may leave out."""
    import argparse

    resolved = argparse.Namespace(**vars(args))
    for name, default in (("seed", megatron_defaults.SEED), ("split", megatron_defaults.SPLIT), ("data_cache_path", None),
                          ("mock_data", False), ("data_path", None)):
        if getattr(resolved, name, None) is None:
            setattr(resolved, name, default)
    return resolved


def build_datasets(args, tokenizer, train_samples: int, valid_samples: int, test_samples: int, *,
                   is_builder_rank: bool = True, barrier: Callable[[], None] = lambda: None):
    """(train, valid, test) datasets; each is None when it gets no samples or no documents.

    Every rank calls `barrier()` exactly once. The builder rank calls it after building (also
    when building failed, so the others never hang; they then fail to find the cache).
    """
    args = _with_megatron_defaults(args)
    num_samples = [int(train_samples), int(valid_samples), int(test_samples)]
    if any(n < 0 for n in num_samples):
        raise ValueError(f"sample counts must be >= 0, got {num_samples}")
    if getattr(args, "seq_length", None) is None or int(args.seq_length) < 1:
        raise DataError(f"--seq-length must be a positive integer (got {getattr(args, 'seq_length', None)!r})")
    if is_builder_rank:
        try:
            datasets = _build_all(args, tokenizer, num_samples, True)
        finally:
            barrier()
    else:
        barrier()
        datasets = _build_all(args, tokenizer, num_samples, False)
    return tuple(datasets)
