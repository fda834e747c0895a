"""argparse front ends of `goldtron test | compare | golden | cases` (wired in goldtron/cli.py).

Exit codes everywhere: 0 pass, 1 fail, 2 bad case or usage (the message says what to fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from goldtron.gate.errors import GateInputError

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors return 2 like bad cases."""

    def error(self, message: str):
        raise GateInputError(f"{self.prog}: {message}")


def _guarded(function):
    def wrapper(argv: list[str]) -> int:
        try:
            return function(list(argv))
        except GateInputError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


@_guarded
def compare_main(argv: list[str]) -> int:
    """goldtron compare --golden G.json --actual A [--model-config Y] [--metrics M ...]"""
    from goldtron.gate.actual import load_actual
    from goldtron.gate.case import load_case
    from goldtron.gate.checks import DEFAULT_METRICS, judge
    from goldtron.gate.golden import load_golden
    from goldtron.gate.report import CaseReport, Judgement, print_table, write_reports

    parser = _Parser(prog="goldtron compare", description="Compare a run with a golden file, as `goldtron test` would.")
    parser.add_argument("--golden", required=True, type=Path, help="golden_values_*.json")
    parser.add_argument("--actual", required=True, type=Path, help="a TensorBoard log folder or a golden-schema JSON")
    parser.add_argument("--model-config", type=Path, help="model_config.yaml: METRICS, TOLERANCES, determinism")
    parser.add_argument("--metrics", nargs="+", help="metrics to check (default: the case's METRICS, else lm loss, num-zeros)")
    parser.add_argument("--allow-nondeterministic", action="store_true", help="skip exact checks")
    parser.add_argument("--output-dir", type=Path, help="also write summary.md and junit.xml here")
    args = parser.parse_args(argv)

    metrics, tolerances, deterministic, source = list(DEFAULT_METRICS), {}, True, "compare"
    if args.model_config:
        case = load_case(args.model_config.parent if args.model_config.is_file() else args.model_config)
        metrics, tolerances, deterministic, source = list(case.metrics), case.tolerances, case.deterministic, str(case.config_file)
    if args.metrics:
        metrics = args.metrics
    golden = load_golden(args.golden)
    actual = load_actual(args.actual)
    verdict = judge(golden, actual, metrics, tolerances, deterministic and not args.allow_nondeterministic,
                    source=source)
    report = CaseReport(case=f"{args.actual} vs {args.golden.name}", judgements=[Judgement("actual vs golden", verdict)])
    print_table(report)
    if args.output_dir:
        write_reports(report, args.output_dir)
    return EXIT_PASS if report.passed else EXIT_FAIL
