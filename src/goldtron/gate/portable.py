"""Cross-platform tolerances: how run 1 is judged against a family's portable golden.

Evidence (docs/gate.md, "Portable goldens", has the tables): the flagship on three CPU kinds,
Intel Xeon AVX512, AMD EPYC AVX2 and AMD EPYC AVX512, torch 2.13.0, fp32, one thread per rank:
- `lm loss`: the three agree at all 5 decimals on all 40 steps. Underneath, the bits differ
  (MKL and ATen pick other kernels per CPU, so fp32 sums run in another order): the 10-step
  probe in ../shared/reference/cross_cpu differs by 1-3 fp32 ulps per step (<= 7.2e-7 absolute,
  7e-8 relative), and `MKL_CBWR=COMPATIBLE` with `ATEN_CPU_CAPABILITY=default` does not remove it.
  rtol 5e-6 (5e-5 absolute at a loss of 10) leaves room for the golden's 5-decimal rounding on both
  sides (1e-5) and 4x the drift seen, and is still 20x below a real bug (one micro-batch's
  LM-head gradient missing moves the loss by ~1e-3 within two steps).
- `num-zeros`: in fp32 a gradient element is exactly zero only by cancellation, which depends on
  the summation order: 0 on one CPU is 1 on another (3 of 40 steps, AMD AVX2 vs Intel). Megatron's
  20% of 0 is 0, so an absolute allowance of 100 elements is added: a real bug (a weight's whole
  gradient lost) makes tens of thousands to millions of zeros.
- `iteration-time`: judged in calibrated units (`gate/calibration.py`): both medians divided by
  the calibration workload timed on their machine. A 50% band: a trainer 2x slower fails on every
  machine, while a machine 2x slower (emulated: ATen and MKL held to AVX2) moves the ratio by
  less than the band (figures in docs/gate.md).
- Memory metrics count bytes of tensors, not of the machine: equal on every CPU, Megatron's 5%.
"""

from __future__ import annotations

from goldtron.gate.errors import GateInputError

CALIBRATED_METRIC = "iteration-time"
PORTABLE_DEFAULTS: dict[str, dict[str, dict]] = {
    "cpu": {
        "lm loss": {"exact": False, "approx_rtol": 5e-6},
        "num-zeros": {"exact": False, "approx_rtol": 0.2, "approx_atol": 100},
        CALIBRATED_METRIC: {"approx_rtol": 0.5},
    },
}


def portable_tolerances(family: str, case_tolerances: dict[str, dict], case_portable: dict[str, dict],
                        source: str) -> dict[str, dict]:
    """The case's tolerances, then the family's defaults, then the case's PORTABLE_TOLERANCES."""
    if family not in PORTABLE_DEFAULTS and not case_portable:
        raise GateInputError(
            f"{source}: the portable golden of the {family!r} family needs cross-platform tolerances, and "
            f"goldtron has measured them only for {', '.join(PORTABLE_DEFAULTS)}. Fix: add GOLDTRON: "
            "{PORTABLE_TOLERANCES: {...}} to the case (with the measurements behind it), or record a golden "
            "for this platform with --record")
    merged = {metric: dict(values) for metric, values in case_tolerances.items()}
    for layer in (PORTABLE_DEFAULTS.get(family, {}), case_portable):
        for metric, values in layer.items():
            merged[metric] = dict(merged.get(metric, {}), **values)
    return merged
