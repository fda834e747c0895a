"""Megatron-Core torch_dist checkpoints in and out (issue 15), against Megatron-Core itself.

Megatron-Core (the pinned test dependency) runs in its own process, one gloo rank on the CPU
(megatron_core_side.py names each workaround it needs there):
- it trains one step and saves a GPT checkpoint; goldtron loads it under TP1PP1 and TP2 x PP2 and
  its first step's loss is Megatron's forward loss on that batch, its second step's loss the one
  Megatron reaches by stepping on from the same checkpoint (so Adam's moments, step, learning rate
  and the data position all came over);
- goldtron trains and saves under TP1PP1 and TP2 x PP2, `goldtron ckpt export --to megatron`
  rewrites it, Megatron-Core loads that with strict key checking (weights and moments bitwise
  goldtron's, loss on the next batch = goldtron's), and goldtron loading the export and saving
  again gives its original checkpoint bit for bit.

Loss tolerances: 1e-6 relative. Both sides compute in fp32 with different reduction orders
(Megatron's baddbmm attention and fused-free softmax, goldtron's TP partial sums and pipeline);
measured differences are 2e-8 to 1e-7 relative (2-core AMD EPYC), so 1e-6 leaves room for
another CPU's kernels and still fails on any real difference (a wrong row is > 1e-3).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Found, not imported: Megatron-Core runs in megatron_core_side.py's process, never in this one.
if importlib.util.find_spec("megatron.core") is None:
    pytest.skip("megatron-core is a test dependency (pip install -e '.[test]')", allow_module_level=True)
if importlib.util.find_spec("psutil") is None:
    pytest.skip("Megatron-Core's torch_dist save needs psutil, which it does not declare", allow_module_level=True)

from goldtron.checkpoint.commands import main as ckpt_main  # noqa: E402
from goldtron.checkpoint.errors import CheckpointError  # noqa: E402
from goldtron.checkpoint.export import open_checkpoint, plain_state_dict  # noqa: E402
from support.metrics import relative  # noqa: E402
from support.torchrun import NO_DROPOUT  # noqa: E402

from checkpoint.ckpt_runs import goldtron_load, goldtron_logits, layout_runs, rewind  # noqa: E402

MEGATRON_SIDE = Path(__file__).with_name("megatron_core_side.py")
# 255 NullTokenizer ids + eod = 256 rows: no padding at TP1 or TP2, so Megatron's softmax and
# goldtron's see the same rows. 1000 -> 1001 real ids padded to 1024: Megatron's softmax also sees
# its 23 trained padded rows, goldtron's does not (see test_padded_vocabulary_rows_*).
UNPADDED, PADDED = 255, 1000
LAYOUTS = ("TP1PP1", "TP2xPP2")
TOLERANCE = 1e-6  # see the module docstring
# Both runs train to --train-iters 8's schedule (Megatron's side writes that schedule); the runs
# here stop earlier, so they say the decay length the checkpoint has.
SCHEDULE = ["--lr-decay-iters", "8"]


def model_flags(vocab: int) -> list[str]:
    # layout_runs puts TINY_MODEL (--vocab-size 1000) first; the later --vocab-size wins.
    return NO_DROPOUT + ["--vocab-size", str(vocab)]


def megatron(tmp: Path, name: str, jobs: dict[str, tuple[str, Path, int]]) -> dict[str, dict]:
    """{job: (mode, checkpoint dir, vocabulary)} done by Megatron-Core in one process -> {job: its JSON}."""
    from support.torchrun import TINY_MODEL

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(variable, None)
    spec = [{"mode": mode, "dir": str(folder), "out": str(tmp / f"{job}.json"),
             "flags": TINY_MODEL + model_flags(vocab) + ["--train-iters", "8"]}
            for job, (mode, folder, vocab) in jobs.items()]
    (tmp / f"{name}.jobs.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, str(MEGATRON_SIDE), str(tmp / f"{name}.jobs.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return {job: json.loads((tmp / f"{job}.json").read_text()) for job in jobs}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Megatron's saves, and one launch per process count with every goldtron run that needs no
    file another run of the launch writes: the loads of Megatron's checkpoints and goldtron's saves."""
    tmp = tmp_path_factory.mktemp("megatron")
    folders = {vocab: tmp / f"megatron-{vocab}" for vocab in (UNPADDED, PADDED)}
    for folder in folders.values():
        folder.mkdir()
    losses = megatron(tmp, "saves", {f"megatron-{vocab}": ("save", folder, vocab) for vocab, folder in folders.items()})
    saved = {vocab: (folder, losses[f"megatron-{vocab}"]) for vocab, folder in folders.items()}
    goldtron = {}
    for layout in LAYOUTS:
        for vocab in (UNPADDED, PADDED):
            goldtron[f"load-{layout}-{vocab}"] = (layout, model_flags(vocab) + SCHEDULE + [
                "--train-iters", "3", "--load", str(folders[vocab])])
        # Saves at 2 (exported below) and 3 (whose logged loss is the one on the batch after 2).
        goldtron[f"save-{layout}"] = (layout, model_flags(UNPADDED) + SCHEDULE + [
            "--train-iters", "3", "--save", str(tmp / f"goldtron-{layout}"), "--save-interval", "2"])
    return tmp, saved, layout_runs(tmp, goldtron)


