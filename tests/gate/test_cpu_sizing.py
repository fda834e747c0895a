"""CPU sizing of Megatron cases (gate/cpu_sizing.py): the structure kept, every divisibility
Megatron checks kept, what cannot fit refused by name, the same case always sized the same way."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from goldtron.arguments import ConfigError, parse_args
from goldtron.config.validation import MachineFacts
from goldtron.gate.case import Case, find_cases, load_case, model_args_to_argv
from goldtron.gate.cpu_sizing import CpuSize, size_model_args, sized_case, wants_cpu_size
from goldtron.gate.errors import GateInputError

from .conftest import reference_dir
from .test_reference_coverage import ACCEPTED, PLACES

FLAGSHIP = Path(__file__).parents[1] / "functional_tests/test_cases/gpt/gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute"
BASE = {"--num-layers": 12, "--hidden-size": 512, "--num-attention-heads": 8, "--micro-batch-size": 4,
        "--global-batch-size": 32, "--seq-length": 1024, "--max-position-embeddings": 1024, "--train-iters": 100,
        "--lr-decay-iters": 320000, "--lr-warmup-fraction": 0.01, "--save-interval": 50, "--bf16": True,
        "--transformer-impl": "transformer_engine", "--distributed-backend": "nccl"}


def sized(**flags):
    return size_model_args(dict(BASE, **flags), "case.yaml")


def test_layout_kept_data_parallelism_shrunk_first():
    result = sized(**{"--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2})
    args = result.model_args
    assert (args["--tensor-model-parallel-size"], args["--pipeline-model-parallel-size"]) == (2, 2)
    # Megatron: 8 GPUs, DP 2, 32 / (4 x 2) = 4 micro-batches. CPU: DP 1, the 4 micro-batches kept.
    assert result.nproc == 4
    assert args["--global-batch-size"] == args["--micro-batch-size"] * 1 * 4
    one_process = sized()  # TP1 PP1: DP 8 shrinks to 4 (the CPU's target world)
    assert one_process.nproc == 4
    assert one_process.model_args["--global-batch-size"] == 2 * 4 * 1


def test_sizes_shrink_and_keep_megatron_divisibility():
    args = sized(**{"--tensor-model-parallel-size": 4, "--pipeline-model-parallel-size": 2}).model_args
    assert args["--num-attention-heads"] % 4 == 0
    assert args["--hidden-size"] == args["--num-attention-heads"] * CpuSize().head_dim
    assert args["--num-layers"] % 2 == 0 and args["--num-layers"] < 12
    assert args["--seq-length"] == args["--max-position-embeddings"] == CpuSize().seq_length
    assert "--bf16" not in args and args["--distributed-backend"] == "gloo" and args["--transformer-impl"] == "local"


def test_checkpoint_and_schedule_move_with_the_run():
    args = sized().model_args
    assert args["--train-iters"] == 20
    assert args["--save-interval"] == 10  # half-way, where Megatron's ckpt-resume resumes
    assert args["--lr-decay-iters"] == 20 and args["--lr-warmup-fraction"] == 0.1
    never = sized(**{"--save-interval": 10000}).model_args
    assert never["--save-interval"] == 10000  # a case that never saves mid-run still does not


def test_uneven_split_stays_uneven():
    args = sized(**{"--pipeline-model-parallel-size": 4, "--decoder-first-pipeline-num-layers": 2,
                    "--decoder-last-pipeline-num-layers": 2}).model_args
    # Megatron's 2,4,4,2 becomes 1,2,2,1.
    assert (args["--decoder-first-pipeline-num-layers"], args["--decoder-last-pipeline-num-layers"]) == (1, 1)
    assert args["--num-layers"] == 6


def test_virtual_pipeline_and_accounted_units():
    args = sized(**{"--pipeline-model-parallel-size": 4, "--num-virtual-stages-per-pipeline-rank": 2,
                    "--num-layers": 6, "--account-for-embedding-in-pipeline-split": True,
                    "--account-for-loss-in-pipeline-split": True}).model_args
    assert (args["--num-layers"] + 2) % (4 * 2) == 0
    per_stage = sized(**{"--pipeline-model-parallel-size": 2, "--num-layers-per-virtual-pipeline-stage": 3}).model_args
    vp = (12 // 2) // 3
    assert per_stage["--num-layers"] == 2 * vp * per_stage["--num-layers-per-virtual-pipeline-stage"]


def test_grouped_query_attention_stays_grouped():
    args = sized(**{"--tensor-model-parallel-size": 2, "--num-attention-heads": 32, "--group-query-attention": True,
                    "--num-query-groups": 8}).model_args
    groups, heads = args["--num-query-groups"], args["--num-attention-heads"]
    assert groups % 2 == 0 and heads % groups == 0 and heads > groups


def test_context_parallel_chunks_and_all_to_all_heads():
    args = sized(**{"--tensor-model-parallel-size": 2, "--context-parallel-size": 2, "--cp-comm-type": "a2a",
                    "--sequence-parallel": True}).model_args
    assert args["--seq-length"] % (2 * 2) == 0 and args["--seq-length"] % 2 == 0
    assert (args["--num-attention-heads"] // 2) % 2 == 0  # each TP rank's heads split over CP


def test_what_a_cpu_cannot_hold_is_refused_by_name():
    with pytest.raises(GateInputError, match=r"case.yaml: cannot size this case.*TP 8 x PP 2 x CP 1 = 16"):
        sized(**{"--tensor-model-parallel-size": 8, "--pipeline-model-parallel-size": 2})


def test_recompute_layers_at_most_a_stage():
    args = sized(**{"--pipeline-model-parallel-size": 4, "--recompute-granularity": "full",
                    "--recompute-method": "block", "--recompute-num-layers": 3}).model_args
    assert args["--recompute-num-layers"] <= args["--num-layers"] // 4


def test_every_change_is_reported_as_megatron_to_cpu():
    result = sized()
    lines = [change.line() for change in result.changes]
    assert "--num-layers: 12 -> 4" in lines
    assert any(line.startswith("--bf16: true -> (unset)") for line in lines)


def _facts(nproc: int) -> MachineFacts:
    return MachineFacts(cuda_available=False, transformer_engine_installed=False, cpu_count=2,
                        local_world_size=nproc, cuda_device_count=0)


def test_reference_cases_size_deterministically_and_stay_valid():
    """Every reference case sizes (the same way twice); those goldtron accepts at Megatron's size
    are accepted at CPU size too, on the ranks the sizing launches."""
    for case_dir in find_cases(reference_dir()):
        case = load_case(case_dir)
        first, changes = sized_case(case)
        again, _ = sized_case(case)
        assert first.model_args == again.model_args and changes, case.name
        layout = math.prod(first.model_args.get(flag, 1) for flag in (
            "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size"))
        assert first.nproc_per_node % layout == 0, case.name
        if case.name in ACCEPTED:
            argv = model_args_to_argv(first.model_args, PLACES, case.name)
            try:
                parse_args(argv, world_size=first.nproc_per_node, machine=_facts(first.nproc_per_node))
            except ConfigError as error:
                pytest.fail(f"{case.name} at CPU size: {error}")


def test_auto_sizes_only_cases_without_their_own_cpu_override(tmp_path):
    plain = Case(path=tmp_path, test_type="regular", model_args=dict(BASE), env_vars={})
    assert wants_cpu_size("auto", "cpu_amd_avx2", plain)
    assert not wants_cpu_size("auto", "dgx_h100", plain)
    assert not wants_cpu_size("full", "cpu_amd_avx2", plain)
    assert wants_cpu_size("cpu", "dgx_h100", plain)
    flagship = load_case(FLAGSHIP)
    assert not wants_cpu_size("auto", "cpu_intel_avx512", flagship)  # its author sized it by hand
    other_trainer = Case(path=tmp_path, test_type="regular", model_args={}, env_vars={}, trainer=("python", "t.py"))
    assert not wants_cpu_size("auto", "cpu_amd_avx2", other_trainer)


def test_frozen_resume_without_a_cpu_size_checkpoint_resumes_from_its_own(tmp_path):
    frozen = Case(path=tmp_path, test_type="frozen-resume", model_args=dict(BASE), env_vars={})
    case, changes = sized_case(frozen)
    assert case.test_type == "ckpt-resume" and case.model_args["--save-interval"] == case.train_iters // 2
    assert any(change.line().startswith("TEST_TYPE: frozen-resume -> ckpt-resume") for change in changes)
    given, _ = sized_case(frozen, frozen_checkpoint_given=True)
    assert given.test_type == "frozen-resume"
