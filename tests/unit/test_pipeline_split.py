"""Megatron's pipeline split: the layers of each stage, worked out by hand from its rules, and every
refused combination named by its flags (parse level, so the whole flag path is covered).

Hand rules: first/last flags give that stage F (L) layers and split the rest evenly over the
other stages; account-for flags add one unit per flag, give each stage (layers + units) / PP
units and the first (last) stage one transformer layer fewer.
"""

import pytest
from support.torchrun import TINY_MODEL, layout_flags

from goldtron.arguments import ConfigError, parse_args
from goldtron.config.megatron_flags import describe_unimplemented
from goldtron.model.pipeline_split import PipelineSplit, split_problems, stage_layer_counts, stage_layer_range

FIRST, LAST = "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers"
EMB, LOSS = "--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"

CASES = {  # name: (num_layers, pp, flags, layers per stage by hand)
    "even": (8, 4, [], [2, 2, 2, 2]),
    "even PP1": (8, 1, [], [8]),
    "first only": (8, 4, [FIRST, "2"], [2, 2, 2, 2]),
    "first only, uneven": (10, 4, [FIRST, "1"], [1, 3, 3, 3]),
    "last only": (10, 4, [LAST, "4"], [2, 2, 2, 4]),
    "both": (8, 4, [FIRST, "1", LAST, "1"], [1, 3, 3, 1]),
    "both, no middle stage": (8, 2, [FIRST, "3", LAST, "5"], [3, 5]),
    "first only, PP2": (8, 2, [FIRST, "5"], [5, 3]),
    "account embedding": (7, 4, [EMB], [1, 2, 2, 2]),           # (7+1)/4 = 2 units per stage
    "account loss": (7, 4, [LOSS], [2, 2, 2, 1]),
    "account both": (6, 4, [EMB, LOSS], [1, 2, 2, 1]),         # (6+2)/4 = 2
    "account both PP2": (4, 2, [EMB, LOSS], [2, 2]),           # (4+2)/2 = 3, minus one at each end
    "account both PP1": (4, 1, [EMB, LOSS], [4]),              # one stage: (4+2) - 1 - 1
    "account embedding, empty first stage": (3, 4, [EMB], [0, 1, 1, 1]),  # the embedding alone
    "account both, PP3": (7, 3, [EMB, LOSS], [2, 3, 2]),       # (7+2)/3 = 3
}


def _parse(num_layers: int, pp: int, flags: list[str]):
    return parse_args([*TINY_MODEL, "--num-layers", str(num_layers), *layout_flags(1, pp), "--train-iters", "4",
                       *flags], world_size=pp)


@pytest.mark.parametrize("name", list(CASES))
def test_layers_per_stage_match_megatrons_rule(name):
    num_layers, pp, flags, expected = CASES[name]
    split = PipelineSplit.from_args(_parse(num_layers, pp, flags))
    assert stage_layer_counts(split) == expected
    ranges = [stage_layer_range(split, rank) for rank in range(pp)]
    assert [len(r) for r in ranges] == expected
    # Global numbering: the stages hold layers 0..L-1, each once, in order.
    assert [i for r in ranges for i in r] == list(range(num_layers))


BAD = {  # name: (num_layers, pp, flags, words the message must contain)
    "first with account embedding": (8, 4, [FIRST, "1", EMB], [FIRST, EMB, "cannot be combined"]),
    "last with account loss": (8, 4, [LAST, "1", LOSS], [LAST, LOSS, "cannot be combined"]),
    "first zero": (8, 4, [FIRST, "0"], [f"{FIRST} 0", "larger than 0"]),
    "last negative": (8, 4, [LAST, "-1"], [f"{LAST} -1", "larger than 0"]),
    "first/last with PP1": (8, 1, [FIRST, "4"], [FIRST, "--pipeline-model-parallel-size is 1"]),
    "middle not divisible": (8, 4, [FIRST, "2", LAST, "1"], [f"{FIRST} 2", f"{LAST} 1", "5 layers", "2 pipeline"]),
    "first only, rest not divisible": (8, 4, [FIRST, "3"], [f"{FIRST} 3", "5 layers", "3 pipeline"]),
    "more than num-layers": (8, 4, [FIRST, "5", LAST, "5"], ["more than --num-layers 8"]),
    "no middle stage, layers left over": (8, 2, [FIRST, "3", LAST, "4"], ["leave 1 of --num-layers 8", "add up to 8"]),
    "middle stages empty": (8, 4, [FIRST, "4", LAST, "4"], ["no layer for the other 2", "no parameters"]),
    "account embedding not divisible": (8, 4, [EMB], [EMB, "is 9", "--pipeline-model-parallel-size 4"]),
    "account both not divisible": (8, 4, [EMB, LOSS], [EMB, LOSS, "is 10", "--pipeline-model-parallel-size 4"]),
    "even not divisible": (6, 4, [], ["--num-layers 6", "--pipeline-model-parallel-size 4", FIRST]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_split_is_refused_naming_the_flags(name):
    num_layers, pp, flags, words = BAD[name]
    with pytest.raises(ConfigError) as info:
        _parse(num_layers, pp, flags)
    for word in words:
        assert word in str(info.value), (name, word, str(info.value))


def test_every_refused_case_is_refused_by_the_split_function_too():
    """The parse-level refusals come from split_problems, not from an accident elsewhere."""
    for name, (num_layers, pp, flags, _) in BAD.items():
        first = int(flags[flags.index(FIRST) + 1]) if FIRST in flags else None
        last = int(flags[flags.index(LAST) + 1]) if LAST in flags else None
        assert split_problems(PipelineSplit(num_layers, pp, first, last, EMB in flags, LOSS in flags)), name


def test_flags_are_no_longer_refused_as_unimplemented():
    for flag in (FIRST, LAST, EMB, LOSS):
        assert describe_unimplemented(flag) is None, flag
    assert describe_unimplemented("--num-experts")  # the table still refuses what is not implemented
