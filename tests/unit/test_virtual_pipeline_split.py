"""Which layers each model chunk holds under Megatron's interleaved pipeline, worked out by hand
from get_transformer_layer_offset: even, offset = chunk x (L / V) + rank x (L / (PP x V));
account-for flags, units per virtual stage with the first (last) virtual stage one layer fewer;
first/last counts, each rank's layers split evenly over its chunks. Parsed from the flags, so the
whole path (flag -> V -> split) is covered."""

import pytest
from support.torchrun import TINY_MODEL, layout_flags

from goldtron.arguments import parse_args
from goldtron.model.pipeline_split import PipelineSplit, stage_layer_counts, stage_layer_range, virtual_stage_layer_counts

STAGES = "--num-virtual-stages-per-pipeline-rank"
ACCOUNT = ["--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"]
CASES = {  # name: (num_layers, pp, flags, {(rank, chunk): layers} by hand)
    "PP2 VP2, 4 layers": (4, 2, [STAGES, "2"], {(0, 0): [0], (1, 0): [1], (0, 1): [2], (1, 1): [3]}),
    "PP2 VP2, 8 layers": (8, 2, [STAGES, "2"], {(0, 0): [0, 1], (1, 0): [2, 3], (0, 1): [4, 5], (1, 1): [6, 7]}),
    "PP4 VP2 via layers per virtual stage": (8, 4, ["--num-layers-per-virtual-pipeline-stage", "1"],
                                             {(r, c): [4 * c + r] for r in range(4) for c in range(2)}),
    "PP2 VP3": (6, 2, [STAGES, "3"], {(r, c): [2 * c + r] for r in range(2) for c in range(3)}),
    # The reference case gpt3_mcore_te_tp1_pp4_vp2_account_for_embedding_loss_in_pipeline_split:
    # (6 + 2) / 8 = 1 unit per virtual stage; the first holds the embedding alone, the last the loss.
    "reference: 6 layers PP4 VP2 account both": (6, 4, [STAGES, "2", *ACCOUNT], {
        (0, 0): [], (1, 0): [0], (2, 0): [1], (3, 0): [2], (0, 1): [3], (1, 1): [4], (2, 1): [5], (3, 1): []}),
    "account embedding PP2 VP2": (7, 2, [STAGES, "2", ACCOUNT[0]], {
        (0, 0): [0], (1, 0): [1, 2], (0, 1): [3, 4], (1, 1): [5, 6]}),
    "first 2 last 4, PP3 VP2": (10, 3, [STAGES, "2", "--decoder-first-pipeline-num-layers", "2",
                                        "--decoder-last-pipeline-num-layers", "4"], {
        (0, 0): [0], (1, 0): [1, 2], (2, 0): [3, 4], (0, 1): [5], (1, 1): [6, 7], (2, 1): [8, 9]}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_chunk_layers_match_megatrons_offsets(name):
    num_layers, pp, flags, expected = CASES[name]
    args = parse_args([*TINY_MODEL, "--num-layers", str(num_layers), *layout_flags(1, pp), "--train-iters", "4",
                       "--global-batch-size", str(2 * 2 * pp), *flags], world_size=pp)
    split = PipelineSplit.from_args(args)
    v = split.virtual_stages
    assert {(r, c): list(stage_layer_range(split, r, c)) for r in range(pp) for c in range(v)} == expected
    # Pipeline order (chunk x PP + rank) holds layers 0..L-1 once each, in order.
    assert [i for c in range(v) for r in range(pp) for i in stage_layer_range(split, r, c)] == list(range(num_layers))
    assert stage_layer_counts(split) == [sum(len(expected[(r, c)]) for c in range(v)) for r in range(pp)]
    assert len(virtual_stage_layer_counts(split)) == pp * v
