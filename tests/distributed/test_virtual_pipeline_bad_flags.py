"""Bad interleaved-pipeline combinations are refused with Megatron's rule, the flags named and the
fix, at parse level for every rule, and on every rank of a launch for the four the issue names
(layers that do not divide, micro-batches that do not fit the group rule, both VP flags, VP at
PP 1), before any collective, so a bad run exits instead of hanging."""

import pytest
from support.torchrun import FLAG_ERROR_MONITOR_INTERVAL_S, TINY_MODEL, layout_flags, run_train

from goldtron.arguments import ConfigError, parse_args

STAGES, LAYERS = "--num-virtual-stages-per-pipeline-rank", "--num-layers-per-virtual-pipeline-stage"
GROUP = "--microbatch-group-size-per-virtual-pipeline-stage"

BAD = {  # name: (processes, pp, flags, words the message must contain)
    "layers do not divide over PP x VP": (2, 2, [STAGES, "4"], ["--num-layers 4", "8 virtual stages", "divides 4"]),
    "micro-batches fewer than the group": (2, 2, [STAGES, "2", "--global-batch-size", "2"],
                                           [GROUP, "[PP=2, M=1]", "--global-batch-size"]),
    "both virtual flags": (2, 2, [STAGES, "2", LAYERS, "1"], [STAGES, LAYERS, "both given", "Keep one"]),
    "virtual pipeline at PP1": (2, 1, [STAGES, "2"], [STAGES, "greater than 1", "PP >= 2"]),
    "layers per virtual stage do not divide the rank's": (2, 2, [LAYERS, "3"], [f"{LAYERS} 3", "2 = 4 / PP 2"]),
    "group smaller than PP": (2, 2, [STAGES, "2", GROUP, "1"], [f"{GROUP} 1", "[PP=2, M=4]"]),
    "last group smaller than PP": (2, 2, [STAGES, "2", GROUP, "4", "--global-batch-size", "10"],
                                   ["last group of 1", "fewer than PP=2", "dependency bubbles"]),
    "group without interleaving": (2, 2, [GROUP, "2"], [GROUP, "only applies to the interleaved schedule"]),
    "batched p2p at PP2": (2, 2, [STAGES, "2", "--no-overlap-p2p-communication"],
                           ["--no-overlap-p2p-communication", "size > 2", "PP >= 3"]),
    "layers per virtual stage with an uneven split": (4, 4, ["--num-layers", "8", LAYERS, "1",
                                                             "--decoder-first-pipeline-num-layers", "2"],
                                                      [LAYERS, "--decoder-first-pipeline-num-layers", STAGES]),
    "first/last counts that do not divide by VP": (4, 4, ["--num-layers", "8", STAGES, "2",
                                                          "--decoder-first-pipeline-num-layers", "1",
                                                          "--decoder-last-pipeline-num-layers", "1"],
                                                   ["1,3,3,1 layers", "not all divisible by 2"]),
}
LAUNCHED = ["layers do not divide over PP x VP", "micro-batches fewer than the group", "both virtual flags",
            "virtual pipeline at PP1"]


def _argv(pp: int, flags: list[str]) -> list[str]:
    return [*TINY_MODEL, *layout_flags(1, pp), "--train-iters", "4", *flags]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_virtual_pipeline_flags_are_refused(name):
    nproc, pp, flags, words = BAD[name]
    with pytest.raises(ConfigError) as info:
        parse_args(_argv(pp, flags), world_size=nproc)
    for word in words:
        assert word in str(info.value), (name, word, str(info.value))


@pytest.mark.parametrize("name", LAUNCHED)
def test_bad_virtual_pipeline_flags_stop_every_rank(name):
    nproc, pp, flags, words = BAD[name]
    result = run_train(nproc, _argv(pp, flags), timeout=90, check=False, monitor_interval=FLAG_ERROR_MONITOR_INTERVAL_S)
    assert result.returncode != 0
    for rank in range(nproc):
        assert f"error (rank {rank})" in result.stderr, (name, result.stderr[-2000:])
    for word in words:
        assert word in result.stderr, (name, word)
    assert "goldtron/training/" not in result.stderr, "a configuration error must not be a crash"


def test_one_chunk_per_rank_is_the_plain_schedule():
    """Megatron: one virtual stage per rank is no interleaving (the size becomes None)."""
    args = parse_args(_argv(2, [STAGES, "1"]), world_size=2)
    assert args.virtual_pipeline_model_parallel_size is None
    args = parse_args(_argv(2, [LAYERS, "2"]), world_size=2)  # 2 layers per rank, 2 per chunk
    assert args.virtual_pipeline_model_parallel_size is None


def test_group_defaults_to_pp():
    args = parse_args(_argv(2, [STAGES, "2"]), world_size=2)
    assert (args.virtual_pipeline_model_parallel_size, args.microbatch_group_size_per_vp_stage) == (2, 2)