def _step(steps: list[dict], iteration: int) -> dict:
    return next(s for s in steps if s["iteration"] == iteration)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_goldtron_first_step_from_megatrons_checkpoint_has_megatrons_loss(runs, layout):
    _, saved, results = runs
    steps, log = results[f"load-{layout}-{UNPADDED}"]
    megatron_losses = saved[UNPADDED][1]
    assert steps[0]["iteration"] == 2 and steps[0]["consumed_samples"] == 16  # iteration and data position
    assert relative(_step(steps, 2)["lm_loss"], megatron_losses["loss"]) < TOLERANCE
    # The step in between used the loaded Adam moments, step count, LR schedule and clipping.
    assert relative(_step(steps, 3)["lm_loss"], megatron_losses["after_next_step"]["loss"]) < TOLERANCE
    assert log.count("is a Megatron-Core checkpoint: its RNG state") == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_padded_vocabulary_rows_stay_out_of_goldtrons_softmax(runs, layout):
    """goldtron keeps padded ids out of the softmax; Megatron's includes its padded rows (trained,
    non-zero). goldtron's loss is Megatron's model's loss with those rows left out, and the
    difference from Megatron's own loss is measured here (docs/checkpoints.md has the figures)."""
    _, saved, results = runs
    steps, _ = results[f"load-{layout}-{PADDED}"]
    losses = saved[PADDED][1]
    assert relative(_step(steps, 2)["lm_loss"], losses["loss_padded_rows_masked"]) < TOLERANCE
    assert relative(_step(steps, 2)["lm_loss"], losses["loss"]) > 1e-3  # 23 padded rows of 1024: measured 3.3e-3


@pytest.fixture(scope="module")
def exported(runs):
    """goldtron's TP1PP1 and TP2xPP2 checkpoints at iteration 2, exported to Megatron's format and
    loaded by Megatron-Core with strict key checking; then loaded by goldtron (at TP1PP1: one
    launch for both, and resharding is a copy) and saved again."""
    tmp, _, _ = runs
    sources = {layout: tmp / f"goldtron-{layout}" / "iter_0000002" for layout in LAYOUTS}
    targets = {layout: tmp / f"exported-{layout}" for layout in LAYOUTS}
    for layout in LAYOUTS:
        assert ckpt_main(["export", str(sources[layout]), "--to", "megatron", str(targets[layout])]) == 0
    loaded = megatron(tmp, "loads", {f"megatron-loaded-{layout}": ("load", targets[layout], UNPADDED)
                                     for layout in LAYOUTS})
    again = layout_runs(tmp, {f"again-{layout}": ("TP1PP1", model_flags(UNPADDED) + SCHEDULE + [
        "--train-iters", "2", "--load", str(targets[layout]), "--save", str(tmp / f"again-{layout}")])
        for layout in LAYOUTS})
    return tmp, {layout: (sources[layout], loaded[f"megatron-loaded-{layout}"]) for layout in LAYOUTS}, again


@pytest.mark.parametrize("layout", LAYOUTS)
def test_megatron_loads_goldtrons_checkpoint_bitwise(runs, exported, layout):
    tmp, out, _ = exported
    source, loaded = out[layout]
    ours = plain_state_dict(open_checkpoint(str(source)))
    theirs = torch.load(str(tmp / f"megatron-loaded-{layout}.json.pt"))
    assert set(theirs["model"]) == set(ours["model"])  # Megatron's module names are goldtron's
    for name, tensor in ours["model"].items():
        assert torch.equal(theirs["model"][name][: tensor.shape[0]], tensor), name
    for kind in ("exp_avg", "exp_avg_sq"):
        for name, tensor in ours["optimizer"][kind].items():
            assert torch.equal(theirs["optimizer"][kind][name][: tensor.shape[0]], tensor), (kind, name)
    assert loaded["iteration"] == 2 and loaded["consumed"] == 16 and loaded["common_step"] == 2
    goldtron_next = _step(runs[2][f"save-{layout}"][0], 3)["lm_loss"]  # the loss on the batch after iteration 2
    assert relative(loaded["loss"], goldtron_next) < TOLERANCE


