"""`goldtron ckpt export DIR --to megatron OUT`: a goldtron checkpoint rewritten as the torch_dist
checkpoint Megatron-Core / Megatron-LM writes for a GPT, in one process.

    OUT/latest_checkpointed_iteration.txt
    OUT/iter_XXXXXXX/  .metadata, __0_0.distcp   model and Adam moments under Megatron's keys
                       common.pt                 args (argparse.Namespace), iteration, schedule, step
                       metadata.json             {"sharded_backend": "torch_dist", ..., "common_backend": "torch"}

What changes on the way (megatron_names.py has the key facts):
- layers are stacked on a leading layer axis, layer norms renamed to Transformer Engine's names;
- vocabulary tensors (and their moments) get Megatron's padded rows for the saved layout's TP,
  as zeros: goldtron never trains padded rows (Megatron's softmax would see them as logit 0);
- Adam's step (the same for every parameter) becomes common.pt's `optimizer.state.common_step`;
- every linear gets Megatron's `_extra_state` entry (None, as its local-spec layers save);
- RNG states are not written (goldtron's are CPU generators; Megatron-LM's loader then reseeds).
Tensors are copied bit for bit. OUT must not exist yet: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import os
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp

from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.export import read_full_tensors
from goldtron.checkpoint.global_shard import GlobalShardSavePlanner
from goldtron.checkpoint.layout import iteration_dir, write_json_durably, write_tracker
from goldtron.checkpoint.megatron_common import MEGATRON_COMMON_NAME
from goldtron.checkpoint.megatron_names import extra_state_keys, megatron_optimizer_key, to_megatron
from goldtron.checkpoint.megatron_state import STEP_PREFIX, VOCAB_TENSORS
from goldtron.checkpoint.model_state import ADAM_MOMENTS, OPTIMIZER_PREFIX
from goldtron.checkpoint.rng_state import RNG_PREFIX
from goldtron.checkpoint.validation import FoundCheckpoint

MEGATRON_BACKEND_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                             "common_backend": "torch", "common_backend_version": 1}
# Megatron-LM's checkpoint format version (megatron/training/checkpointing.py).
MEGATRON_CHECKPOINT_VERSION = 3.0


def _megatron_vocab_rows(common: dict) -> int:
    from goldtron.config.validation import padded_vocab_size

    args = common.get("args") or {}
    real = common.get("real_vocab_size") or args.get("real_vocab_size")
    if real is None:
        raise CheckpointError("the checkpoint records no real_vocab_size; it predates the field, so Megatron's "
                              "padded vocabulary cannot be worked out: re-save it with this goldtron")
    return padded_vocab_size(real, args.get("make_vocab_size_divisible_by", 128),
                             common["layout"]["tensor_model_parallel_size"])


def megatron_tensors(tensors: dict[str, torch.Tensor], num_layers: int, vocab_rows: int) -> dict[str, torch.Tensor]:
    """goldtron's full tensors (model and Adam moments by goldtron key) -> Megatron's, by its keys."""
    stacked: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        kind, name = None, key
        if key.startswith(OPTIMIZER_PREFIX):
            kind, name = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            if kind not in ADAM_MOMENTS:
                continue
        place = to_megatron(name)
        target = place.key if kind is None else megatron_optimizer_key(kind, place.key)
        if name in VOCAB_TENSORS:
            padded = torch.zeros((vocab_rows, *tensor.shape[1:]), dtype=tensor.dtype)
            padded[: tensor.shape[0]] = tensor
            tensor = padded
        if place.layer is None:
            out[target] = tensor
        else:
            stacked.setdefault(target, {})[place.layer] = tensor
    for key, layers in stacked.items():
        if sorted(layers) != list(range(num_layers)):
            raise CheckpointError(f"{key}: the checkpoint holds layers {sorted(layers)}, not 0..{num_layers - 1}")
        out[key] = torch.stack([layers[i] for i in range(num_layers)])
    return out


def megatron_args(common: dict) -> argparse.Namespace:
    """Megatron-LM's `args` for the checkpoint: goldtron's arguments (Megatron's dests) plus the
    progress and layout fields Megatron-LM's loader reads from them."""
    layout = common["layout"]
    fields = dict(common.get("args") or {})
    fields.pop("params_dtype", None)  # goldtron records it as text; Megatron's is a torch.dtype
    fields.update(
        params_dtype=torch.float32, consumed_train_samples=common["consumed_samples"], consumed_valid_samples=0,
        iteration=common["iteration"], tensor_model_parallel_size=layout["tensor_model_parallel_size"],
        pipeline_model_parallel_size=layout["pipeline_model_parallel_size"],
        data_parallel_size=layout["data_parallel_size"], world_size=layout["world_size"],
        ckpt_format="torch_dist", dist_ckpt_optim_fully_reshardable=True)
    return argparse.Namespace(**fields)


def _megatron_schedule(common: dict) -> dict:
    """Megatron's scheduler state: goldtron's fields plus its weight-decay fields (goldtron's weight
    decay is constant)."""
    args = common.get("args") or {}
    wd = args.get("weight_decay", 0.01)
    return {**common["opt_param_scheduler"], "start_wd": wd, "end_wd": wd, "wd_incr_style": "constant",
            "wd_incr_steps": common["opt_param_scheduler"]["lr_decay_steps"]}


def export_megatron(found: FoundCheckpoint, out: str) -> str:
    """Write `found` as a Megatron torch_dist checkpoint under `out` (a new save directory)."""
    if os.path.exists(out):
        raise CheckpointError(f"{out} exists; `goldtron ckpt export --to megatron` writes a new save directory "
                              "and overwrites nothing: name a path that does not exist yet")
    common = found.common
    num_layers = (common.get("args") or {}).get("num_layers")
    if not isinstance(num_layers, int):
        raise CheckpointError(f"{found.path} records no num_layers in its args; re-save it with this goldtron")
    tensors = read_full_tensors(found, lambda key: not key.startswith(RNG_PREFIX))
    steps = {float(v) for k, v in tensors.items() if k.startswith(STEP_PREFIX)}
    if len(steps) > 1:
        raise CheckpointError(f"{found.path}: Adam's step differs between parameters ({sorted(steps)}); "
                              "Megatron keeps one step for all, so this state cannot be written as Megatron's")
    state: dict = megatron_tensors(tensors, num_layers, _megatron_vocab_rows(common))
    state.update({key: [None] for key in extra_state_keys(num_layers)})  # Megatron's ShardedObject payload
    work = out + ".in_progress"
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted export left
    try:
        _write(work, state, common, steps)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.move(work, out)  # all or nothing: OUT appears complete
    return iteration_dir(out, common["iteration"])


def _write(work: str, state: dict, common: dict, steps: set[float]) -> None:
    iteration = common["iteration"]
    folder = iteration_dir(work, iteration)
    os.makedirs(folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), planner=GlobalShardSavePlanner(), no_dist=True)
    optimizer = None
    if steps:
        args = common.get("args") or {}
        optimizer = {"state": {"common_step": int(steps.pop())},
                     "param_groups": [{"lr": common["opt_param_scheduler"]["max_lr"],
                                       "betas": (args.get("adam_beta1", 0.9), args.get("adam_beta2", 0.999)),
                                       "eps": args.get("adam_eps", 1e-8), "weight_decay": args.get("weight_decay", 0.01)}]}
    torch.save({"args": megatron_args(common), "checkpoint_version": MEGATRON_CHECKPOINT_VERSION,
                "iteration": iteration, "opt_param_scheduler": _megatron_schedule(common),
                **({"optimizer": optimizer} if optimizer else {}), "num_floating_point_operations_so_far": 0},
               os.path.join(folder, MEGATRON_COMMON_NAME))
    write_json_durably(os.path.join(folder, "metadata.json"), MEGATRON_BACKEND_METADATA)
    write_tracker(work, iteration)
