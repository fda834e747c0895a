"""First-stage input: vocab-parallel word embedding + learned absolute positions + dropout.

With `--position-embedding-type rope` there is no position table: positions enter in attention.
"""

from __future__ import annotations

from argparse import Namespace

import torch
from torch import nn

from goldtron.model.init import normal_full
from goldtron.parallel.random import DropoutRNG, dropout
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
        self.rng = rng
        self.word_embeddings = VocabParallelEmbedding(full_word_embedding(args), args.padded_vocab_size, ps,
                                                      args.params_dtype)
        self.position_embeddings = None
        if args.position_embedding_type == "learned_absolute":
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
        return dropout(x, self.hidden_dropout, self.rng.regular, self.training)
