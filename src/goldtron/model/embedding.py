"""First-stage input: vocab-parallel word embedding + learned absolute positions + dropout.

With `--position-embedding-type rope` there is no position table: positions enter in attention.

Under --sequence-parallel the output is this rank's sequence part, as Megatron makes it: with
no position table the word lookups are reduce-scattered straight to it; with learned positions
they are summed whole, the positions added, and this rank's part kept (its gradient
all-gathered, so the position table's gradient stays whole on every TP rank). Its dropout then
draws from this rank's stream (parallel/random.py).
"""

from __future__ import annotations

from argparse import Namespace

import torch
from torch import nn

from goldtron.model.init import normal_full
from goldtron.parallel.random import DropoutRNG, dropout, hidden_dropout_generator
from goldtron.parallel.sequence_parallel import scatter_to_sequence_parallel
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import VocabParallelEmbedding, make_parameter

WORD_EMBEDDING_NAME = "embedding.word_embeddings.weight"


def full_word_embedding(args: Namespace) -> torch.Tensor:
    """The real [vocab, h] rows from the seed, independent of padding (and so of TP)."""
    return normal_full(args.seed, WORD_EMBEDDING_NAME, (args.real_vocab_size, args.hidden_size), args.init_method_std)


class Embedding(nn.Module):
    def __init__(self, args: Namespace, ps: ParallelState, rng: DropoutRNG):
        super().__init__()
        self.hidden_dropout = args.hidden_dropout
        self.dropout_rng = hidden_dropout_generator(rng, args.sequence_parallel)
        learned_positions = args.position_embedding_type == "learned_absolute"
        # Split to the sequence part after the positions are added (scatter), or by the lookup's reduction.
        self.scatter_group = ps.tp_group if args.sequence_parallel and learned_positions else None
        self.release = ps.backend_release
        self.word_embeddings = VocabParallelEmbedding(full_word_embedding(args), args.padded_vocab_size, ps,
                                                      args.params_dtype,
                                                      reduce_scatter=args.sequence_parallel and not learned_positions)
        self.position_embeddings = None
        if learned_positions:
            self.position_embeddings = nn.Module()
            self.position_embeddings.weight = make_parameter(
                normal_full(args.seed, "embedding.position_embeddings.weight",
                            (args.max_position_embeddings, args.hidden_size), args.init_method_std),
                ps.device, None,
            )

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(tokens)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings.weight[position_ids].to(x.dtype)
        x = scatter_to_sequence_parallel(x, self.scatter_group, self.release)
        return dropout(x, self.hidden_dropout, self.dropout_rng, self.training)
