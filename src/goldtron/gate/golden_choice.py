"""Which golden file judges a run, and why: the resolution chain.

1. `golden_values_{env}_{platform}.json`: recorded on this very platform (CPU vendor + ISA, or
   GPU model). Megatron's checks as the case sets them (exact where Megatron is exact).
2. `golden_values_{env}_{family}.json`: the portable golden of the platform's family (`cpu` for
   every `cpu_*` platform, `dgx` for Megatron's GPUs). A real run of one platform of that family
   (its `.provenance` sidecar names which), judged with cross-platform tolerances
   (`gate/portable.py`). Named like Megatron's files with the family in the platform's place, so
   Megatron's own tooling, which globs `golden_values_*.json`, still reads it; it plays the part of
   Megatron's platform-free `golden_values_lts.json`, but says which machines it is good for.
3. Otherwise no golden: the gate fails and says what exists and how to record one.

`--platform P` forces `golden_values_{env}_P.json` and nothing else; a family name there
(`--platform cpu`) forces the portable golden, judged as portable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from goldtron.gate.case import Case, golden_file_name

# Platform-name prefix -> family; a family's portable golden serves every platform with that prefix.
FAMILIES = {"cpu_": "cpu", "dgx_": "dgx", "gpu_": "gpu"}


def platform_family(platform: str) -> str | None:
    """`cpu` for `cpu_amd_avx2`, `dgx` for `dgx_h100`; None for a family name or an unknown one."""
    return next((family for prefix, family in FAMILIES.items() if platform.startswith(prefix)), None)


def is_family(name: str) -> bool:
    return name in FAMILIES.values()


@dataclass(frozen=True)
class GoldenChoice:
    """The golden file (possibly absent) a run is judged against, and the one-line reason."""

    path: Path
    family: str | None  # set for a family's portable golden (judged with cross-platform tolerances)
    reason: str

    @property
    def portable(self) -> bool:
        return self.family is not None

    @property
    def second_path(self) -> Path:
        return self.path.with_name(self.path.stem + "_2nd.json")

    @property
    def exists(self) -> bool:
        return self.path.is_file()


def _recorded_on(path: Path) -> str:
    from goldtron.gate.provenance import read_sidecar

    try:
        record = read_sidecar(path) or {}
    except ValueError:
        return "an unknown platform (its .provenance sidecar is not valid JSON)"
    return str(record.get("recorded_on_platform") or record.get("platform") or "an unknown platform (no .provenance)")


def choose_golden(case: Case, environment: str, platform: str, forced: bool) -> GoldenChoice:
    """Walk the chain for `platform` (detected, or forced with --platform)."""
    own = case.golden_path(environment, platform)
    if forced:
        family = platform if is_family(platform) else None
        kind = "portable golden, cross-platform tolerances" if family else "exact checks as the case sets them"
        return GoldenChoice(own, family, f"{own.name}: forced by --platform {platform} ({kind})")
    if own.is_file():
        return GoldenChoice(own, None, f"{own.name}: recorded on this platform ({platform})")
    family = platform_family(platform)
    if family is not None:
        shared = case.path / golden_file_name(environment, family)
        if shared.is_file():
            return GoldenChoice(shared, family, (
                f"{shared.name}: portable golden of the {family} family, recorded on {_recorded_on(shared)}; "
                f"this platform ({platform}) has no {own.name}, so cross-platform tolerances apply"))
    return GoldenChoice(own, None, f"{own.name}: none for this platform ({platform})"
                        + (f" and no {golden_file_name(environment, family)} for its family" if family else ""))
