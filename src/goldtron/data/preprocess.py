"""JSONL -> Megatron indexed dataset, as Megatron's tools/preprocess_data.py does it.

One JSON object per line; for each `--json-keys` key (default `text`) the document's tokens go
to `<output-prefix>_<key>_document.{bin,idx}`. A key's value may be a string or a list of
strings (sentences). Megatron's rules: a document whose text has no tokens is written as an
empty document, and `--append-eod` adds the end-of-document id only to non-empty documents.

Lines are read in chunks; chunks are tokenized in `workers` single-threaded processes (order
kept; one worker runs in this process) and written by this process. Output is written under a temporary prefix and renamed at the end, so a failed
run leaves no half-written dataset under the final name.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goldtron.data.errors import DataError
from goldtron.data.indexed_dataset import IndexedDatasetWriter, bin_path, idx_path, token_dtype_for_vocab
from goldtron.data.tokenizer import make_tokenizer

LINES_PER_CHUNK = 256


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to build its own tokenizer (tokenizers do not pickle well)."""

    tokenizer_type: str
    vocab_file: str | None = None
    merge_file: str | None = None
    vocab_size: int | None = None

    def build(self):
        return make_tokenizer(self.tokenizer_type, self.vocab_file, self.merge_file, self.vocab_size)


@dataclass
class PreprocessResult:
    output_prefixes: dict[str, str]
    documents: int
    tokens: int
    seconds: float


def output_prefix_for_key(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"


_worker_tokenizer = None


def _init_worker(spec: TokenizerSpec) -> None:
    global _worker_tokenizer
    # Parallelism comes from the worker processes; threads inside each would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = spec.build()


def encode_chunk(chunk, tokenizer, json_keys, append_eod, input_name):
    """[(line_number, line)] -> per document, per key, a token array (DataError names the line)."""
    texts = {key: [] for key in json_keys}  # flattened sentences per key
    shapes = []  # per document, per key: how many sentences
    for line_number, line in chunk:
        where = f"{input_name} line {line_number}"
        try:
            document = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg}); each line must be one JSON object") from None
        if not isinstance(document, dict):
            raise DataError(f"{where}: a JSON {type(document).__name__}, expected an object like {{\"text\": \"...\"}}")
        counts = []
        for key in json_keys:
            if key not in document:
                raise DataError(f"{where}: no key {key!r}; it has {sorted(document)}; choose the text field with --json-keys")
            value = document[key]
            sentences = value if isinstance(value, list) else [value]
            if not all(isinstance(sentence, str) for sentence in sentences):
                raise DataError(f"{where}: key {key!r} must hold a string or a list of strings")
            texts[key].extend(sentences)
            counts.append(len(sentences))
        shapes.append((line_number, counts))
    # One text at a time: `--workers N` is then exactly N busy cores (the library's batch mode
    # would add its own threads and oversubscribe a machine shared with training).
    encoded = {key: iter([tokenizer.tokenize(text) for text in texts[key]]) for key in json_keys}
    documents = []
    for line_number, counts in shapes:
        per_key = []
        for key, count in zip(json_keys, counts):
            ids = [token for _ in range(count) for token in next(encoded[key])]
            if ids and append_eod:
                ids.append(tokenizer.eod)
            # An array, not a list: results cross process boundaries, and arrays pickle compactly.
            tokens = np.asarray(ids, dtype=np.int64)
            if tokens.size and (tokens.max() >= tokenizer.vocab_size or tokens.min() < 0):
                bad = int(tokens.max()) if tokens.max() >= tokenizer.vocab_size else int(tokens.min())
                raise DataError(
                    f"{input_name} line {line_number}: token id {bad} is outside the vocabulary "
                    f"0..{tokenizer.vocab_size - 1}; raise --vocab-size or fix the ids"
                )
            per_key.append(tokens)
        documents.append(per_key)
    return documents


def _encode_in_worker(job):
    chunk, json_keys, append_eod, input_name = job
    try:
        return encode_chunk(chunk, _worker_tokenizer, json_keys, append_eod, input_name), len(chunk)
    except DataError as error:  # travels back as a message; raised again in the parent
        return str(error), len(chunk)


def _read_chunks(path: Path, on_bytes):
    """Chunks of (line_number, line) of non-blank lines, reporting bytes read for the progress bar."""
    chunk = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            on_bytes(len(raw))
            line = raw.decode("utf-8", errors="strict").strip()
            if line:
                chunk.append((line_number, line))
            if len(chunk) == LINES_PER_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _progress(enabled: bool, total_bytes: int, description: str):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
    return progress, progress.add_task(description, total=total_bytes)


def preprocess(input_path, output_prefix, spec: TokenizerSpec, json_keys=("text",), append_eod=False,
               workers=1, show_progress=True) -> PreprocessResult:
    """Tokenize a JSONL file into `<output_prefix>_<key>_document.{bin,idx}` per key."""
    input_path = Path(input_path)
    json_keys = tuple(json_keys)
    if not input_path.is_file():
        raise DataError(f"--input {input_path}: no such file")
    if workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    output_dir = Path(output_prefix).absolute().parent
    if not output_dir.is_dir():
        raise DataError(f"--output-prefix {output_prefix}: folder {output_dir} does not exist; create it first")
    tokenizer = spec.build()
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    finals = {key: output_prefix_for_key(str(output_prefix), key) for key in json_keys}
    staging = {key: f"{final}.partial-{os.getpid()}" for key, final in finals.items()}
    writers = {key: IndexedDatasetWriter(staging[key], dtype) for key in json_keys}
    documents = tokens = 0
    started = time.perf_counter()
    progress, task = _progress(show_progress, input_path.stat().st_size, f"tokenizing {input_path.name}")
    pool = None
    try:
        with progress:
            chunks = _read_chunks(input_path, lambda n: progress.advance(task, n))
            if workers == 1:
                results = ((encode_chunk(chunk, tokenizer, json_keys, append_eod, str(input_path)), len(chunk)) for chunk in chunks)
            else:
                pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(spec,))
                jobs = ((chunk, json_keys, append_eod, str(input_path)) for chunk in chunks)
                results = pool.imap(_encode_in_worker, jobs)
            for encoded, _ in results:
                if isinstance(encoded, str):
                    raise DataError(encoded)
                for per_key in encoded:
                    for key, ids in zip(json_keys, per_key):
                        writers[key].add_document(ids)
                        tokens += len(ids)
                documents += len(encoded)
        if documents == 0:
            raise DataError(f"--input {input_path}: holds no documents (the file is empty or all lines are blank)")
        for key in json_keys:
            writers[key].finalize()
            os.replace(bin_path(staging[key]), bin_path(finals[key]))
            os.replace(idx_path(staging[key]), idx_path(finals[key]))
    except UnicodeDecodeError as error:
        raise DataError(f"--input {input_path}: not UTF-8 text ({error})") from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for key in json_keys:
            writers[key].close_without_index()
            for path in (bin_path(staging[key]), idx_path(staging[key])):
                path.unlink(missing_ok=True)
    return PreprocessResult(finals, documents, tokens, time.perf_counter() - started)
