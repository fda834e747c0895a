"""Issue 3, "Tools for users": `goldtron ckpt export DIR --to hf OUTDIR` writes a Hugging Face GPT-2
folder that `transformers.GPT2LMHeadModel.from_pretrained` loads, with goldtron's logits to 1e-5.

The end-to-end tests need `transformers`, which the lead adds to the `test` extras of
pyproject.toml (transformers==5.24.0); until then they skip with that reason. The layout tests
(QKV reordering, refusals) need only torch.

goldtron's side is its own code path throughout: the model is built from the saved flags and
filled by goldtron's checkpoint load (`--finetune`: weights only), then run forward in eval mode.
"""

from types import SimpleNamespace

import pytest
import torch

from goldtron.checkpoint.commands import main as ckpt_main
from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.hf_export import gpt2_config, head_major_qkv_to_gpt2, write_hf_folder
from checkpoint.ckpt_runs import goldtron_logits
from checkpoint.shared_saves import saved
from support.torchrun import TINY_MODEL

REAL_VOCAB = 1001  # NullTokenizer --vocab-size 1000 + eod
SEQ = 32           # TINY_MODEL's --seq-length and --max-position-embeddings
# The bound. The two models compute the same fp32 math in different op orders (fused
# c_attn addmm vs matmul + bias, ...); on this model's O(1)-sized logits that rounding is ~1e-6.
LOGIT_ATOL = 1e-5

# --disable-bias-linear exports with zero biases in GPT-2's linears, which compute the same.
TIED_AND_UNTIED = {"tied": [], "untied": ["--untie-embeddings-and-output-weights"],
                   "tied, no linear biases": ["--disable-bias-linear"]}
# Six steps at lr up to 1e-3: LayerNorms and biases move off their 1 / 0 initial values, so a
# swapped or misordered one changes the logits. Saved in the session's shared checkpoint launches
# (checkpoint/shared_saves.py; rewound to 6, the save it already is).
SHARED_SAVES = {tying: ((1, TINY_MODEL + flags + ["--train-iters", "6", "--save", saved(tying)]), 6)
                for tying, flags in TIED_AND_UNTIED.items()}


def test_qkv_reorder_moves_each_head_block_to_its_q_k_v_section():
    heads, d = 3, 2
    # Row r of the head-major layout is (head, part, dim) = divmod chains of r; label each row by it.
    head_major = torch.tensor([[100 * h + 10 * part + i] for h in range(heads) for part in range(3) for i in range(d)])
    gpt2 = head_major_qkv_to_gpt2(head_major, heads, d)
    expected = torch.tensor([[100 * h + 10 * part + i] for part in range(3) for h in range(heads) for i in range(d)])
    assert torch.equal(gpt2, expected)
    assert torch.equal(head_major_qkv_to_gpt2(head_major[:, 0], heads, d), expected[:, 0])  # biases too


def _saved_args(**changes) -> dict:
    args = {"hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16, "num_layers": 1, "ffn_hidden_size": 256,
            "max_position_embeddings": SEQ, "real_vocab_size": REAL_VOCAB, "layernorm_epsilon": 1e-5,
            "hidden_dropout": 0.1, "attention_dropout": 0.1, "init_method_std": 0.02, "params_dtype": "torch.float32",
            "untie_embeddings_and_output_weights": False, "normalization": "LayerNorm",
            "position_embedding_type": "learned_absolute"}
    args.update(changes)
    return args


def test_config_carries_the_saved_shape_eps_and_exact_gelu():
    config = gpt2_config(SimpleNamespace(**_saved_args(layernorm_epsilon=1e-6)))
    assert config["layer_norm_epsilon"] == 1e-6
    assert config["activation_function"] == "gelu"
    assert (config["n_embd"], config["n_head"], config["n_inner"], config["vocab_size"]) == (64, 4, 256, REAL_VOCAB)
    assert config["tie_word_embeddings"] is True


@pytest.mark.parametrize("change, named", [
    ({"kv_channels": 8}, "kv_channels"),
    ({"normalization": "RMSNorm"}, "RMSNorm"),
    ({"position_embedding_type": "rope"}, "rope"),
    ({"swiglu": True}, "--swiglu"),
])
def test_what_gpt2_cannot_express_is_refused(tmp_path, change, named):
    with pytest.raises(CheckpointError, match=named) as info:
        write_hf_folder({}, {"args": _saved_args(**change)}, str(tmp_path / "hf"))
    assert "--to torch" in str(info.value)  # and what is possible instead
    assert not (tmp_path / "hf").exists()  # refused before anything is written


@pytest.mark.parametrize("tying", TIED_AND_UNTIED)
def test_hf_gpt2_logits_equal_goldtrons(one_rank, shared_saves, tmp_path, tying):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is a test extra (pyproject [project.optional-dependencies] test)")
    flags = TIED_AND_UNTIED[tying]
    save_dir, hf_dir = shared_saves.read(__name__, SHARED_SAVES, {})[0][tying].folder, tmp_path / "hf"
    assert ckpt_main(["export", str(save_dir), "--to", "hf", str(hf_dir)]) == 0

    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    tied_in_hf = hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()
    assert tied_in_hf == (tying != "untied")

    tokens = torch.randint(0, REAL_VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    tokens[0, -1] = REAL_VOCAB - 1  # the last (eod) row is exported too
    with torch.no_grad():
        hf_logits = hf_model(tokens).logits
    ours = goldtron_logits(one_rank, flags + ["--train-iters", "6", "--load", str(save_dir)], tokens)
    assert hf_logits.shape == ours.shape == (2, SEQ, REAL_VOCAB)
    assert ours.abs().max() > 0.1  # not a degenerate model whose logits all agree trivially
    torch.testing.assert_close(hf_logits, ours, atol=LOGIT_ATOL, rtol=0)
