"""Checkpoints of the attention options (GQA, --qk-layernorm, RMSNorm, layer scaling), as
test_architecture_checkpoints.py does for rope and SwiGLU:

- resume with dropout on is bitwise (test_exact_resume.py's rule), at TP2;
- a TP2 checkpoint loads at TP1 and continues within 1e-5 (test_resharding.py's rule and reason):
  the fused QKV weight is saved as the global per-group tensor, each TP rank writing its whole
  groups; a group written at the wrong offset gives a query head another group's key at TP1;
- the architecture record knows the number of key/value heads: a GQA checkpoint refuses to load into
  a multi-head model (and an old record, without the field, means multi-head attention);
- `--to hf` refuses what GPT-2 cannot hold, by name.
"""

from types import SimpleNamespace

import pytest
import torch

from checkpoint.ckpt_runs import assert_continues_within, tiny_under
from checkpoint.shared_saves import resume_run, saved, saving_run
from goldtron.checkpoint.commands import EXIT_ERROR, main as ckpt_main
from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.validation import check_architecture
from support.torchrun import NO_DROPOUT, TINY_MODEL, run_train

HEADS, GROUPS, D = 8, 2, 8  # hidden 64
OPTIONS = ["--num-attention-heads", str(HEADS), "--group-query-attention", "--num-query-groups", str(GROUPS),
           "--qk-layernorm", "--normalization", "RMSNorm", "--apply-query-key-layer-scaling"]
RTOL = 1e-5


# Attention and hidden dropout on (the unfused core attention: layer scaling); N=4, saved at 2.
RESUMED = resume_run("TP2PP1", OPTIONS, 4, 2, "TP2 dropout")
# checkpoint/shared_saves.py: the saving runs in the session's first launches, the loads after.
SHARED_SAVES = {
    "TP2 dropout": (RESUMED, 2),
    # Trained under TP2 (one query group a rank) to 4, saved at 2, rewound to 2.
    "tp2": saving_run("TP2PP1", NO_DROPOUT + OPTIONS, 4, 2, "tp2"),
}
SHARED_LOADS = {
    "TP2 dropout": RESUMED,
    "tp2 -> tp1": tiny_under("TP1PP1", NO_DROPOUT + OPTIONS + ["--train-iters", "4", "--load", saved("tp2")]),
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


def test_resume_is_bitwise_exact_with_dropout(runs):
    saves, loads = runs
    first, (second, log) = saves["TP2 dropout"].steps, loads["TP2 dropout"]
    assert "RNG state not restored" not in log
    assert_continues_within(second, first, 2, 0.0, ("lm_loss", "grad_norm", "num_zeros", "params_norm"))


@pytest.fixture(scope="module")
def tp2(runs):
    """The TP2 save, rewound to 2: (save dir, run 1's metrics)."""
    saving = runs[0]["tp2"]
    return saving.folder, saving.steps


def test_tp2_checkpoint_continues_under_tp1(tp2, runs):
    _, reference = tp2
    steps, log = runs[1]["tp2 -> tp1"]
    assert "TP2 x PP1 x DP1" in log and [s["iteration"] for s in steps] == [3, 4]
    assert_continues_within(steps, reference, 2, RTOL)


def test_saved_tensors_are_the_global_grouped_ones(tp2, tmp_path):
    save, _ = tp2
    assert ckpt_main(["export", str(save), "--to", "torch", str(tmp_path / "model.pt")]) == 0
    model = torch.load(tmp_path / "model.pt")["model"]
    attention = "decoder.layers.3.self_attention."
    assert model[attention + "linear_qkv.weight"].shape == ((HEADS + 2 * GROUPS) * D, 64)
    assert model[attention + "q_layernorm.weight"].shape == model[attention + "k_layernorm.weight"].shape == (D,)
    assert attention + "q_layernorm.bias" not in model and "decoder.final_layernorm.bias" not in model  # RMSNorm


def test_hf_export_refuses_gqa_and_qk_layernorm_by_name(tp2, tmp_path, capsys):
    save, _ = tp2
    assert ckpt_main(["export", str(save), "--to", "hf", str(tmp_path / "hf")]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert f"--group-query-attention with --num-query-groups {GROUPS}" in error
    assert "--qk-layernorm" in error and "normalization RMSNorm" in error and "--to torch" in error
    assert not (tmp_path / "hf").exists()


def test_loading_into_a_multi_head_model_is_refused(tp2):
    save, _ = tp2
    result = run_train(1, TINY_MODEL + NO_DROPOUT + ["--num-attention-heads", str(HEADS), "--train-iters", "4",
                                                     "--load", str(save)], check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (f"--group-query-attention --num-query-groups: num_query_groups {GROUPS} in the checkpoint, "
            f"{HEADS} in this run") in output
    assert "--qk-layernorm: qk_layernorm True in the checkpoint, False in this run" in output
    assert "--normalization: normalization 'RMSNorm' in the checkpoint, 'LayerNorm' in this run" in output


def test_an_old_record_means_multi_head_attention():
    ours = SimpleNamespace(position_embedding_type="learned_absolute", swiglu=False, add_bias_linear=True,
                           normalization="LayerNorm", qk_layernorm=False, num_query_groups=HEADS)
    check_architecture({"num_attention_heads": HEADS}, ours, "old")  # no num_query_groups: a k/v head per head
    with pytest.raises(CheckpointError, match=f"num_query_groups {HEADS} in the checkpoint, {GROUPS} in this run"):
        check_architecture({"num_attention_heads": HEADS}, SimpleNamespace(**dict(vars(ours), num_query_groups=GROUPS)),
                           "old")
