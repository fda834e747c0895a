"""Layout equivalence (`goldtron test CASE --equivalence`, or `GOLDTRON.EQUIVALENCE: true`):
a case judged against its own single-process twin, with no golden file, on any machine.

The twin is the same case with every parallel dimension at 1 (TP = PP = CP = EP = 1, no virtual
pipeline, no data parallelism) and the options that only rearrange the same computation off
(deferral, recomputation, the distributed optimizer, overlapped reduction, sequence
parallelism, uneven splits); it trains the same global batch, in the same data order, as one
process. Dropout is off in both runs: dropout masks are drawn per rank, so with dropout two
layouts train on different noise by design. Both runs must then take the same steps: per-step
`lm loss` and `grad-norm` are compared, and the first step that diverges is named.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from goldtron import trainer_contract as tags
from goldtron.gate.case import Case
from goldtron.gate.checks import judge
from goldtron.gate.golden import Golden, MetricSeries
from goldtron.gate.launcher import LaunchOptions
from goldtron.gate.report import Judgement
from goldtron.gate.runner import run_repeat

EQUIVALENCE_METRICS = (tags.LM_LOSS, tags.GRAD_NORM)
# fp32 rounding of the same sums taken in another order (TP's partial GEMMs and all-reduces,
# DP's gradient sums, the micro-batch split) is all that separates a layout from one process.
# Measured on the 9 reference cases goldtron accepts, at CPU size over 20 steps: at most 1.0e-7
# relative in lm loss and grad-norm (docs/gate.md "Layout equivalence"). 1e-5 leaves 100x for
# layouts that sum more differently, and is far below what a wrong gradient or activation does
# (the layout mutants of tests/gate/test_equivalence_runs.py are off by more from step 1).
EQUIVALENCE_RTOL = 1e-5
EQUIVALENCE_LINE = f"dropout off; lm loss and grad-norm of every step within rtol {EQUIVALENCE_RTOL:g} of the single-process twin"
EQUIVALENCE_TOLERANCES = {metric: {"exact": False, "approx_rtol": EQUIVALENCE_RTOL} for metric in EQUIVALENCE_METRICS}

DROPOUT_OFF = {"--hidden-dropout": 0.0, "--attention-dropout": 0.0}
SINGLE_PROCESS = {"--tensor-model-parallel-size": 1, "--pipeline-model-parallel-size": 1}
# Flags the twin drops: a parallel dimension, or an option that computes the same step another way.
TWIN_DROPS = (
    "--context-parallel-size", "--cp-comm-type", "--hierarchical-context-parallel-sizes",
    "--expert-model-parallel-size", "--expert-tensor-parallel-size",
    "--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank",
    "--microbatch-group-size-per-virtual-pipeline-stage", "--overlap-p2p-communication",
    "--overlap-p2p-communication-warmup-flush",
    "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers",
    "--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split",
    "--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "--sequence-parallel",
    "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather", "--use-tp-pp-dp-mapping",
    "--recompute-granularity", "--recompute-method", "--recompute-num-layers",
    # The twin is one regular run: no checkpoint to write or read.
    "--save", "--load", "--save-interval", "--async-save", "--use-persistent-ckpt-worker",
)


def without_dropout(case: Case) -> Case:
    """The case as equivalence runs it: dropout off (see the module docstring)."""
    return replace(case, model_args=dict(case.model_args, **DROPOUT_OFF))


def single_process_twin(case: Case) -> Case:
    """`case` (already without dropout) as one process computing the same steps."""
    model_args = {flag: value for flag, value in case.model_args.items() if flag not in TWIN_DROPS}
    model_args.update(SINGLE_PROCESS)
    return replace(case, model_args=model_args, test_type="regular", nproc_per_node=1, n_repeat=1,
                   frozen_checkpoint=None)


def unrounded_values(tensorboard_dir: Path, last_step: int) -> Golden:
    """The equivalence metrics of a run as logged (a golden's 5-decimal rounding would be coarser
    than the tolerance for a grad-norm below 0.1)."""
    from goldtron.gate.tensorboard_reader import read_scalars

    scalars = read_scalars(tensorboard_dir)
    values: Golden = {}
    for metric in EQUIVALENCE_METRICS:
        steps = {step: value for step, value in sorted(scalars.get(metric, {}).items()) if 1 <= step <= last_step}
        if steps:
            values[metric] = MetricSeries(min(steps), max(steps), 1, steps)
    return values


def run_twin(case: Case, options, report) -> tuple[Golden | None, bool]:
    """Train `case`'s single-process twin under `options.output_dir`/single_process: its values, or
    None (the failure is in `report.errors`); and whether the trainer refused its configuration."""
    twin = single_process_twin(case)
    twin_options = replace(options, output_dir=options.output_dir / "single_process",
                           launch=LaunchOptions(1, launcher=options.launch.launcher),
                           repeats=1, run_name=f"{case.name} single-process twin")
    repeat = run_repeat(twin, twin_options, 1)
    failures = [f"single-process twin: {phase.describe_failure()}" for phase in repeat.phases if not phase.ok]
    if failures or not repeat.ok:
        report.errors.extend(failures or ["single-process twin: it did not finish"])
        return None, any(phase.config_error for phase in repeat.phases)
    return unrounded_values(repeat.tensorboard["run1"], twin.train_iters), False


def judge_against_twin(twin: Golden, run1: Golden, source: str) -> Judgement:
    """Run 1 against the single-process twin on every step (no exact check: other summation
    order). Unlike Megatron's approximate checks no step may fail: a layout bug shows from the
    step it enters and stays, so one allowed step would only hide where it starts."""
    verdict = judge(twin, run1, EQUIVALENCE_METRICS, EQUIVALENCE_TOLERANCES, deterministic=False,
                    reference_name="single process", source=source)
    for result in verdict.results:
        result.failures_allowed = 0
        if result.status == "pass" and result.steps_failed:
            result.status = "fail"
            result.message = result.message.replace(": PASS", ": FAIL").replace("1 allowed", "0 allowed")
    return Judgement("run 1 vs single process", verdict)
