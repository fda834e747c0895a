"""Recognise a Megatron-Core / Megatron-LM torch_dist checkpoint folder, check it is whole, and
say what it holds in the terms goldtron's loader uses (common.json's fields).

A Megatron checkpoint folder: `metadata.json` ({"sharded_backend": "torch_dist", ...,
"common_backend": "torch"}), `common.pt` (a pickle, read as data by megatron_common.py), DCP's
`.metadata` and `__<rank>_<k>.distcp`. goldtron's own folders have `common.json` instead of
`common.pt`; that file decides which format a folder is.

From common.pt goldtron takes: `iteration`, `args.consumed_train_samples`, `opt_param_scheduler`
(Megatron's state dict, whose keys goldtron's schedule shares), the writer's TP/PP/DP from `args`,
the architecture flags from `args`, and the optimizer's step (`common_step`, or the
param groups' `step` in the distributed optimizer's fully_reshardable form). Megatron's RNG state is not
taken: it holds CUDA generator states, which have no CPU equivalent.
"""

from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import dataclass

from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.megatron_common import MEGATRON_COMMON_NAME, load_megatron_common
from goldtron.checkpoint.megatron_names import MEGATRON_OPTIMIZER_PREFIX
from goldtron.checkpoint.validation import ARCHITECTURE_FLAGS, read_backend_marker, read_whole_dcp_files
from goldtron.model.embedding import WORD_EMBEDDING_NAME

# Megatron-LM's record of the model shape, checked against this run's flags besides ARCHITECTURE_FLAGS.
SHAPE_ARGS = {"num_layers": "--num-layers", "hidden_size": "--hidden-size", "ffn_hidden_size": "--ffn-hidden-size",
              "num_attention_heads": "--num-attention-heads", "max_position_embeddings": "--max-position-embeddings"}


@dataclass
class MegatronCheckpoint:
    """What goldtron needs of a Megatron checkpoint besides common.json's fields."""

    num_layers: int
    vocab_rows: int          # rows of its vocabulary tensors (Megatron's padded vocabulary of the writer)
    common_step: int | None  # Adam's step count, one for all parameters; None without optimizer state
    args: Namespace
    optimizer_problem: str | None = None  # why its optimizer state cannot be read (raised only if it is loaded)


def is_megatron_checkpoint(path: str) -> bool:
    return os.path.exists(os.path.join(path, MEGATRON_COMMON_NAME)) and not os.path.exists(
        os.path.join(path, "common.json"))


def _int_arg(args: Namespace, name: str, file: str, default=None) -> int:
    value = getattr(args, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{file}: args.{name} is {value!r}, not a whole number; the checkpoint is damaged "
                              "or was not written by Megatron")
    return value


