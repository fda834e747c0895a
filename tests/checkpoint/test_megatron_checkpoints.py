"""Megatron-Core torch_dist checkpoints in and out (issue 15), against Megatron-Core itself.

Megatron-Core (the pinned test dependency) runs in processes of its own on the CPU: one gloo rank
(megatron_core_side.py), and TP2 x PP2 on 4 gloo ranks under torchrun (megatron_core_parallel.py);
each names the workarounds it needs there:
- it trains one step at TP2 x PP2 with its own DDP, optimizer and 1F1B schedule, and saves with the
  plain optimizer and with the distributed optimizer (fully_reshardable, and the default
  dp_reshardable); goldtron loads the first two at TP1PP1 and TP2 x PP2 with Megatron's losses, and
  refuses the third's optimizer state naming --dist-ckpt-optim-fully-reshardable;
- a frozen-resume gate case from that checkpoint passes against Megatron's own losses;
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
MEGATRON_PARALLEL = Path(__file__).with_name("megatron_core_parallel.py")
# Megatron-Core's own TP2 x PP2 saves: its plain (FP32) optimizer, and its distributed optimizer in
# Megatron-LM's default dp_reshardable form and in --dist-ckpt-optim-fully-reshardable's form.
PARALLEL_SAVES = {
    "plain": {"distributed_optimizer": False, "sharding": None},
    "distopt-dp_reshardable": {"distributed_optimizer": True, "sharding": "dp_reshardable"},
    "distopt-fully_reshardable": {"distributed_optimizer": True, "sharding": "fully_reshardable"},
}
READABLE_PARALLEL_SAVES = ("plain", "distopt-fully_reshardable")
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


def megatron_parallel(tmp: Path, jobs: dict[str, dict]) -> dict[str, dict]:
    """{job: {"distributed_optimizer", "sharding"}} trained and saved by Megatron-Core at TP2 x PP2
    on 4 gloo ranks, in one torchrun launch (megatron_core_parallel.py) -> {job: (folder, its JSON)}."""
    from support.torchrun import TINY_MODEL, free_port

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    spec = [{"dir": str(tmp / job), "out": str(tmp / f"{job}.json"), "tp": 2, "pp": 2,
             "flags": TINY_MODEL + model_flags(UNPADDED) + ["--train-iters", "8"], **options}
            for job, options in jobs.items()]
    (tmp / "parallel.jobs.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
                             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                             str(MEGATRON_PARALLEL), str(tmp / "parallel.jobs.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {job: (tmp / job, json.loads((tmp / f"{job}.json").read_text())) for job in jobs}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Megatron's saves (one rank, and TP2 x PP2 on 4 ranks), and one launch per process count with
    every goldtron run that needs no file another run of the launch writes: the loads of Megatron's
    checkpoints and goldtron's saves."""
    tmp = tmp_path_factory.mktemp("megatron")
    folders = {vocab: tmp / f"megatron-{vocab}" for vocab in (UNPADDED, PADDED)}
    for folder in folders.values():
        folder.mkdir()
    losses = megatron(tmp, "saves", {f"megatron-{vocab}": ("save", folder, vocab) for vocab, folder in folders.items()})
    saved = {vocab: (folder, losses[f"megatron-{vocab}"]) for vocab, folder in folders.items()}
    saved.update(megatron_parallel(tmp, PARALLEL_SAVES))
    goldtron = {}
    for layout in LAYOUTS:
        for name in READABLE_PARALLEL_SAVES:
            goldtron[f"load-{layout}-{name}"] = (layout, model_flags(UNPADDED) + SCHEDULE + [
                "--train-iters", "3", "--load", str(saved[name][0])])
    # The dp_reshardable form's weights (its optimizer state is refused, test_dp_reshardable_*).
    goldtron["load-TP1PP1-distopt-dp_reshardable-weights"] = ("TP1PP1", model_flags(UNPADDED) + SCHEDULE + [
        "--train-iters", "2", "--load", str(saved["distopt-dp_reshardable"][0]), "--no-load-optim"])
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
@pytest.mark.parametrize("name", READABLE_PARALLEL_SAVES)
def test_goldtron_first_step_from_megatrons_own_tp2_pp2_save_has_megatrons_loss(runs, layout, name):
    """Megatron-Core trained at TP2 x PP2 (its DDP, optimizer, 1F1B schedule) and saved: goldtron
    reads the TP- and PP-sharded tensors at TP1PP1 and at TP2 x PP2, and steps as Megatron does."""
    _, saved, results = runs
    steps, _ = results[f"load-{layout}-{name}"]
    megatron_losses = saved[name][1]
    assert steps[0]["iteration"] == 2 and steps[0]["consumed_samples"] == 16
    assert relative(_step(steps, 2)["lm_loss"], megatron_losses["loss"]) < TOLERANCE
    assert relative(_step(steps, 3)["lm_loss"], megatron_losses["after_next_step"]["loss"]) < TOLERANCE


