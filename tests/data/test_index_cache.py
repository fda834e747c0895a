"""Index arrays are built once by the builder rank, cached, checked, and shared after one barrier."""

import threading

import numpy as np
import pytest

from conftest import data_args
from goldtron.data.errors import DataError
from goldtron.data.index_cache import IndexCache, load_or_build
from goldtron.data.provider import build_datasets, build_tokenizer


def arrays():
    return {"order": np.arange(10, dtype=np.int64)[::-1].copy()}


def never_called():
    raise AssertionError("the cache should have been used")


def test_built_once_then_loaded(tmp_path):
    cache = IndexCache(tmp_path, "Test-train", {"seed": 1})
    first = load_or_build(cache, arrays, is_builder_rank=True)
    again = load_or_build(IndexCache(tmp_path, "Test-train", {"seed": 1}), never_called, is_builder_rank=True)
    other_rank = load_or_build(IndexCache(tmp_path, "Test-train", {"seed": 1}), never_called, is_builder_rank=False)
    assert np.array_equal(first["order"], again["order"]) and np.array_equal(first["order"], other_rank["order"])
    # A different description is a different entry.
    assert IndexCache(tmp_path, "Test-train", {"seed": 2}).load() is None


def corrupt(cache):
    path = cache.array_path("order")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_corrupt_cache_is_rebuilt_by_builder_and_named_by_others(tmp_path, capsys):
    cache = IndexCache(tmp_path, "Test-train", {"seed": 1})
    load_or_build(cache, arrays, True)
    path = corrupt(cache)
    with pytest.raises(DataError, match=path.name):
        load_or_build(cache, never_called, is_builder_rank=False)
    rebuilt = load_or_build(cache, arrays, is_builder_rank=True)
    assert "rebuilding a corrupt index cache" in capsys.readouterr().err
    assert np.array_equal(rebuilt["order"], arrays()["order"])
    assert np.array_equal(cache.load()["order"], arrays()["order"])


def test_missing_cache_on_other_rank_is_named(tmp_path):
    cache = IndexCache(tmp_path, "Test-train", {"seed": 1})
    with pytest.raises(DataError, match="description.json: missing after the builder rank's barrier"):
        load_or_build(cache, arrays, is_builder_rank=False)


def run_two_ranks(args, tokenizer):
    """Builder and follower in two threads meeting at a real barrier (with a timeout: no hang)."""
    barrier = threading.Barrier(2, timeout=60)
    results = {}

    def rank(is_builder):
        try:
            results[is_builder] = build_datasets(args, tokenizer, 40, 8, 0, is_builder_rank=is_builder, barrier=barrier.wait)
        except Exception as error:  # handed to the test thread
            results[is_builder] = error

    threads = [threading.Thread(target=rank, args=(flag,)) for flag in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results[True], results[False]


def test_builder_and_follower_see_the_same_samples(unique_prefix, tmp_path):
    args = data_args(data_path=[unique_prefix], data_cache_path=str(tmp_path / "cache"))
    builder, follower = run_two_ranks(args, build_tokenizer(args))
    assert builder[2] is None and follower[2] is None  # no test samples asked for
    for built, loaded in zip(builder[:2], follower[:2]):
        assert len(built) == len(loaded)
        assert all(np.array_equal(built[i], loaded[i]) for i in range(len(built)))


def test_failing_builder_does_not_hang_the_follower(tmp_path):
    args = data_args(data_path=[str(tmp_path / "absent_text_document")], data_cache_path=str(tmp_path / "cache"))
    builder, follower = run_two_ranks(args, build_tokenizer(args))
    assert isinstance(builder, DataError) and "absent_text_document.idx: no such file" in str(builder)
    assert isinstance(follower, DataError)
