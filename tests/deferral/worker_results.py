"""Launch `deferral_worker.py` for a set of runs and read back what each rank recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from support.torchrun import run_script

WORKER = Path(__file__).with_name("deferral_worker.py")
DEFER = ["--defer-embedding-wgrad-compute", "--wgrad-deferral-limit"]


def deferred(limit: int) -> list[str]:
    return [*DEFER, str(limit)]


@dataclass
class RankRecord:
    rank: int
    is_last_stage: bool
    num_micro_batches: int
    history: list[dict]
    first_gradient: torch.Tensor | None  # output-layer gradient after step 1's drain (last stage)


def run_worker(out_dir: Path, nproc: int, common: list[str], runs: dict[str, list[str]],
               timeout: float = 240) -> dict[str, dict[int, RankRecord]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"common": common, "runs": runs}))
    run_script(nproc, WORKER, [str(spec), str(out_dir)], timeout=timeout)
    results: dict[str, dict[int, RankRecord]] = {}
    for name in runs:
        for rank in range(nproc):
            raw = json.loads((out_dir / f"{name}.rank{rank}.json").read_text())
            grad_file = out_dir / f"{name}.rank{rank}.grad.pt"
            grad = torch.load(grad_file) if grad_file.exists() else None
            results.setdefault(name, {})[rank] = RankRecord(rank, raw["is_last_stage"], raw["num_micro_batches"],
                                                            raw["history"], grad)
    return results


def relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def tensor_relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference||: one number per tensor, insensitive to near-zero entries."""
    return float((value.double() - reference.double()).norm() / reference.double().norm())