def test_dp_reshardable_distributed_optimizer_state_is_refused_naming_the_flag(runs, one_rank):
    """Megatron-LM's default distributed-optimizer form (state by bucket, written here by Megatron-Core's
    DistributedOptimizer) is refused naming the flag that writes a form goldtron reads; with
    --no-load-optim its weights load and the first step has Megatron's loss."""
    from torch.distributed.checkpoint import FileSystemReader

    _, saved, results = runs
    folder, megatron_losses = saved["distopt-dp_reshardable"]
    keys = FileSystemReader(str(folder / "iter_0000001")).read_metadata().state_dict_metadata
    assert any(".bucket_idx_0.exp_avg" in k for k in keys)  # really the bucket form, not optimizer.state.*
    assert not any(k.startswith("optimizer.state.exp_avg.") for k in keys)
    with pytest.raises(CheckpointError) as error:
        goldtron_load(one_rank, model_flags(UNPADDED) + SCHEDULE + ["--train-iters", "3", "--load", str(folder)])
    for text in ("dp_reshardable", "--dist-ckpt-optim-fully-reshardable", "--no-load-optim",
                 str(folder / "iter_0000001")):
        assert text in str(error.value), (text, str(error.value))
    steps, _ = results["load-TP1PP1-distopt-dp_reshardable-weights"]
    assert relative(_step(steps, 2)["lm_loss"], megatron_losses["loss"]) < TOLERANCE


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


def _as_model_args(flags: list[str]) -> dict:
    """A flag list as a model_config.yaml's MODEL_ARGS (a flag with no value is `true`; numbers as numbers)."""
    def typed(value: str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    args, i = {}, 0
    while i < len(flags):
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        args[flags[i]] = typed(flags[i + 1]) if has_value else True
        i += 2 if has_value else 1
    return args


def test_frozen_resume_case_from_megatrons_checkpoint_passes_against_megatrons_losses(runs, tmp_path, capsys):
    """`goldtron test` on a frozen-resume case whose stored checkpoint is Megatron-Core's own TP2 x PP2
    save, trained on by goldtron at TP1PP1, judged against a golden holding the losses Megatron-Core
    itself computed from that checkpoint, rounded to 5 decimals as Megatron's golden files are; a golden
    1e-4 off fails. The stored checkpoint is only read.

    Tolerance 2e-6 relative: the gate rounds the run's values to 5 decimals too, so two losses 4e-8
    apart (measured, see test_goldtron_first_step_from_megatrons_own_tp2_pp2_save_*) can round one
    unit of the 5th decimal apart when they straddle a rounding boundary: 1e-5 / 5.5 = 1.8e-6."""
    import yaml

    from goldtron.gate import commands
    from goldtron.gate.golden import round_value
    from goldtron.gate.platform import detect_platform
    from support.torchrun import TINY_MODEL

    _, saved, _ = runs
    stored, megatron_losses = saved["plain"]
    before = _digest(stored)
    model_args = _as_model_args(TINY_MODEL + model_flags(UNPADDED) + SCHEDULE + ["--train-iters", "3"])
    model_args.update({"--load": "${CHECKPOINT_LOAD_PATH}", "--save": "${CHECKPOINT_SAVE_PATH}",
                       "--tensorboard-dir": "${TENSORBOARD_PATH}"})
    golden = {"lm loss": {"start_step": 1, "end_step": 3, "step_interval": 1, "values": {
        "1": "nan", "2": megatron_losses["loss"], "3": megatron_losses["after_next_step"]["loss"]}}}
    verdicts = {}
    for name, scale in (("megatron", 1.0), ("megatron-off-by-1e-4", 1.0 + 1e-4)):
        case = tmp_path / name
        case.mkdir()
        (case / "model_config.yaml").write_text(yaml.safe_dump({
            "ENV_VARS": {"OMP_NUM_THREADS": 1}, "MODEL_ARGS": model_args, "TEST_TYPE": "frozen-resume",
            "METRICS": ["lm loss"],
            "GOLDTRON": {"NPROC_PER_NODE": 1, "PHASE_TIMEOUT_S": 120, "FROZEN_CHECKPOINT": str(stored),
                         "TOLERANCES": {"lm loss": {"approx_rtol": 2e-6, "exact": False}}}}, sort_keys=False))
        values = {step: v if v == "nan" else round_value(v * scale) for step, v in golden["lm loss"]["values"].items()}
        (case / f"golden_values_dev_{detect_platform()}.json").write_text(
            json.dumps({"lm loss": dict(golden["lm loss"], values=values)}))
        verdicts[name] = commands.test_main([str(case), "--size", "full", "--output-dir", str(tmp_path / f"out-{name}"),
                                             "--no-plot"])
        captured = capsys.readouterr()
        verdicts[name + " output"] = captured.out + captured.err
    assert verdicts["megatron"] == 0, verdicts["megatron output"][-3000:]
    assert "PASS megatron" in verdicts["megatron output"]
    # Megatron's approximate rule lets a share of the steps fail: here none did (0 of 1 allowed).
    row = next(line for line in (tmp_path / "out-megatron" / "summary.md").read_text().splitlines() if "| lm loss |" in line)
    assert "| PASS | 3 | 0/" in row, row
    assert verdicts["megatron-off-by-1e-4"] == 1, verdicts["megatron-off-by-1e-4 output"][-3000:]
    assert "'lm loss'" in verdicts["megatron-off-by-1e-4 output"] and "FAIL megatron-off-by-1e-4" in verdicts[
        "megatron-off-by-1e-4 output"]
    assert _digest(stored) == before
