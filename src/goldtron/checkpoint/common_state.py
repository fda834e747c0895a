"""The small, replicated part of a checkpoint (common.json): where training is, the LR schedule,
the layout it was saved under, what else was saved, and the run's arguments.

JSON rather than pickle: a person (and `goldtron ckpt inspect`) can read it, and Python's float
repr round-trips exactly, so the schedule comes back bit for bit.
"""

from __future__ import annotations

from goldtron import __version__
from goldtron.arguments import args_to_dict
from goldtron.checkpoint.errors import CheckpointError
from goldtron.model.pipeline_split import PipelineSplit, stage_layer_counts, virtual_stage_layer_counts

# The LR-schedule settings Megatron checks against the flags on resume (state key -> flag).
SCHEDULE_SETTINGS = {
    "max_lr": "--lr", "min_lr": "--min-lr", "lr_warmup_steps": "--lr-warmup-iters/--lr-warmup-fraction",
    "lr_decay_steps": "--lr-decay-iters", "lr_decay_style": "--lr-decay-style",
}


def build_common_state(progress: dict, lr_schedule: dict, ps, args, has_optimizer: bool, has_rng: bool) -> dict:
    """progress: {"iteration", "consumed_samples"}; lr_schedule: the schedule's state_dict."""
    return {
        **progress,
        "opt_param_scheduler": lr_schedule,
        "layout": layout_record(ps, args),
        "contents": {"model": True, "optimizer": has_optimizer, "rng": has_rng},
        "real_vocab_size": args.real_vocab_size,
        "goldtron_version": __version__,
        "args": args_to_dict(args),
    }


def layout_record(ps, args) -> dict:
    """The layout a run trains under: TP, PP, DP (and CP when > 1), the transformer layers of each
    pipeline stage and, with an interleaved pipeline, the model chunks per rank and the layers of each
    virtual stage."""
    split = PipelineSplit.from_args(args)
    record = {"tensor_model_parallel_size": ps.tp_size, "pipeline_model_parallel_size": ps.pp_size,
              "data_parallel_size": ps.dp_size, "world_size": ps.world_size,
              "pipeline_stage_layers": stage_layer_counts(split)}
    if ps.cp_size > 1:  # absent means 1: checkpoints from before context parallelism read the same
        record["context_parallel_size"] = ps.cp_size
    if split.virtual_stages > 1:
        record["virtual_pipeline_model_parallel_size"] = split.virtual_stages
        record["virtual_stage_layers"] = virtual_stage_layer_counts(split)
    return record


def same_layout(common: dict, ps, args) -> bool:
    """Same TP, PP, DP, CP and the same layers on each stage: each rank's random streams then drew for
    the same layers, so restoring them continues the run exactly."""
    saved = common["layout"]
    if (saved["tensor_model_parallel_size"], saved["pipeline_model_parallel_size"], saved["data_parallel_size"],
            saved.get("context_parallel_size", 1)) != (ps.tp_size, ps.pp_size, ps.dp_size, ps.cp_size):
        return False
    saved_stages = saved.get("pipeline_stage_layers") or _even_stages(common, saved)
    split = PipelineSplit.from_args(args)
    # Same layers per rank is not enough with chunks: rank 0 of 4 layers, PP2 holds 0,1 without
    # interleaving and 0,2 with two chunks per rank.
    saved_chunks = saved.get("virtual_stage_layers")
    if (saved_chunks or None) != (virtual_stage_layer_counts(split) if split.virtual_stages > 1 else None):
        return False
    return saved_stages is None or list(saved_stages) == stage_layer_counts(split)


