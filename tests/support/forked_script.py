"""A test script's ranks forked by `goldtron launch`'s launcher (training/launch.py) instead of
torchrun: they start with torch and goldtron's trainer imported once, ~2-4 s sooner a 4-rank launch
on 2 cores, with the environment torchrun would give them.

    python forked_script.py NPROC SCRIPT [ARGS...]
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
from pathlib import Path

from goldtron.training.launch import launch


def run_script_rank(script: str, args: list[str]) -> int:
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python SCRIPT` puts its folder first
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    nproc, script, script_args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    code = launch(nproc, script_args, None, rank_main=functools.partial(run_script_rank, script))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
