"""Checkpoints of the architecture options (rope, --swiglu, --disable-bias-linear), as the other
checkpoint tests do for the default model:

- exact resume with dropout on is bitwise (test_exact_resume.py's rule);
- a TP2 x PP2 checkpoint loads at TP1PP1 and continues within 1e-5 (test_resharding.py's rule and
  reason). SwiGLU's fc1 is saved as the global [gate; up] tensor, each TP rank writing its gate
  rows and its up rows as two chunks; a wrong offset pairs gates with the wrong up rows at TP1
  and shows at the first step;
- what cannot be loaded or exported says so: a model of another architecture, and `--to hf`
  (GPT-2 has no rotary embeddings and no SwiGLU).
"""

from types import SimpleNamespace

import pytest
import torch

from checkpoint.ckpt_runs import after, assert_resumed_bitwise, relative, tiny_under
from checkpoint.shared_saves import resume_run, saved, saving_run
from goldtron.checkpoint.commands import EXIT_ERROR, main as ckpt_main
from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.validation import check_architecture
from support.torchrun import NO_DROPOUT, TINY_MODEL, run_train

ROPE_SWIGLU = ["--position-embedding-type", "rope", "--swiglu"]
RTOL = 1e-5
FFN = 128  # Megatron's swiglu default for hidden 64: int((4 * 64 * 2 / 3) / 64) * 64


# TP2 (fc1 in two blocks per rank), bias-free linears, dropout on; N=6, saved at 3.
RESUMED = resume_run("TP2PP1", ROPE_SWIGLU + ["--disable-bias-linear"], 6, 3, "TP2 dropout")
# checkpoint/shared_saves.py: the saving runs in the session's first launches, the loads after.
SHARED_SAVES = {
    "TP2 dropout": (RESUMED, 3),
    # A rope + SwiGLU model (with biases: fc1's bias is blocked too) trained under TP2 x PP2 to 4,
    # saved at 2, rewound to 2.
    "tp2pp2": saving_run("TP2xPP2", NO_DROPOUT + ROPE_SWIGLU, 4, 2, "tp2pp2"),
}
SHARED_LOADS = {
    "TP2 dropout": RESUMED,
    "tp2pp2 -> tp1": tiny_under("TP1PP1", NO_DROPOUT + ROPE_SWIGLU + ["--train-iters", "4", "--load", saved("tp2pp2")]),
}


@pytest.fixture(scope="module")
def runs(shared_saves):
    return shared_saves.read(__name__, SHARED_SAVES, SHARED_LOADS)


def test_resume_is_bitwise_exact_with_dropout(runs):
    saves, loads = runs
    first, (second, _) = saves["TP2 dropout"].steps, loads["TP2 dropout"]
    assert [s["iteration"] for s in second] == [4, 5, 6]
    assert_resumed_bitwise(second, first, 3, ("lm_loss", "grad_norm", "num_zeros", "params_norm", "learning_rate"))


@pytest.fixture(scope="module")
def tp2pp2(runs):
    """The TP2 x PP2 save, rewound to 2: (save dir, run 1's metrics)."""
    saving = runs[0]["tp2pp2"]
    return saving.folder, saving.steps


def test_tp2pp2_checkpoint_continues_under_tp1(tp2pp2, runs):
    _, reference = tp2pp2
    steps, log = runs[1]["tp2pp2 -> tp1"]
    assert "TP2 x PP2 x DP1" in log
    assert [s["iteration"] for s in steps] == [3, 4]
    for ours, ref in zip(steps, after(reference, 2), strict=True):
        for key in ("lm_loss", "grad_norm"):
            assert relative(ours[key], ref[key]) <= RTOL, (ours["iteration"], key, ours[key], ref[key])


def test_saved_fc1_is_the_whole_gate_then_up_tensor(tp2pp2, tmp_path):
    save, _ = tp2pp2
    assert ckpt_main(["export", str(save), "--to", "torch", str(tmp_path / "model.pt")]) == 0
    model = torch.load(tmp_path / "model.pt")["model"]
    assert model["decoder.layers.3.mlp.linear_fc1.weight"].shape == (2 * FFN, 64)
    assert model["decoder.layers.3.mlp.linear_fc1.bias"].shape == (2 * FFN,)
    assert "embedding.position_embeddings.weight" not in model  # rope: no position table


def test_hf_export_refuses_rope_and_swiglu_by_name(tp2pp2, tmp_path, capsys):
    save, _ = tp2pp2
    assert ckpt_main(["export", str(save), "--to", "hf", str(tmp_path / "hf")]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert "position embedding rope" in error and "--swiglu" in error and "--to torch" in error
    assert not (tmp_path / "hf").exists()


def test_loading_into_another_architecture_is_refused(tp2pp2):
    save, _ = tp2pp2
    result = run_train(1, TINY_MODEL + NO_DROPOUT + ["--train-iters", "4", "--load", str(save)], check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "--position-embedding-type: position_embedding_type 'rope' in the checkpoint" in output
    assert "--swiglu: swiglu True in the checkpoint, False in this run" in output


def test_architecture_check_reads_old_checkpoints_as_the_default_model():
    default = SimpleNamespace(position_embedding_type="learned_absolute", swiglu=False, add_bias_linear=True)
    check_architecture({"num_layers": 4}, default, "old")  # saved before these flags existed: the default model
    check_architecture(None, default, "no args")
    with pytest.raises(CheckpointError, match="--disable-bias-linear: add_bias_linear True in the checkpoint"):
        check_architecture({"num_layers": 4}, SimpleNamespace(**dict(vars(default), add_bias_linear=False)), "old")
