"""Megatron's sample-based schedule, rank mapping, weight-hash check, re-run mode and the smaller
flags of its dense GPT cases: how each is read, and each bad combination's message and fix."""

from __future__ import annotations

import pytest
import torch

from goldtron.arguments import ConfigError
from goldtron.parallel.state import ParallelState, group_rank_lists
from goldtron.training.lr_schedule import LRSchedule

from test_arguments import CPU_MACHINE, GPU_MACHINE, config_error, parse

SAMPLES = {"--train-iters": None, "--train-samples": 80}  # 10 global batches of 8


def test_train_samples_sets_iterations_from_the_global_batch():
    args = parse({**SAMPLES, "--train-samples": 85})  # Megatron: train_samples // global batch
    assert args.sample_based_training and args.train_iters == 10
    assert args.lr_decay_samples == 85 and args.lr_decay_iters is None and args.lr_warmup_samples == 0


def test_sample_based_schedule_takes_the_samples_flags_as_they_are():
    args = parse({**SAMPLES, "--lr-warmup-samples": 12, "--lr-decay-samples": 60})
    assert (args.lr_warmup_samples, args.lr_decay_samples) == (12, 60)
    fraction = parse({**SAMPLES, "--lr-warmup-fraction": 0.25})
    assert fraction.lr_warmup_samples == 20.0  # of the default decay, --train-samples


def test_sample_based_lr_is_megatrons_schedule_counted_in_samples():
    """Warmup 12 samples, decay to 60, linear: the LR after each step of 8 samples, by hand."""
    args = parse({**SAMPLES, "--lr-warmup-samples": 12, "--lr-decay-samples": 60, "--lr": 1.0, "--min-lr": 0.0})
    schedule = LRSchedule.from_args(args)
    seen = []
    for _ in range(9):
        seen.append(schedule.lr())
        schedule.step(args.global_batch_size)
    expected = [0.0, 8 / 12, 1 - 4 / 48, 1 - 12 / 48, 1 - 20 / 48, 1 - 28 / 48, 1 - 36 / 48, 1 - 44 / 48, 0.0]
    assert seen == pytest.approx(expected, abs=1e-15)


def test_the_same_schedule_in_iterations_and_in_samples_is_the_same_lr():
    by_iters = parse({"--lr-warmup-iters": 2, "--lr-decay-style": "cosine"})
    by_samples = parse({**SAMPLES, "--lr-warmup-samples": 16, "--lr-decay-style": "cosine"})
    a, b = LRSchedule.from_args(by_iters), LRSchedule.from_args(by_samples)
    for _ in range(10):
        assert a.lr() == b.lr()
        a.step(8)
        b.step(8)


def test_zero_warmup_samples_is_accepted_with_iterations_as_in_megatron():
    args = parse({"--lr-warmup-samples": 0, "--lr-warmup-iters": 2})
    assert args.lr_warmup_samples == 16  # the iteration warmup, in samples


SAMPLE_RULES = [
    pytest.param({"--train-samples": 80}, ["--train-iters 10", "--train-samples 80", "one of them"], id="both-lengths"),
    pytest.param({**SAMPLES, "--lr-decay-iters": 5}, ["--lr-decay-iters", "--train-samples", "--lr-decay-samples"],
                 id="iters-decay-with-samples"),
    pytest.param({**SAMPLES, "--lr-warmup-iters": 1}, ["--lr-warmup-iters", "--lr-warmup-samples"],
                 id="iters-warmup-with-samples"),
    pytest.param({"--lr-decay-samples": 40}, ["--lr-decay-samples", "--train-iters", "--train-samples"],
                 id="samples-decay-with-iters"),
    pytest.param({"--lr-warmup-samples": 8}, ["--lr-warmup-samples", "--lr-warmup-iters"],
                 id="samples-warmup-with-iters"),
    pytest.param({**SAMPLES, "--lr-warmup-samples": 8, "--lr-warmup-fraction": 0.1},
                 ["--lr-warmup-fraction", "--lr-warmup-samples", "only one"], id="two-sample-warmups"),
    pytest.param({**SAMPLES, "--lr-warmup-samples": 80}, ["warmup", "--lr-decay-samples 80"],
                 id="sample-warmup-not-shorter"),
    pytest.param({**SAMPLES, "--train-samples": 7}, ["--train-samples 7", "one global batch (8)"],
                 id="less-than-a-batch"),
    pytest.param({"--train-iters": None}, ["missing required", "--train-iters N (or --train-samples N)"],
                 id="no-length"),
    pytest.param({**SAMPLES, "--train-samples": -8}, ["--train-samples -8", "positive"], id="negative-samples"),
]


