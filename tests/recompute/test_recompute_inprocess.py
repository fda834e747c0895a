"""Recomputation seen from inside one process: which forwards run again, that the recompute
replays the first forward's dropout masks, and that it leaves the dropout streams where they were.

The distributed equality tests (test_recompute_equals_plain.py) show the end result; these show
the mechanism, and that each part of it is needed.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from goldtron.model.gpt import GPTStage
from goldtron.model.recompute import LayerChunk, checkpoint_with_rng, layer_chunks
from goldtron.model.transformer import SelfAttention
from goldtron.parallel.random import DropoutRNG, dropout
from recompute.recompute_runs import (
    SELECTIVE,
    build_stage,
    bytes_alive_after_layers,
    full,
)

LAYERS = 4  # TINY_MODEL


# ---- which layers are checkpointed --------------------------------------------------------------

def test_layer_chunks_follow_megatrons_methods():
    assert layer_chunks(4, None, None, None) == [LayerChunk(i, i + 1, False) for i in range(4)]
    assert layer_chunks(4, "selective", None, None) == [LayerChunk(i, i + 1, False) for i in range(4)]
    assert layer_chunks(4, "full", "uniform", 2) == [LayerChunk(0, 2, True), LayerChunk(2, 4, True)]
    assert layer_chunks(4, "full", "uniform", 4) == [LayerChunk(0, 4, True)]
    assert layer_chunks(4, "full", "block", 1) == [LayerChunk(0, 1, True)] + [LayerChunk(i, i + 1, False)
                                                                             for i in (1, 2, 3)]


# ---- the recompute and the dropout generators ---------------------------------------------------

def _two_stream_function(rng: DropoutRNG, weight: torch.Tensor, calls: list):
    """A stand-in for a layer: dropout from both goldtron streams, as attention and residual use."""

    def forward(x):
        calls.append(1)
        h = dropout(torch.tanh(x @ weight), 0.5, rng.tensor_parallel, True)
        return dropout(h @ weight, 0.5, rng.regular, True)

    return forward


def _gradient_after_interleaved_draws(run) -> tuple[torch.Tensor, dict, dict, int]:
    """Forward, then draws as later micro-batches' forwards would make (1F1B), then backward."""
    rng = DropoutRNG(1234, 0, 0, torch.device("cpu"))
    weight = torch.nn.Parameter(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    calls: list = []
    y = run(_two_stream_function(rng, weight, calls), rng, x)
    for stream in (rng.regular, rng.tensor_parallel):
        torch.empty(100).bernoulli_(0.5, generator=stream)
    before_backward = rng.state_dict()
    y.square().sum().backward()
    return weight.grad, before_backward, rng.state_dict(), len(calls)


def _states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_recompute_replays_the_first_forwards_masks_and_leaves_the_streams_where_they_were():
    reference, _, _, plain_calls = _gradient_after_interleaved_draws(lambda f, rng, x: f(x))
    ours, before, after, calls = _gradient_after_interleaved_draws(checkpoint_with_rng)
    assert (plain_calls, calls) == (1, 2), "the checkpointed forward must run again in backward"
    assert torch.equal(ours, reference)
    # The next micro-batch's forward must draw what it would have drawn without recomputation.
    assert _states_equal(before, after)


def test_torch_checkpoint_alone_would_not_replay_goldtrons_masks():
    """preserve_rng_state covers torch's global generators only: without our restore, the recompute
    draws other masks and the gradient is wrong. This is why checkpoint_with_rng exists."""
    reference, _, _, _ = _gradient_after_interleaved_draws(lambda f, rng, x: f(x))
    naive, _, _, _ = _gradient_after_interleaved_draws(
        lambda f, rng, x: checkpoint(f, x, use_reentrant=False, preserve_rng_state=True))
    assert not torch.equal(naive, reference)


# ---- a GPT stage: forward calls and gradients ---------------------------------------------------

def _count_forwards(model: GPTStage, monkeypatch) -> dict[str, list[int]]:
    """Calls of each layer's forward and of each layer's core attention (the dropout path)."""
    counts = {"layer": [0] * LAYERS, "core_attention": [0] * LAYERS}
    for i, layer in enumerate(model.decoder.layers.values()):
        layer.register_forward_pre_hook(lambda *_, i=i: counts["layer"].__setitem__(i, counts["layer"][i] + 1))
        layer.self_attention.layer_index = i
    inner = SelfAttention._attention_with_dropout

    def counted(self, q, k, v):
        counts["core_attention"][self.layer_index] += 1
        return inner(self, q, k, v)

    monkeypatch.setattr(SelfAttention, "_attention_with_dropout", counted)
    return counts


def _one_micro_batch(model: GPTStage, backward: bool = True) -> torch.Tensor:
    tokens = torch.randint(0, 1001, (2, 33), generator=torch.Generator().manual_seed(3))
    hidden = model(tokens[:, :-1], torch.arange(32).expand(2, 32))
    loss = model.loss(hidden, tokens[:, 1:]).mean()
    if backward:
        loss.backward()
    return loss


EXPECTED_CALLS = {
    # name: (flags, layer forwards per layer, core-attention forwards per layer) for one forward+backward
    "none": ([], [1, 1, 1, 1], [1, 1, 1, 1]),
    "uniform1": (full("uniform", 1), [2, 2, 2, 2], [2, 2, 2, 2]),
    "uniform2": (full("uniform", 2), [2, 2, 2, 2], [2, 2, 2, 2]),
    "block1": (full("block", 1), [2, 1, 1, 1], [2, 1, 1, 1]),
    "block3": (full("block", 3), [2, 2, 2, 1], [2, 2, 2, 1]),
    "selective": (SELECTIVE, [1, 1, 1, 1], [2, 2, 2, 2]),
}


@pytest.mark.parametrize("name", list(EXPECTED_CALLS))
def test_recomputed_modules_run_forward_twice_and_gradients_are_bitwise_the_same(one_rank_state, name,
                                                                                  monkeypatch):
    flags, layer_calls, attention_calls = EXPECTED_CALLS[name]
    torch.manual_seed(0)
    reference = build_stage(one_rank_state, [])
    _one_micro_batch(reference)
    torch.manual_seed(0)
    model = build_stage(one_rank_state, flags)
    counts = _count_forwards(model, monkeypatch)
    _one_micro_batch(model)
    assert counts == {"layer": layer_calls, "core_attention": attention_calls}
    for (param_name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(ours.grad, theirs.grad), (name, param_name)


@pytest.mark.parametrize("name", ["uniform1", "block3", "selective"])
def test_nothing_is_recomputed_without_a_backward(one_rank_state, name, monkeypatch):
    """Evaluation (eval mode, no_grad) keeps no activations, so there is nothing to recompute."""
    model = build_stage(one_rank_state, EXPECTED_CALLS[name][0])
    counts = _count_forwards(model, monkeypatch)
    with torch.no_grad():
        _one_micro_batch(model, backward=False)
    model.eval()
    _one_micro_batch(model, backward=False)  # eval: the fused attention path, no dropout
    assert counts == {"layer": [2] * LAYERS, "core_attention": [1] * LAYERS}


def test_what_a_forward_keeps_alive(one_rank_state):
    """Measured (exact, the counter is deterministic): plain 1,581,056 bytes; uniform 1: 65,536;
    uniform 4: 16,384; selective: 1,183,744.

    - full, uniform 1: each layer keeps only its input, and the last output is alive: 4 hidden
      tensors [2, 32, 64] fp32 of 16 KiB. uniform 4: one chunk, only the output is new.
    - selective frees, per layer, the three [2, 4, 32, 32] fp32 attention tensors (softmax output,
      dropout mask, dropped probabilities: 32 KiB each) and the [32, 32] bool causal mask.
    """
    hidden_bytes = 2 * 32 * 64 * 4
    attention_bytes = 3 * (2 * 4 * 32 * 32 * 4) + 32 * 32
    plain = bytes_alive_after_layers(one_rank_state, [])
    assert bytes_alive_after_layers(one_rank_state, full("uniform", 1)) == LAYERS * hidden_bytes
    assert bytes_alive_after_layers(one_rank_state, full("uniform", 4)) == hidden_bytes
    assert plain - bytes_alive_after_layers(one_rank_state, SELECTIVE) == LAYERS * attention_bytes
    assert plain > 20 * LAYERS * hidden_bytes, plain  # the layers' activations: ~382 KiB per layer
