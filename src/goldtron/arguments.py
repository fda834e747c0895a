"""Megatron-compatible flags -> one validated argparse.Namespace for `goldtron train`.

    from goldtron.arguments import parse_args, ConfigError, padded_vocab_size
    args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))

Attribute names are argparse's dest names for Megatron's flags (--num-layers -> args.num_layers)
with Megatron's defaults, plus derived fields: world_size, data_parallel_size, num_micro_batches,
ffn_hidden_size, kv_channels, num_query_groups (= heads without --group-query-attention),
norm_epsilon (= layernorm_epsilon), rotary_dim, params_dtype, lr_decay_iters, lr_decay_samples, lr_warmup_samples,
tokenizer_type, distributed_backend, torch_threads.

Parsing is pure (no process group, no files, no global state), so every rank validates on its
own before the first collective. All bad input raises ConfigError with the flag and the fix.
The flag tables live in goldtron/config/; docs/flags.md is rendered from them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping, Sequence

from goldtron.config.errors import ConfigError
from goldtron.config.megatron_flags import describe_unimplemented
from goldtron.config.parser import build_parser
from goldtron.config.validation import MachineFacts, padded_vocab_size, validate_and_complete

__all__ = ["ConfigError", "args_to_dict", "build_parser", "machine_facts", "padded_vocab_size", "parse_args",
           "refused_flags"]


def parse_args(argv: Sequence[str], world_size: int = 1, *, machine: MachineFacts | None = None) -> argparse.Namespace:
    """Parse and validate `goldtron train` flags for a run of `world_size` processes.

    `machine` is for tests; by default the facts are read from this machine and environment.
    """
    parser = build_parser()
    args, leftovers = parser.parse_known_args(list(argv))
    if leftovers:
        raise ConfigError(_describe_leftovers(leftovers))
    return validate_and_complete(args, world_size, machine if machine is not None else machine_facts())


def refused_flags(argv: Sequence[str]) -> str | None:
    """The trainer's message for flags it does not take (unknown or unimplemented), without
    validating the rest: what the gate can tell before it launches anything."""
    _, leftovers = build_parser().parse_known_args(list(argv))
    return _describe_leftovers(leftovers) if leftovers else None


def _visible_gpus() -> int:
    """CUDA devices torch can use here (0 without CUDA). A CPU build of torch cannot see one, and
    its version says so (`2.13.0+cpu`): read without importing torch (~1.5 s of CPU per rank), so
    that a bad flag stops every rank before any of them imports it."""
    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return 0
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def machine_facts(environ: Mapping[str, str] | None = None) -> MachineFacts:
    """The machine facts validation depends on, read without side effects."""
    environ = os.environ if environ is None else environ
    raw_local_world_size = environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        local_world_size = int(raw_local_world_size)
    except ValueError:
        raise ConfigError(f"environment variable LOCAL_WORLD_SIZE={raw_local_world_size!r} is not an integer; "
                          "unset it or let torchrun set it.") from None
    gpus = _visible_gpus()
    return MachineFacts(
        cuda_available=gpus > 0,
        cuda_device_count=gpus,
        transformer_engine_installed=importlib.util.find_spec("transformer_engine") is not None,
        cpu_count=os.cpu_count() or 1,
        local_world_size=local_world_size,
    )


def _describe_leftovers(leftovers: list[str]) -> str:
    lines = []
    for token in leftovers:
        if not token.startswith("-"):
            # The value of a refused flag, or a stray word: only worth reporting when alone.
            if not any(t.startswith("-") for t in leftovers):
                lines.append(f"unexpected argument {token!r}: goldtron train takes only --flags.")
            continue
        flag = token.split("=", 1)[0]
        feature = describe_unimplemented(flag)
        if feature is not None:
            lines.append(f"{flag}: a Megatron flag goldtron does not implement ({feature}); remove it.")
        else:
            lines.append(f"{flag}: unknown flag (neither goldtron nor a Megatron flag goldtron knows); "
                         "check the spelling against docs/flags.md.")
    return "goldtron train: " + " ".join(lines) if len(lines) == 1 else (
        "goldtron train: refused flags:\n" + "\n".join(f"  - {line}" for line in lines))


def args_to_dict(args: argparse.Namespace) -> dict:
    """The run's arguments as plain JSON values (for checkpoints and logs); dtypes become strings."""
    return {name: _jsonable(value) for name, value in sorted(vars(args).items())}


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)  # torch.dtype -> "torch.bfloat16"
