"""`goldtron train`: one rank of a run (torchrun starts one per process; alone it is a 1-rank run).

Order matters for "no hang on bad input": flags are validated on every rank before any
collective, so a bad flag makes every rank exit with the same message and code 2.
"""

from __future__ import annotations

import os
import sys

from goldtron.arguments import ConfigError, parse_args
from goldtron.trainer_contract import EXIT_CONFIG_ERROR


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as error:
        rank = os.environ.get("RANK", "0")
        print(f"goldtron train: error (rank {rank}): {error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    if os.environ.get("RANK", "0") == "0":
        for warning in args.config_warnings:
            print(f"goldtron train: warning: {warning}", file=sys.stderr, flush=True)
    from goldtron.checkpoint.errors import CheckpointError
    from goldtron.data.errors import DataError
    from goldtron.training.build import build_and_train  # torch is imported from here on
    from goldtron.training.rerun import ResultValidationStop

    try:
        build_and_train(args)
    except (CheckpointError, DataError) as error:  # the message names the file and the fix
        kind = "checkpoint" if isinstance(error, CheckpointError) else "data"
        print(f"goldtron train: {kind} error (rank {os.environ.get('RANK', '0')}): {error}",
              file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    except ResultValidationStop as stop:  # --rerun-mode: Megatron's exit codes 16 and 17
        print(f"goldtron train: rank {os.environ.get('RANK', '0')}: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    return 0
