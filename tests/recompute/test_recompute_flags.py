"""Megatron's rules for the recomputation flags, each broken combination refused with the flags
named and the fix, on every rank before any collective (so a bad run exits instead of hanging)."""

import pytest
from support.torchrun import FLAG_ERROR_MONITOR_INTERVAL_S, TINY_MODEL, layout_flags, run_train

from goldtron.arguments import ConfigError, parse_args
from goldtron.config.megatron_flags import describe_unimplemented
from recompute.recompute_runs import SELECTIVE, full

GRANULARITY_FULL = ["--recompute-granularity", "full"]

BAD = {
    # name: (pipeline stages, flags, words the message must contain)
    "full without method": (1, [*GRANULARITY_FULL, "--recompute-num-layers", "1"],
                            ["--recompute-granularity full", "--recompute-method uniform", "block"]),
    "full without num-layers": (1, [*GRANULARITY_FULL, "--recompute-method", "block"],
                                ["--recompute-granularity full", "--recompute-num-layers", "4 here"]),
    "num-layers above the stage's layers": (2, full("block", 3),
                                            ["--recompute-num-layers 3", "2 here", "--pipeline-model-parallel-size 2"]),
    "num-layers zero": (1, full("uniform", 0), ["--recompute-num-layers 0", "between 1 and"]),
    "uniform chunks do not divide the stage": (1, full("uniform", 3),
                                               ["--recompute-method uniform", "--recompute-num-layers 3", "divides"]),
    "selective with method": (1, [*SELECTIVE, "--recompute-method", "uniform"],
                              ["--recompute-method uniform", "--recompute-granularity selective"]),
    "selective with num-layers": (1, [*SELECTIVE, "--recompute-num-layers", "1"],
                                  ["--recompute-num-layers 1", "--recompute-granularity selective"]),
    "method without granularity": (1, ["--recompute-method", "block", "--recompute-num-layers", "1"],
                                   ["--recompute-method and --recompute-num-layers", "--recompute-granularity"]),
    "legacy flag contradicts full": (1, ["--recompute-activations", *full("block", 1)],
                                     ["--recompute-activations", "--recompute-granularity full"]),
}
GOOD = {
    "uniform": (1, full("uniform", 2), ("full", "uniform", 2)),
    "block, all layers of a PP2 stage": (2, full("block", 2), ("full", "block", 2)),
    "selective": (1, SELECTIVE, ("selective", None, None)),
    "legacy --recompute-activations": (1, ["--recompute-activations"], ("selective", None, None)),
    "legacy with selective too": (1, ["--recompute-activations", *SELECTIVE], ("selective", None, None)),
    "off": (1, [], (None, None, None)),
}


def _argv(pp: int, flags: list[str]) -> list[str]:
    return [*TINY_MODEL, *layout_flags(1, pp), "--train-iters", "4", *flags]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_combination_is_refused_naming_the_flags(name):
    pp, flags, words = BAD[name]
    with pytest.raises(ConfigError) as info:
        parse_args(_argv(pp, flags), world_size=pp)
    for word in words:
        assert word in str(info.value), (name, word, str(info.value))


@pytest.mark.parametrize("name", list(GOOD))
def test_good_combination_is_completed_as_megatron_does(name):
    pp, flags, expected = GOOD[name]
    args = parse_args(_argv(pp, flags), world_size=pp)
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers) == expected


def test_related_megatron_flags_still_refused_by_name():
    assert describe_unimplemented("--recompute-modules")
    assert describe_unimplemented("--distribute-saved-activations")
    for flag in ("--recompute-granularity", "--recompute-method", "--recompute-num-layers", "--recompute-activations"):
        assert describe_unimplemented(flag) is None, flag


@pytest.mark.parametrize("name", ["full without method", "num-layers above the stage's layers",
                                  "selective with num-layers", "method without granularity"])
def test_bad_combination_stops_every_rank(name):
    """Launched on 2 ranks (the PP2 case on two stages): each rank prints the error and the job fails."""
    pp, flags, words = BAD[name]
    result = run_train(2, [*_argv(pp, flags)], timeout=90, check=False, monitor_interval=FLAG_ERROR_MONITOR_INTERVAL_S)
    assert result.returncode != 0
    for rank in range(2):
        assert f"error (rank {rank})" in result.stderr, (name, result.stderr[-2000:])
    for word in words:
        assert word in result.stderr, (name, word)
    assert 'goldtron/training/' not in result.stderr, "a configuration error must not be a crash"
