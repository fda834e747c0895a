"""Helpers shared by the checkpoint tests: train-and-save runs, rewinding a save directory the way
Megatron's ckpt-resume test does, and comparisons of per-step metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.metrics import relative  # noqa: F401  (re-exported for the checkpoint tests)
from support.torchrun import TINY_MODEL, batched_log, layout_flags, read_metrics_file, run_train, train_batches_and_read

# name: (processes, tp, pp); DP is what is left.
LAYOUTS = {
    "TP1PP1": (1, 1, 1), "DP2": (2, 1, 1), "TP2PP1": (2, 2, 1), "TP4": (4, 4, 1), "PP4": (4, 1, 4),
    "TP2xPP2": (4, 2, 2), "PP2xDP2": (4, 1, 2), "TP2xDP2": (4, 2, 1), "PP2": (2, 1, 2),
}


def tiny_under(layout: str, flags: list[str]) -> tuple[int, list[str]]:
    """(processes, flags) of the tiny model under `layout` with extra `flags`."""
    nproc, tp, pp = LAYOUTS[layout]
    return nproc, TINY_MODEL + layout_flags(tp, pp) + flags


def layout_run(tmp_path: Path, name: str, layout: str, flags: list[str]) -> tuple[list[dict], str]:
    """Train the tiny model under `layout` with extra `flags`: (per-step float64 metrics, stdout)."""
    metrics = tmp_path / f"{name}.metrics.jsonl"
    result = run_train(*tiny_under(layout, flags), env={"GOLDTRON_METRICS_FILE": str(metrics)})
    return (read_metrics_file(metrics) if metrics.exists() else []), result.stdout


def layout_runs(tmp_path: Path, runs: dict[str, tuple[str, list[str]]]) -> dict[str, tuple[list[dict], str]]:
    """{name: (layout, flags)} -> {name: (per-step metrics, stdout)}, as layout_run gives for each,
    with the runs of one process count in one launch. For runs that only read a checkpoint: a
    save and the load that checks it run in processes of their own."""
    batched = train_batches_and_read(tmp_path, {name: tiny_under(layout, flags) for name, (layout, flags) in runs.items()})
    return {name: (steps, batched_log(tmp_path, name)) for name, steps in batched.items()}


def train_save_rewind(tmp_path: Path, layout: str, flags: list[str], iters: int, half: int
                      ) -> tuple[Path, list[dict]]:
    """Train to `iters` under `layout` saving at `half` (and the end), then rewind to `half`:
    (save dir, run 1's per-step metrics), ready for a second run to load."""
    save = tmp_path / "ckpt"
    steps, _ = layout_run(tmp_path, "base", layout, flags + [
        "--train-iters", str(iters), "--save", str(save), "--save-interval", str(half)])
    rewind(save, half)
    return save, steps


def train_then_resume(tmp_path: Path, layout: str, flags: list[str], iters: int, half: int
                      ) -> tuple[list[dict], list[dict], str]:
    """Megatron's ckpt-resume: train to `iters` saving every `half`, rewind to `half`, resume to
    `iters` with the same flags: (run 1's metrics, run 2's metrics, run 2's stdout)."""
    save = tmp_path / "ckpt"
    flags = flags + ["--train-iters", str(iters), "--save", str(save), "--save-interval", str(half), "--load", str(save)]
    first, _ = layout_run(tmp_path, "first", layout, flags)
    rewind(save, half)
    second, log = layout_run(tmp_path, "second", layout, flags)
    return first, second, log


def rewind(save_dir: Path, iteration: int) -> None:
    """Keep checkpoints up to `iteration` and point the tracker at it (as Megatron's ckpt-resume
    test removes the end checkpoint before the second run)."""
    for folder in save_dir.glob("iter_*"):
        if int(folder.name.split("_")[1].split(".")[0]) > iteration:
            shutil.rmtree(folder)
    (save_dir / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")


def goldtron_load(ps, flags: list[str]):
    """A model built from `flags` (TINY_MODEL first) and filled by goldtron's own `--load` of the
    checkpoint the flags name, in this process on `ps`; raises what that load raises."""
    from goldtron.arguments import parse_args
    from goldtron.checkpoint.rng_state import RankRandomState
    from goldtron.model.gpt import GPTStage
    from goldtron.parallel.random import DropoutRNG
    from goldtron.training.checkpointer import CheckpointParts, build_checkpointer
    from goldtron.training.lr_schedule import LRSchedule
    from goldtron.training.optimizer import build_optimizer
    from goldtron.training.progress import TrainingProgress

    args = parse_args(TINY_MODEL + flags)
    rng = DropoutRNG(args.seed, 0, 0, ps.device)
    model = GPTStage(args, ps, rng)
    parts = CheckpointParts(model, build_optimizer(model, args, ps), LRSchedule.from_args(args),
                            TrainingProgress(), RankRandomState(rng))
    build_checkpointer(args, ps, parts).load()
    return model


def goldtron_logits(ps, flags: list[str], tokens):
    """goldtron's logits [b, s, real vocab] of the checkpoint `flags`' --load names, through
    goldtron's own load (--finetune: the weights only) and forward, in this process on `ps`."""
    import torch

    model = goldtron_load(ps, flags + ["--finetune"])
    model.eval()
    with torch.no_grad():
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        return model.output_layer(model(tokens, positions))


def after(steps: list[dict], iteration: int) -> list[dict]:
    return [s for s in steps if s["iteration"] > iteration]




def assert_resumed_bitwise(steps: list[dict], reference: list[dict], loaded_at: int, keys: tuple[str, ...],
                           label: str = "") -> None:
    """`steps`, a run resumed at `loaded_at`, are the reference run's later steps bit for bit."""
    for ours, ref in zip(steps, after(reference, loaded_at), strict=True):
        for key in keys:
            assert ours[key] == ref[key], (label, ours["iteration"], key, ours[key], ref[key])


def assert_continues_within(steps: list[dict], reference: list[dict], loaded_at: int, rtol: float,
                            keys: tuple[str, ...] = ("lm_loss", "grad_norm")) -> None:
    """`steps`, a run loaded at `loaded_at`, are the reference run's later steps within `rtol`."""
    later = after(reference, loaded_at)
    assert [s["iteration"] for s in steps] == [s["iteration"] for s in later]
    for ours, ref in zip(steps, later, strict=True):
        for key in keys:
            assert relative(ours[key], ref[key]) <= rtol, (ours["iteration"], key, ours[key], ref[key])
