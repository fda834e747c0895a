"""Tokenizers give GPT-2's known ids and Megatron's NullTokenizer conventions."""

import pytest

from goldtron.data.errors import DataError
from goldtron.data.tokenizer import GPT2BPETokenizer, NullTokenizer, make_tokenizer, packaged_gpt2_bpe_files


@pytest.fixture(scope="module")
def gpt2():
    return GPT2BPETokenizer()


@pytest.mark.parametrize(
    "text, ids",
    [
        # Ids published for GPT-2 (e.g. OpenAI's tokenizer page / HF's gpt2 tokenizer).
        ("Hello world", [15496, 995]),
        (" the", [262]),
        ("  leading spaces and\n\nnewlines 123 don't", [220, 3756, 9029, 290, 198, 198, 3605, 6615, 17031, 836, 470]),
        # As in Megatron, <|endoftext|> inside text is ordinary text, not the eod id.
        ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),
    ],
)
def test_gpt2_bpe_known_ids(gpt2, text, ids):
    assert gpt2.tokenize(text) == ids
    assert gpt2.detokenize(ids) == text


def test_gpt2_bpe_sizes_and_batch(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.eod == 50256
    assert gpt2.tokenize_batch(["Hello world", " the"]) == [[15496, 995], [262]]


def test_gpt2_bpe_explicit_files_equal_packaged(gpt2):
    vocab, merges = packaged_gpt2_bpe_files()
    explicit = GPT2BPETokenizer(vocab, merges)
    assert explicit.tokenize("Megatron-style GPT trainer") == gpt2.tokenize("Megatron-style GPT trainer")


def test_gpt2_bpe_missing_file_names_flag(tmp_path):
    vocab, _ = packaged_gpt2_bpe_files()
    with pytest.raises(DataError, match="--merge-file .*missing.txt"):
        GPT2BPETokenizer(vocab, tmp_path / "missing.txt")
    with pytest.raises(DataError, match="both --vocab-file and --merge-file"):
        GPT2BPETokenizer(vocab, None)


def test_null_tokenizer_follows_megatron():
    tok = NullTokenizer(1000)
    assert tok.eod == 1000 and tok.vocab_size == 1001
    assert tok.tokenize("3 1 4") == [3, 1, 4]
    with pytest.raises(DataError, match="--vocab-size"):
        NullTokenizer(None)
    with pytest.raises(DataError, match="integer ids"):
        tok.tokenize("three")


def test_unknown_tokenizer_type_names_flag():
    with pytest.raises(DataError, match="--tokenizer-type 'Bert'"):
        make_tokenizer("Bert")
