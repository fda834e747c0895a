"""The core promise for the attention/normalization options (dropout 0, 10 steps): `lm loss`,
`grad-norm` and `params-norm` of each layout equal the single-process run within 1e-5 relative,
for the reason test_layouts.py gives (the same sums in other orders; a wrong shard is 1e-2 or more).

- GQA (8 heads, 4 query groups) at TP2 (two groups a rank) and TP4 (one);
- everything at once (GQA with 2 groups, --qk-layernorm, --normalization RMSNorm,
  --apply-query-key-layer-scaling, rope) at TP2 (one group a rank; the qk-norm gradients are
  summed over TP) and TP2 x PP2 (layer scaling by the global layer number on each stage);
- and, bit for bit in one process, GQA with as many groups as heads is plain multi-head attention.

The runs of each process count share one launch with the session's other runs (support/shared_runs.py).
"""

import pytest

from checkpoint.ckpt_runs import relative
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags

EIGHT_HEADS = TINY_MODEL + NO_DROPOUT + ["--num-attention-heads", "8", "--train-iters", "10"]
GQA = EIGHT_HEADS + ["--group-query-attention", "--num-query-groups", "4"]
EVERYTHING = EIGHT_HEADS + ["--group-query-attention", "--num-query-groups", "2", "--qk-layernorm",
                            "--normalization", "RMSNorm", "--apply-query-key-layer-scaling",
                            "--position-embedding-type", "rope"]
LAYOUTS = {  # name: (reference run, processes, tp, pp)
    "GQA TP2": ("GQA single", 2, 2, 1),
    "GQA TP4": ("GQA single", 4, 4, 1),
    "everything TP2": ("everything single", 2, 2, 1),
    "everything TP2xPP2": ("everything single", 4, 2, 2),
}
RTOL = 1e-5
FLAGS_OF = {"GQA": GQA, "everything": EVERYTHING}
SHARED_RUNS = {  # support/shared_runs.py: the session's runs of one process count in one launch
    "GQA single": (1, GQA),
    "everything single": (1, EVERYTHING),
    "MHA single": (1, EIGHT_HEADS),
    "GQA all groups single": (1, EIGHT_HEADS + ["--group-query-attention", "--num-query-groups", "8"]),
    **{name: (nproc, FLAGS_OF[name.split()[0]] + layout_flags(tp, pp)) for name, (_, nproc, tp, pp) in LAYOUTS.items()},
}


@pytest.fixture(scope="module")
def runs(shared_runs) -> dict[str, list[dict]]:
    return shared_runs.read(__name__, SHARED_RUNS)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_equals_single_process(name, runs):
    reference = runs[LAYOUTS[name][0]]
    steps = runs[name]
    assert [s["iteration"] for s in steps] == list(range(1, 11))
    for ours, ref in zip(steps, reference):
        for key in ("lm_loss", "grad_norm", "params_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (name, ours["iteration"], key, ours[key], ref[key])
        assert abs(ours["num_zeros"] - ref["num_zeros"]) <= 5, (name, ours["iteration"])


def test_options_change_the_model(runs):
    """The comparisons above are of models that differ from the plain one (the flags took effect)."""
    plain = runs["MHA single"][-1]["lm_loss"]
    for name in ("GQA single", "everything single"):
        assert relative(runs[name][-1]["lm_loss"], plain) > 1e-4, name


def test_as_many_groups_as_heads_is_multi_head_attention_bitwise(runs):
    for ours, ref in zip(runs["GQA all groups single"], runs["MHA single"], strict=True):
        for key in ("lm_loss", "grad_norm", "params_norm", "num_zeros"):
            assert ours[key] == ref[key], (ours["iteration"], key)