def validate_megatron_checkpoint_dir(path: str) -> tuple[dict, Metadata, MegatronCheckpoint]:
    """(common.json-shaped fields, DCP metadata, Megatron specifics) of a whole Megatron torch_dist
    checkpoint folder, or a CheckpointError naming the first missing, foreign or truncated file."""
    read_backend_marker(path)
    file = os.path.join(path, MEGATRON_COMMON_NAME)
    raw = load_megatron_common(path)
    args = raw.get("args")
    if not isinstance(args, Namespace):
        raise CheckpointError(f"{file} has no 'args' (Megatron-LM's arguments); goldtron needs them to know the "
                              "model and layout. Save with Megatron-LM's save_checkpoint, which records them")
    iteration = raw.get("iteration")
    if not isinstance(iteration, int) or iteration < 0:
        raise CheckpointError(f"{file}: 'iteration' is {iteration!r}, not a whole number")
    schedule = raw.get("opt_param_scheduler")
    tp = _int_arg(args, "tensor_model_parallel_size", file, 1)
    pp = _int_arg(args, "pipeline_model_parallel_size", file, 1)
    world = _int_arg(args, "world_size", file, tp * pp)
    common = {
        "iteration": iteration,
        "consumed_samples": _int_arg(args, "consumed_train_samples", file, 0),
        "opt_param_scheduler": schedule,
        "layout": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                   "data_parallel_size": max(1, world // (tp * pp)), "world_size": world},
        "contents": {"model": True, "optimizer": isinstance(raw.get("optimizer"), dict), "rng": False},
        "args": architecture_args(args),
    }
    metadata = read_whole_dcp_files(path)
    embedding = metadata.state_dict_metadata.get(WORD_EMBEDDING_NAME)
    vocab_rows = embedding.size[0] if isinstance(embedding, TensorStorageMetadata) else 0
    step, problem = None, None
    if common["contents"]["optimizer"]:
        try:
            _check_optimizer_form(path, metadata)
            step = _adam_step(raw["optimizer"], file)
        except CheckpointError as error:  # the weights still load (--no-load-optim)
            problem = str(error)
    info = MegatronCheckpoint(_int_arg(args, "num_layers", file), vocab_rows, step, args, problem)
    return common, metadata, info


def _adam_step(optimizer: dict, file: str) -> int:
    """Adam's step, one for all parameters: `state.common_step` (Megatron's plain optimizer), or the
    param groups' `step` (its distributed optimizer's fully_reshardable form keeps it there)."""
    step = (optimizer.get("state") or {}).get("common_step")
    if step is None:
        groups = (optimizer.get("optimizer") or {}).get("param_groups") or []
        steps = {float(g["step"]) for g in groups if isinstance(g, dict) and g.get("step") is not None}
        if len(steps) > 1:
            raise CheckpointError(f"{file}: the optimizer's param groups have different steps {sorted(steps)}; "
                                  "goldtron keeps one Adam step. Load the weights only with --no-load-optim")
        step = steps.pop() if steps else None
    if step is None:
        raise CheckpointError(f"{file} holds optimizer state but no Adam step (neither optimizer.state.common_step "
                              "nor optimizer.optimizer.param_groups[*].step); load the weights only with --no-load-optim")
    return int(step)


def architecture_args(args: Namespace) -> dict:
    """Megatron-LM's recorded arguments that say what the model is, as a dict of goldtron dests."""
    out = {dest: getattr(args, dest) for dest in (*ARCHITECTURE_FLAGS, *SHAPE_ARGS) if hasattr(args, dest)}
    if out.get("num_query_groups") is None or not getattr(args, "group_query_attention", False):
        out["num_query_groups"] = getattr(args, "num_attention_heads", None)  # no GQA: a group per head
    return out


def _check_optimizer_form(path: str, metadata: Metadata) -> None:
    """The distributed optimizer's default `dp_reshardable` form keys its state by bucket, which
    goldtron does not read: say which flag writes the form it does read."""
    keys = metadata.state_dict_metadata
    if not any(k.startswith(MEGATRON_OPTIMIZER_PREFIX + "exp_avg.") for k in keys):
        raise CheckpointError(
            f"{path} holds optimizer state, but not as optimizer.state.exp_avg.<parameter> tensors (Megatron's "
            "distributed optimizer saves its default dp_reshardable form by bucket). Re-save it from Megatron with "
            "--dist-ckpt-optim-fully-reshardable, or load the weights only with --no-load-optim")


def check_megatron_architecture(info: MegatronCheckpoint, args, path: str) -> None:
    """The run's model shape must be the checkpoint's: layers, widths, heads, positions, and a vocabulary
    whose Megatron padding at the writer's TP gives the rows the checkpoint has."""
    from goldtron.config.validation import padded_vocab_size

    problems = []
    for dest, flag in SHAPE_ARGS.items():
        saved, ours = getattr(info.args, dest, None), getattr(args, dest, None)
        if saved is not None and saved != ours:
            problems.append(f"{flag}: {saved!r} in the checkpoint, {ours!r} in this run")
    tp = getattr(info.args, "tensor_model_parallel_size", 1)
    divisible = getattr(info.args, "make_vocab_size_divisible_by", args.make_vocab_size_divisible_by)
    if info.vocab_rows != padded_vocab_size(args.real_vocab_size, divisible, tp):
        problems.append(f"vocabulary: the checkpoint's vocabulary tensors have {info.vocab_rows} rows, but this run's "
                        f"{args.real_vocab_size} ids pad to {padded_vocab_size(args.real_vocab_size, divisible, tp)} "
                        f"at the writer's TP{tp} (--tokenizer-type / --vocab-size / --vocab-file)")
    if problems:
        raise CheckpointError(f"{path} (a Megatron checkpoint) holds a model of another shape: " + "; ".join(problems)
                              + f". Use the flags it was trained with (its {MEGATRON_COMMON_NAME} 'args' record them; "
                              "`goldtron ckpt inspect` shows them).")