@pytest.mark.parametrize("changes, expected", SAMPLE_RULES)
def test_sample_schedule_rule_message(changes, expected):
    message = config_error(changes)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_save_interval_without_save_saves_nothing_with_a_warning_as_megatron():
    args = parse({"--save-interval": 5})
    assert args.save is None
    assert any("--save-interval 5" in w and "--save DIR" in w for w in args.config_warnings)
    assert parse().config_warnings == []


@pytest.mark.parametrize("machine, wording", [(CPU_MACHINE, "no CUDA device"), (GPU_MACHINE, "does not implement")])
@pytest.mark.parametrize("impl", ["local", "transformer_engine"])
def test_a_cuda_graph_request_is_a_clear_error(machine, wording, impl):
    world = machine.local_world_size
    changes = {"--cuda-graph-impl": impl, "--global-batch-size": 2 * world}
    message = config_error(changes, world_size=world, machine=machine)
    assert f"--cuda-graph-impl {impl}" in message and wording in message and "--cuda-graph-impl none" in message


def test_cuda_graph_impl_none_is_megatrons_default_and_accepted():
    assert parse({"--cuda-graph-impl": "none"}).cuda_graph_impl == "none"


@pytest.mark.parametrize("flag", ["--no-create-attention-mask-in-dataloader", "--manual-gc", "--no-rope-fusion",
                                  "--cross-entropy-loss-fusion"])
def test_dense_case_flags_without_effect_are_accepted(flag):
    parse({flag: True})


def test_rerun_mode_names_and_default():
    assert parse().rerun_mode == "validate_results"  # Megatron's default
    assert parse({"--rerun-mode": "report_stats"}).rerun_mode == "report_determinism_stats"
    with pytest.raises(ConfigError, match="--rerun-mode"):
        parse({"--rerun-mode": "sometimes"})


def test_error_injection_outside_validate_results_is_a_warning():
    args = parse({"--rerun-mode": "disabled", "--error-injection-rate": 1})
    assert any("--error-injection-rate 1" in w for w in args.config_warnings)


def test_weight_hash_interval_must_be_positive():
    assert "--check-weight-hash-across-dp-replicas-interval 0" in config_error(
        {"--check-weight-hash-across-dp-replicas-interval": 0})


def test_tp_pp_dp_mapping_is_a_switch():
    assert parse({"--use-tp-pp-dp-mapping": True}).use_tp_pp_dp_mapping
    assert not parse().use_tp_pp_dp_mapping


# --- --use-tp-pp-dp-mapping: the groups Megatron's two rank orders make (TP2 x PP2 x DP2) -----------

def test_default_rank_order_is_megatrons_tp_dp_pp():
    groups = group_rank_lists(tp_size=2, pp_size=2, dp_size=2)
    assert groups["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["dp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["model_parallel"] == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_tp_pp_dp_mapping_puts_pipeline_ranks_before_data_parallel_ones():
    groups = {kind: sorted(lists) for kind, lists in group_rank_lists(2, 2, 2, tp_pp_dp_mapping=True).items()}
    assert groups["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["pp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["model_parallel"] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("mapping", [False, True])
def test_each_rank_reads_back_its_own_coordinates(mapping):
    for rank in range(8):
        ps = ParallelState(world_size=8, rank=rank, tp_size=2, pp_size=2, dp_size=2, device=torch.device("cpu"),
                           backend="gloo", tp_pp_dp_mapping=mapping)
        assert ParallelState.global_rank(ps.tp_rank, ps.dp_rank, ps.pp_rank, 2, 2, 2, mapping) == rank
