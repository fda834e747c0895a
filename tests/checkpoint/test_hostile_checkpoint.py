"""Issue 14, "What must be shown" 2: loading a checkpoint never executes code from it.

A real checkpoint is crafted two ways: its RNG slot (the one pickled object goldtron saves) is
pointed at a pickle whose loading would create a marker file, or its DCP `.metadata` itself is such
a pickle. `--load`, `goldtron ckpt inspect` and `goldtron ckpt export` refuse both with an error
naming the file (exit 2), and the marker never appears. An untouched checkpoint still resumes
with its RNG state, and the torch export is plain data (`torch.load(weights_only=True)` reads it).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import shutil

import pytest
import torch

from goldtron.checkpoint.commands import main as ckpt_main
from goldtron.checkpoint.validation import find_checkpoint
from support.tiny_checkpoint import save_tiny_checkpoint, train_tiny

pytestmark = pytest.mark.timeout(300)

ITERATION_DIR = "iter_0000001"


class _CreatesMarker:
    """Unpickling this calls exec, which creates the marker file: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("good") / "ckpt")


def _craft_rng_slot(good, target, marker):
    """Copy of `good` whose RNG item is a hostile pickle appended to the data file (the metadata
    is rewritten to point at it, so every size check still passes)."""
    shutil.copytree(good, target)
    folder = target / ITERATION_DIR
    with open(folder / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # our own, trusted file: the test writes the hostile one
    payload = io.BytesIO()
    torch.save({"python": _CreatesMarker(marker)}, payload)
    for index, info in list(metadata.storage_data.items()):
        if index.fqn.startswith("rng_state."):
            data_file = folder / info.relative_path
            offset = data_file.stat().st_size
            with open(data_file, "ab") as handle:
                handle.write(payload.getvalue())
            metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(payload.getvalue()))
            break
    else:
        raise AssertionError("the checkpoint has no RNG item")
    with open(folder / ".metadata", "wb") as handle:
        pickle.dump(metadata, handle)
    return target, data_file


def _craft_metadata(good, target, marker):
    shutil.copytree(good, target)
    (target / ITERATION_DIR / ".metadata").write_bytes(pickle.dumps(_CreatesMarker(marker)))
    return target, target / ITERATION_DIR / ".metadata"


CRAFTS = {"rng slot": _craft_rng_slot, ".metadata": _craft_metadata}


@pytest.mark.parametrize("craft", list(CRAFTS))
def test_inspect_and_export_refuse_a_crafted_checkpoint(craft, good, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    crafted, named = CRAFTS[craft](good, tmp_path / "crafted", marker)
    for argv in (["inspect", str(crafted)], ["export", str(crafted), "--to", "torch", str(tmp_path / "out.pt")],
                 ["export", str(crafted), "--to", "hf", str(tmp_path / "hf")]):
        assert ckpt_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert str(named) in err and "did not execute it" in err, err
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "hf").exists()


def test_load_refuses_a_crafted_rng_slot(good, tmp_path):
    marker = tmp_path / "MARKER"
    crafted, data_file = _craft_rng_slot(good, tmp_path / "crafted", marker)
    result = train_tiny(["--train-iters", "2", "--load", str(crafted)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "checkpoint error (rank 0)" in result.stderr and str(data_file) in result.stderr, result.stderr[-3000:]
    assert not marker.exists(), "--load ran code from the checkpoint"


def test_checkpoints_of_this_code_still_load_rng_and_export_as_plain_data(good, tmp_path, capsys):
    found = find_checkpoint(str(good))
    assert found.common["contents"]["rng"]
    result = train_tiny(["--train-iters", "2", "--load", str(good)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(model, optimizer, rng)" in result.stdout
    out = tmp_path / "out.pt"
    assert ckpt_main(["export", str(good), "--to", "torch", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert exported["iteration"] == 1 and exported["model"]
