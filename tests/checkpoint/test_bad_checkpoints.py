"""Issue 3, "What must be shown" 4 and the --load rules: a damaged checkpoint or a wrong --load is a
clear error naming the file, on every rank, with a non-zero exit, and nothing is overwritten; an
empty or missing --load starts from scratch (unless --exit-on-missing-checkpoint).

The file checks are exercised in-process on copies of one real checkpoint (fast); one torchrun
run shows the whole path: both ranks report, the exit code is non-zero, the folder is untouched.
"""

import shutil

import pytest

from checkpoint.shared_saves import saved
from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.key_check import check_keys
from goldtron.checkpoint.validation import find_checkpoint
from support.torchrun import EVERY_RANK_MONITOR_INTERVAL_S, TINY_MODEL, layout_flags, run_train

SHARD = "__0_0.distcp"


# A good checkpoint at iteration 2, saved in the session's shared checkpoint launches
# (checkpoint/shared_saves.py; rewound to 2, the save it already is). Tests damage copies of it.
SHARED_SAVES = {"good": ((1, TINY_MODEL + ["--train-iters", "2", "--lr-decay-iters", "4", "--save", saved("good")]), 2)}


@pytest.fixture(scope="module")
def good(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, {})[0]["good"].folder


@pytest.fixture
def copy(good, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(good, target)
    return target


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {  # name: (damage, text the error must contain)
    "truncated shard": (lambda d: _truncate(d / "iter_0000002" / SHARD), f"iter_0000002/{SHARD} is truncated"),
    "missing shard": (lambda d: (d / "iter_0000002" / SHARD).unlink(), f"iter_0000002/{SHARD} is missing"),
    "tracker names a missing iteration": (lambda d: (d / "latest_checkpointed_iteration.txt").write_text("7\n"),
                                          "iter_0000007 does not exist"),
    "tracker is not a number": (lambda d: (d / "latest_checkpointed_iteration.txt").write_text("latest\n"),
                                "latest_checkpointed_iteration.txt holds 'latest'"),
    "no metadata.json (unfinished save)": (lambda d: (d / "iter_0000002" / "metadata.json").unlink(),
                                           "iter_0000002/metadata.json is missing"),
    "no DCP .metadata": (lambda d: (d / "iter_0000002" / ".metadata").unlink(), "iter_0000002/.metadata"),
    "not a checkpoint": (lambda d: [shutil.rmtree(d), d.mkdir(), (d / "notes.txt").write_text("hi")],
                         "is not a checkpoint directory"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_a_clear_error(damage, copy):
    apply, expected = DAMAGES[damage]
    apply(copy)
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        find_checkpoint(str(copy))


def test_missing_empty_or_interrupted_first_save_means_from_scratch(tmp_path):
    assert find_checkpoint(str(tmp_path / "missing")) is None
    assert find_checkpoint(str(tmp_path)) is None
    (tmp_path / "iter_0000002.in_progress").mkdir()
    assert find_checkpoint(str(tmp_path)) is None


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_truncated_shard_fails_on_every_rank_and_overwrites_nothing(copy):
    _truncate(copy / "iter_0000002" / SHARD)
    before = _listing(copy)
    result = run_train(2, TINY_MODEL + layout_flags() + ["--train-iters", "4", "--lr-decay-iters", "4", "--save-interval", "1",
                                                         "--load", str(copy), "--save", str(copy)], check=False,
                       monitor_interval=EVERY_RANK_MONITOR_INTERVAL_S)
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr
    for rank in (0, 1):
        assert f"checkpoint error (rank {rank})" in result.stderr and SHARD in result.stderr, result.stderr[-3000:]
    assert _listing(copy) == before


def test_exit_on_missing_checkpoint(tmp_path):
    result = run_train(1, TINY_MODEL + ["--train-iters", "4", "--load", str(tmp_path / "none"),
                                        "--exit-on-missing-checkpoint"], check=False)
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr  # torchrun reports the rank's code
    assert "--exit-on-missing-checkpoint" in result.stderr and str(tmp_path / "none") in result.stderr


# ---- --dist-ckpt-strictness, on the real checkpoint's metadata ---------------------------------
class _Sized:
    def __init__(self, *shape):
        self.shape = shape

    def size(self):
        return self.shape


def _check(good, wanted: dict, strictness: str, log=None):
    found = find_checkpoint(str(good))
    saved = set(found.dcp_metadata.state_dict_metadata)
    return check_keys(wanted, set(wanted), saved, found.dcp_metadata, strictness, found.path,
                      log or (lambda line: None))


def test_shape_mismatch_names_the_tensor(good):
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.0\.mlp\.linear_fc1\.weight.*\(256, 64\).*\(128, 64\)"):
        _check(good, {"decoder.layers.0.mlp.linear_fc1.weight": _Sized(128, 64)}, "assume_ok_unexpected")


def test_missing_keys_raise_by_default_and_are_skipped_under_log_all(good):
    wanted = {"decoder.layers.9.mlp.linear_fc1.weight": _Sized(256, 64),
              "decoder.layers.0.mlp.linear_fc1.weight": _Sized(256, 64)}
    with pytest.raises(CheckpointError, match=r"lacks keys.*decoder\.layers\.9"):
        _check(good, wanted, "assume_ok_unexpected")
    logged = []
    assert _check(good, wanted, "log_all", logged.append) == {"decoder.layers.9.mlp.linear_fc1.weight"}
    assert any("missing" in line for line in logged)


def test_unexpected_keys_are_ignored_by_default_and_raise_when_asked(good):
    wanted = {"decoder.layers.0.mlp.linear_fc1.weight": _Sized(256, 64)}
    assert _check(good, wanted, "assume_ok_unexpected") == set()
    with pytest.raises(CheckpointError, match="does not have"):
        _check(good, wanted, "raise_unexpected")
