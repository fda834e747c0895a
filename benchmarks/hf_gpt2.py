"""Hugging Face `GPT2LMHeadModel` trained the way goldtron trains: the reference the time-to-verdict
issue measures against (not a benchmark by itself; `step_time.py --reference hf` and
`main_command_vs_hf.py` use it).

Same shape as goldtron's CPU cases (layers, hidden, heads, sequence, GPT-2's 50257 ids), exact
GeLU as goldtron's MLP, dropout as given, fp32, the global batch in micro-batches with loss / M
accumulated, global grad-norm clipping, AdamW with goldtron's defaults. Its weights are HF's own
initialisation: only the time is compared, not the loss.
"""

from __future__ import annotations

import time

import torch


class HFGPT2Runner:
    def __init__(self, layers: int, hidden: int, heads: int, seq: int, vocab: int = 50257, dropout: float = 0.0,
                 lr: float = 1e-4, weight_decay: float = 0.01, clip: float = 1.0):
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=heads,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu")
        self.model = GPT2LMHeadModel(config)
        self.vocab, self.seq, self.clip = vocab, seq, clip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)

    def random_batches(self, micro_batches: int, micro_batch_size: int, seed: int = 0) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, self.vocab, (micro_batch_size, self.seq), generator=generator)
                for _ in range(micro_batches)]

    def step(self, micro_batches: list[torch.Tensor]) -> float:
        """One training step; returns its wall seconds."""
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for tokens in micro_batches:
            loss = self.model(input_ids=tokens, labels=tokens).loss / len(micro_batches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return time.perf_counter() - started