def _even_stages(common: dict, saved_layout: dict) -> list[int] | None:
    # Checkpoints written before uneven splits existed record no split: theirs was even.
    num_layers = (common.get("args") or {}).get("num_layers")
    pp = saved_layout["pipeline_model_parallel_size"]
    return None if num_layers is None else [num_layers // pp] * pp


def describe_layout(tp: int, pp: int, dp: int) -> str:
    return f"TP{tp} x PP{pp} x DP{dp}"


def describe_layout_record(layout: dict) -> str:
    """'TP2 x PP2 x DP1', with the layers per stage when the split is uneven."""
    text = describe_layout(layout["tensor_model_parallel_size"], layout["pipeline_model_parallel_size"],
                           layout["data_parallel_size"])
    if layout.get("context_parallel_size", 1) > 1:
        text += f" x CP{layout['context_parallel_size']}"
    stages = layout.get("pipeline_stage_layers")
    chunks = layout.get("virtual_stage_layers")
    if chunks:
        text += f" x VP{layout.get('virtual_pipeline_model_parallel_size')} (layers per virtual stage " \
                f"{','.join(map(str, chunks))})"
    elif stages and len(set(stages)) > 1:
        text += f" (layers per stage {','.join(map(str, stages))})"
    return text


def restore_schedule(saved: dict, lr_schedule, args, common_file: str) -> None:
    """Megatron's rules: --override-opt_param-scheduler takes the settings from the flags,
    --use-checkpoint-opt_param-scheduler from the checkpoint, and with neither a difference is an
    error. The position in the schedule always comes from the checkpoint."""
    if not args.override_opt_param_scheduler and not args.use_checkpoint_opt_param_scheduler:
        current = lr_schedule.state_dict()
        for key, flag in SCHEDULE_SETTINGS.items():
            if current[key] != saved[key]:
                raise CheckpointError(
                    f"the LR schedule in {common_file} has {key}={saved[key]!r} but this run's "
                    f"{flag} gives {current[key]!r}. Add --use-checkpoint-opt_param-scheduler to keep the "
                    "checkpoint's schedule, or --override-opt_param-scheduler to take the flags'.")
    lr_schedule.load_state_dict(saved, use_checkpoint_values=args.use_checkpoint_opt_param_scheduler)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SCHEDULE_FIELDS = {"max_lr": _is_number, "min_lr": _is_number, "lr_warmup_steps": _is_number,
                    "lr_decay_steps": _is_number, "lr_decay_style": lambda v: isinstance(v, str),
                    "num_steps": _is_number}
_LAYOUT_SIZES = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "data_parallel_size", "world_size")


def check_common_state(common: object, path: str) -> None:
    """Every field goldtron reads from common.json has the type it wrote, so a damaged or foreign
    file is one CheckpointError naming the file and field, never a KeyError or TypeError later."""
    def bad(field: str, expected: str, value) -> CheckpointError:
        return CheckpointError(f"{path}: field {field!r} should be {expected}, got {value!r}; the checkpoint "
                               "is damaged or was not written by goldtron. Restore the file or resume from "
                               "another checkpoint (edit the tracker).")

    if not isinstance(common, dict):
        raise bad("(top level)", "an object", type(common).__name__)
    for field in ("iteration", "consumed_samples"):
        if not _is_int(common.get(field)) or common[field] < 0:
            raise bad(field, "a whole number >= 0", common.get(field))
    schedule = common.get("opt_param_scheduler")
    if not isinstance(schedule, dict):
        raise bad("opt_param_scheduler", "an object", schedule)
    for field, valid in _SCHEDULE_FIELDS.items():
        if not valid(schedule.get(field)):
            raise bad(f"opt_param_scheduler.{field}", "a number" if field != "lr_decay_style" else "text",
                      schedule.get(field))
    layout = common.get("layout")
    if not isinstance(layout, dict):
        raise bad("layout", "an object", layout)
    for field in _LAYOUT_SIZES:
        if not _is_int(layout.get(field)) or layout[field] < 1:
            raise bad(f"layout.{field}", "a whole number >= 1", layout.get(field))
    stages = layout.get("pipeline_stage_layers")
    if stages is not None and not (isinstance(stages, list) and all(_is_int(n) and n >= 0 for n in stages)):
        raise bad("layout.pipeline_stage_layers", "a list of layer counts", stages)
    contents = common.get("contents")
    if not isinstance(contents, dict) or not all(isinstance(contents.get(k, False), bool)
                                                 for k in ("model", "optimizer", "rng")):
        raise bad("contents", 'an object like {"model": true, "optimizer": true, "rng": true}', contents)
    args = common.get("args")
    if args is not None and not isinstance(args, dict):
        raise bad("args", "an object (the run's arguments)", args)
    if isinstance(args, dict) and args.get("num_layers") is not None and not _is_int(args["num_layers"]):
        raise bad("args.num_layers", "a whole number", args["num_layers"])
    for field, valid, expected in (("real_vocab_size", _is_int, "a whole number"),
                                   ("goldtron_version", lambda v: isinstance(v, str), "text")):
        if common.get(field) is not None and not valid(common[field]):
            raise bad(field, expected, common[field])
