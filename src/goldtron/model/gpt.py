"""One pipeline rank's part of a GPT: embedding (first stage), its share of the layers, and the
final LayerNorm + LM head (last stage). With one stage it is the whole model.

With an interleaved (virtual) pipeline the rank holds V model chunks (model/pipeline_split.py
says which layers each has): `forward(..., chunk=c)` runs chunk c's layers; the embedding belongs
to chunk 0 of the first rank, the final LayerNorm and the LM head to chunk V-1 of the last. One
module holds all chunks, so parameters, the optimizer and checkpoints see one set of names.

Layers are named by their *global* index (`decoder.layers.7...`), so names, initial weights and
checkpoint keys do not depend on how the model is cut into stages or chunks.
"""

from __future__ import annotations

from argparse import Namespace

import torch
from torch import nn

from goldtron.model.embedding import Embedding, full_word_embedding
from goldtron.model.init import normal_full
from goldtron.model.layer_norm import make_norm
from goldtron.model.output_layer import OutputLayer
from goldtron.model.pipeline_split import PipelineSplit, stage_layer_range
from goldtron.model.recompute import layer_chunks, run_layer_chunks
from goldtron.model.transformer import TransformerLayer
from goldtron.parallel.cross_entropy import vocab_parallel_cross_entropy
from goldtron.parallel.random import DropoutRNG
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import vocab_parallel_weight, vocab_range

OUTPUT_WEIGHT_NAME = "output_layer.weight"


class Decoder(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, rng: DropoutRNG):
        super().__init__()
        split = PipelineSplit.from_args(args)
        # The global layer indices of each model chunk of this rank (one chunk without interleaving).
        self.chunk_layers = [stage_layer_range(split, ps.pp_rank, c) for c in range(split.virtual_stages)]
        self.layers = nn.ModuleDict({
            str(i): TransformerLayer(args, ps, f"decoder.layers.{i}", rng, layer_number=i + 1)
            for layers in self.chunk_layers for i in layers
        })
        self.final_layernorm = make_norm(args, args.hidden_size, ps.device) if ps.is_last_stage else None
        self.rng = rng
        # --recompute-granularity full: which layers run under a checkpoint, in which groups; per
        # model chunk, as Megatron's transformer block of each chunk does.
        self.recompute_groups = [layer_chunks(len(layers), args.recompute_granularity, args.recompute_method,
                                              args.recompute_num_layers) for layers in self.chunk_layers]

    def forward(self, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        layers = [self.layers[str(i)] for i in self.chunk_layers[chunk]]
        x = run_layer_chunks(layers, x, self.recompute_groups[chunk], self.rng)
        last_chunk = chunk == len(self.chunk_layers) - 1
        return self.final_layernorm(x) if self.final_layernorm is not None and last_chunk else x


class GPTStage(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, rng: DropoutRNG):
        super().__init__()
        self.ps = ps
        self.tied = not args.untie_embeddings_and_output_weights
        self.embedding = Embedding(args, ps, rng) if ps.is_first_stage else None
        self.decoder = Decoder(args, ps, rng)
        self.output_layer = None
        if ps.is_last_stage:
            self.vocab_start, _, _ = vocab_range(args.padded_vocab_size, args.real_vocab_size, ps)
            defer_limit = args.wgrad_deferral_limit if args.defer_embedding_wgrad_compute else None
            self.output_layer = OutputLayer(self._output_weight(args, ps), ps, args.params_dtype, defer_limit)

    def _output_weight(self, args: Namespace, ps: ParallelState) -> nn.Parameter:
        if self.tied and self.embedding is not None:
            return self.embedding.word_embeddings.weight  # one stage: one shared Parameter
        # Untied: its own weight. Tied across stages: a copy of the word embedding on the last
        # stage, built from the same seed and name, so it starts equal without a collective;
        # the embedding group keeps the gradients (and so the updates) equal.
        if self.tied:
            full = full_word_embedding(args)
        else:
            full = normal_full(args.seed, OUTPUT_WEIGHT_NAME, (args.real_vocab_size, args.hidden_size), args.init_method_std)
        weight = vocab_parallel_weight(full, args.padded_vocab_size, ps)
        weight.is_embedding_copy = self.tied
        return weight

    def shared_embedding_weight(self) -> nn.Parameter | None:
        """The parameter whose gradient is summed over the embedding group (PP > 1, tied)."""
        if not self.tied or self.ps.pp_size == 1:
            return None
        if self.embedding is not None:
            return self.embedding.word_embeddings.weight
        if self.output_layer is not None:
            return self.output_layer.weight
        return None  # a middle stage holds neither copy

    @property
    def num_chunks(self) -> int:
        """Model chunks on this rank (the virtual pipeline size; 1 without interleaving)."""
        return len(self.decoder.chunk_layers)

    def takes_tokens(self, chunk: int) -> bool:
        """Whether chunk `chunk` is the first virtual stage (it embeds token ids)."""
        return self.embedding is not None and chunk == 0

    def computes_loss(self, chunk: int) -> bool:
        """Whether chunk `chunk` is the last virtual stage (its output goes to `loss`)."""
        return self.output_layer is not None and chunk == self.num_chunks - 1

    def forward(self, stage_input: torch.Tensor, position_ids: torch.Tensor | None = None,
                chunk: int = 0) -> torch.Tensor:
        """First virtual stage: token ids -> hidden; others: hidden -> hidden. Last virtual stage:
        returns the hidden after the final LayerNorm; call `loss` with it."""
        x = self.embedding(stage_input, position_ids) if self.takes_tokens(chunk) else stage_input
        return self.decoder(x, chunk)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token fp32 loss [b, s] from the last stage's hidden."""
        logits = self.output_layer(hidden)
        return vocab_parallel_cross_entropy(logits, labels, self.vocab_start, self.ps.tp_group, self.ps.backend_release)

    def start_deferred_wgrads(self) -> None:
        """A new step: nothing deferred may carry over from an interrupted one."""
        if self.output_layer is not None and self.output_layer.deferred is not None:
            self.output_layer.deferred.start_step()

    def drain_deferred_wgrads(self) -> None:
        if self.output_layer is not None:
            self.output_layer.drain_deferred_wgrads()

