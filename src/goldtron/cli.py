"""The `goldtron` command: one sub-command per concern, each owned by its own module.

Each entry maps a sub-command to "module:function"; the function takes the remaining argv
and returns an exit code. Modules are imported lazily so `goldtron --help` stays fast and a
sub-command's heavy imports (torch, tensorboard) are paid only when it runs.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("goldtron.training.main:main", "train one rank (run under torchrun for many)"),
    "launch": ("goldtron.training.launch:main", "start one node's ranks of `train`, forked after one torch import"),
    "test": ("goldtron.gate.commands:test_main", "run a functional test case and judge it"),
    "compare": ("goldtron.gate.commands:compare_main", "compare a run with a golden file"),
    "golden": ("goldtron.gate.commands:golden_main", "golden files: from-tensorboard, diff, validate, stats"),
    "cases": ("goldtron.gate.commands:cases_main", "list test cases and their goldens"),
    "data": ("goldtron.data.commands:main", "data tools: preprocess, corpus"),
    "ckpt": ("goldtron.checkpoint.commands:main", "checkpoint tools: inspect, export"),
    "timeline": ("goldtron.training.timeline:main", "draw the pipeline timeline of a run"),
}


def _usage() -> str:
    lines = ["usage: goldtron COMMAND [ARGS...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {summary}")
    lines.append("")
    lines.append("`goldtron COMMAND --help` shows a command's own options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from goldtron import __version__

        print(f"goldtron {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"goldtron: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
