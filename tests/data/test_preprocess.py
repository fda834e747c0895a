"""`goldtron data preprocess`: Megatron's output for the same tokens, workers, clear bad-input errors."""

import json

import pytest

from conftest import write_documents
from goldtron.data.commands import main
from goldtron.data.errors import DataError
from goldtron.data.indexed_dataset import IndexedDataset
from goldtron.data.preprocess import TokenizerSpec, preprocess

NULL_10 = TokenizerSpec("NullTokenizer", vocab_size=10)  # ids 0..9, eod 10
GPT2 = TokenizerSpec("GPT2BPETokenizer")


def write_jsonl(path, documents):
    path.write_text("".join(json.dumps(document) + "\n" for document in documents))
    return path


def test_output_equals_writer_bytes_for_the_same_tokens(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": "1 2 3"}, {"text": ""}, {"text": ["4", "5 6"]}])
    result = preprocess(source, tmp_path / "out", NULL_10, append_eod=True, show_progress=False)
    assert result.documents == 3 and result.tokens == 8
    # Megatron's rules: the empty text stays an empty document without eod; a list's sentences
    # are joined into one sequence and the eod goes after the last.
    expected = write_documents(tmp_path / "expected", [[1, 2, 3, 10], [], [4, 5, 6, 10]], dtype="uint16")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"out_text_document{suffix}").read_bytes() == (tmp_path / f"expected{suffix}").read_bytes()
    assert IndexedDataset(expected).num_documents == 3


def test_gpt2_ids_and_cli(tmp_path, capsys):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": "Hello world", "title": "Hi"}])
    code = main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "g"), "--append-eod",
                 "--json-keys", "text", "title", "--no-progress"])
    assert code == 0
    assert IndexedDataset(tmp_path / "g_text_document")[0].tolist() == [15496, 995, 50256]
    assert IndexedDataset(tmp_path / "g_title_document")[0].tolist() == [17250, 50256]
    assert "1 documents, 5 tokens" in capsys.readouterr().out


def test_two_workers_write_the_same_bytes(tmp_path):
    documents = [{"text": f"document {i}: " + "word " * (i % 17)} for i in range(700)]  # several chunks
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    preprocess(source, tmp_path / "one", GPT2, append_eod=True, workers=1, show_progress=False)
    preprocess(source, tmp_path / "two", GPT2, append_eod=True, workers=2, show_progress=False)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one_text_document{suffix}").read_bytes() == (tmp_path / f"two_text_document{suffix}").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "lines, message",
    [
        ([], r"docs\.jsonl: holds no documents"),
        (["", "   "], r"docs\.jsonl: holds no documents"),
        (['{"text": "1 2"}', '{"body": "3"}'], r"docs\.jsonl line 2: no key 'text'.*--json-keys"),
        (['{"text": "1 2"', ], r"docs\.jsonl line 1: not valid JSON"),
        (['{"text": "1 12"}'], r"docs\.jsonl line 1: token id 12 is outside the vocabulary 0\.\.10"),
        (['{"text": "1 -1"}'], r"docs\.jsonl line 1: token id -1 is outside"),
        (['["1 2"]'], r"docs\.jsonl line 1: a JSON list"),
    ],
)
def test_bad_input_is_named_and_leaves_nothing(tmp_path, lines, message, workers):
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(lines))
    with pytest.raises(DataError, match=message):
        preprocess(source, tmp_path / "out", NULL_10, workers=workers, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_cli_bad_input_exits_2_with_the_file_named(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["preprocess", "--input", str(missing), "--output-prefix", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["preprocess", "--input", str(missing)]) == 2  # argparse: --output-prefix missing
    assert main(["frobnicate"]) == 2
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}])
    assert main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "no/such/dir/o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["preprocess", "--input", str(source), "--output-prefix", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_corpus_command(tmp_path, capsys):
    assert main(["corpus", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"DATA_PATH={tmp_path}" in out
    assert IndexedDataset(tmp_path / "text/common_pile/v01_filtered_data/my-gpt3_00_text_document").num_documents > 100
