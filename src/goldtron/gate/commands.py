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


DEFAULT_DATA_PATH = Path("~/.cache/goldtron/data")
DEFAULT_CASES_ROOT = Path("tests/functional_tests/test_cases")


def _test_parser() -> _Parser:
    from goldtron.gate.cpu_sizing import SIZES
    from goldtron.gate.launcher import LAUNCHERS

    parser = _Parser(prog="goldtron test", description="Run a functional test case and judge it against its golden values.")
    parser.add_argument("case", type=Path, help="case folder holding model_config.yaml, or a folder of cases "
                                                "(each run in turn; resumable)")
    parser.add_argument("--environment", default=None, help="golden environment (default dev)")
    parser.add_argument("--platform", default=None, help="golden platform (default: detected, e.g. dgx_h100, cpu_intel_avx512)")
    parser.add_argument("--record", action="store_true", help="write this run as the golden of this environment/platform")
    parser.add_argument("--output-dir", type=Path, help="where logs, checkpoints and reports go (default runs/<case>)")
    parser.add_argument("--allow-nondeterministic", action="store_true", help="skip exact checks")
    parser.add_argument("--data-path", type=Path, default=DEFAULT_DATA_PATH, help="fills ${DATA_PATH}")
    parser.add_argument("--nproc-per-node", type=int, help="ranks per node (default: case, GPUs, or tp*pp*cp)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes of the job (torchrun static rendezvous)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (0 hosts the rendezvous)")
    parser.add_argument("--rdzv-endpoint", help="HOST:PORT of node 0, needed with --nnodes > 1")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="how the ranks start: fork (goldtron launch: one torch import, then forked ranks; any Python "
                             "trainer, one node), "
                             "torchrun, or auto (default): fork for goldtron's own trainer on one node without GPUs")
    parser.add_argument("--frozen-checkpoint", type=Path, help="stored checkpoint for frozen-resume")
    parser.add_argument("--n-repeat", type=int, help="override the case's N_REPEAT")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--size", choices=SIZES, default="auto",
                        help="cpu: the case's structure at CPU size (docs/gate.md); full: as written; auto (default): "
                             "cpu on a CPU machine when the case has no PLATFORMS override for it")
    parser.add_argument("--equivalence", action="store_true",
                        help="judge against the case's single-process twin instead of a golden (dropout off)")
    return parser


@_guarded
def test_main(argv: list[str]) -> int:
    """goldtron test CASE_DIR [--environment E] [--platform P] [--record] [--output-dir D] ..."""
    from goldtron.gate.exam import TestRequest, run_test

    args = _test_parser().parse_args(argv)
    return run_test(TestRequest.from_args(args, command=["goldtron", "test", *argv]))


@_guarded
def golden_main(argv: list[str]) -> int:
    """goldtron golden from-tensorboard | diff | validate | stats | promote"""
    from goldtron.gate import golden_tools

    parser = _Parser(prog="goldtron golden", description="Golden-file tools.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    from_tb = sub.add_parser("from-tensorboard", help="a golden file from a TensorBoard folder")
    from_tb.add_argument("tensorboard_dir", type=Path)
    from_tb.add_argument("--out", type=Path, required=True)
    from_tb.add_argument("--step-interval", type=int, default=1, help="Megatron grid: step 1, then multiples")
    from_tb.add_argument("--train-iters", type=int, help="drop steps after this one")
    from_tb.add_argument("--metrics", nargs="+", help="default: Megatron's five recorded metrics")
    diff = sub.add_parser("diff", help="where two golden files differ")
    diff.add_argument("first", type=Path)
    diff.add_argument("second", type=Path)
    validate = sub.add_parser("validate", help="check golden files (folders: recursively)")
    validate.add_argument("paths", type=Path, nargs="+")
    stats = sub.add_parser("stats", help="per-step statistics over repeated runs")
    stats.add_argument("runs", type=Path, nargs="+", help="golden-schema JSON files or TensorBoard folders")
    stats.add_argument("--out", type=Path, required=True)
    promote = sub.add_parser("promote", help="make a run's actual values a case's golden (refuses drift)")
    promote.add_argument("run_dir", type=Path, help="the --output-dir of a `goldtron test` run")
    promote.add_argument("case", type=Path, help="the case folder to write the golden into")
    promote.add_argument("--environment", default="dev", help="golden environment (default dev)")
    promote.add_argument("--platform", help="golden platform or family (default: the run's platform)")
    promote.add_argument("--force", action="store_true", help="accept drift outside the approximate band")
    args = parser.parse_args(argv)
    return golden_tools.dispatch(args)


@_guarded
def cases_main(argv: list[str]) -> int:
    """goldtron cases [ROOT]: the cases, their TEST_TYPE, and which goldens exist."""
    from goldtron.gate.golden_tools import list_cases

    parser = _Parser(prog="goldtron cases", description="List test cases and their golden files.")
    parser.add_argument("root", type=Path, nargs="?", default=DEFAULT_CASES_ROOT)
    args = parser.parse_args(argv)
    return list_cases(args.root)