def test_megatrons_logits_of_goldtrons_checkpoint_are_goldtrons(exported, one_rank):
    """Megatron-Core's logits of the exported checkpoints, on the batch after iteration 2, are
    goldtron's own forward of its checkpoint (weights only, in this process) within 1e-6."""
    tmp, out, _ = exported
    for layout, (source, _) in out.items():
        theirs = torch.load(str(tmp / f"megatron-loaded-{layout}.json.pt"))
        at_export = tmp / f"logits-{layout}"  # the save directory as it was at iteration 2 (it went on to 3)
        shutil.copytree(source.parent, at_export)
        rewind(at_export, 2)
        ours = goldtron_logits(one_rank, model_flags(UNPADDED) + ["--train-iters", "3", "--load", str(at_export)],
                               theirs["tokens"])
        assert ours.abs().max() > 0.1  # not a degenerate model whose logits agree trivially
        # fp32 with different op orders; logits are O(1), measured within 1e-7 (module docstring).
        torch.testing.assert_close(theirs["logits"][..., : ours.shape[-1]], ours, atol=TOLERANCE, rtol=0,
                                   msg=lambda m: f"{layout}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_goldtron_to_megatron_to_goldtron_is_bitwise(exported, layout):
    tmp, out, _ = exported
    before = plain_state_dict(open_checkpoint(str(out[layout][0])))
    after = plain_state_dict(open_checkpoint(str(tmp / f"again-{layout}")))
    for part in ("iteration", "consumed_samples", "opt_param_scheduler"):
        assert after[part] == before[part], part
    for name, tensor in before["model"].items():
        assert torch.equal(after["model"][name], tensor), name
    for kind, tensors in before["optimizer"].items():
        for name, tensor in tensors.items():
            assert after["optimizer"][kind][name].dtype == tensor.dtype
            assert torch.equal(after["optimizer"][kind][name], tensor), (kind, name)


def test_export_of_a_megatron_checkpoint_is_refused_naming_it(runs, tmp_path, capsys):
    """`ckpt export` converts goldtron checkpoints; a Megatron one (save directory or iteration
    folder) is refused with the way to convert it, nothing written; `ckpt inspect` reads it."""
    _, saved, _ = runs
    folder = saved[UNPADDED][0]
    for source in (folder, folder / "iter_0000001"):
        assert ckpt_main(["export", str(source), "--to", "torch", str(tmp_path / "out.pt")]) == 2
        error = capsys.readouterr().err
        assert "is a Megatron-Core checkpoint" in error and "goldtron train --load" in error
        assert str(folder / "iter_0000001") in error
    assert not (tmp_path / "out.pt").exists()
    assert ckpt_main(["inspect", str(folder)]) == 0
    assert "iteration    1   consumed samples 8" in capsys.readouterr().out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _damaged_copy(runs, name: str, damage) -> Path:
    tmp, saved, _ = runs
    copy = tmp / f"bad-{name}"
    shutil.copytree(saved[UNPADDED][0], copy)
    damage(copy / "iter_0000001")
    return copy


def _truncate_distcp(folder: Path) -> None:
    data = max(folder.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _hostile_common(folder: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'ran'}",))

    common = folder / "common.pt"
    torch.save({"args": RunsCode(), "iteration": 1}, common)


BAD_INPUTS = {
    # name: (damage to the checkpoint, extra flags, what the error must say)
    "architecture": (lambda folder: None, ["--num-layers", "2"],
                     ["a Megatron checkpoint", "--num-layers: 4 in the checkpoint, 2 in this run", "Use the flags"]),
    "truncated-distcp": (_truncate_distcp, [], ["is truncated", ".distcp", "Restore the file"]),
    "disallowed-global": (_hostile_common, [], ["common.pt", f"{os.system.__module__}.system",
                                                "nothing in the file was executed"]),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_megatron_checkpoint_is_a_clear_error_and_nothing_is_overwritten(runs, one_rank, name):
    """Through goldtron's --load in this process (what `goldtron train` runs before any step; the
    CLI prints a CheckpointError and exits 2, tests/checkpoint/test_bad_checkpoints.py)."""
    damage, flags, expected = BAD_INPUTS[name]
    checkpoint = _damaged_copy(runs, name, damage)
    before = _digest(checkpoint)
    with pytest.raises(CheckpointError) as error:
        goldtron_load(one_rank, model_flags(UNPADDED) + SCHEDULE + [
            "--train-iters", "3", "--load", str(checkpoint), "--save", str(checkpoint), *flags])
    for text in expected:
        assert text in str(error.value), (text, str(error.value))
    assert str(checkpoint) in str(error.value)  # the file or folder is named
    assert _digest(checkpoint) == before  # --save into the same folder: nothing written
    assert not (checkpoint / "iter_0000001" / "ran").exists()
