"""Issue 12's first lever, measured before it is built: the LM head + vocabulary-parallel
cross-entropy of one micro-batch, as goldtron computes it today against a fused, vocabulary-chunked
prototype that never holds the whole fp32 [tokens, V_local] logits, side by side in one process.

    python benchmarks/lm_head_chunking.py [--tokens 512] [--hidden 128] [--vocab 25152]
                                          [--chunk 4096] [--threads 1] [--rounds 7]

Default shape: the flagship's last stage on one TP rank (micro-batch 2 x seq 256 tokens, hidden 128,
GPT-2's 50257 ids split over TP2 = 25152 real rows per rank), one thread as each of the flagship's
4 ranks has. Each round times, alternating, one forward + backward of:
- `today`: logits = X W^T, goldtron's `vocab_parallel_cross_entropy` (TP1, no collective), autograd
  backward (dX = dY W, dW = dY^T X);
- `chunked`: per vocabulary chunk of `--chunk` rows, logits_c = X W_c^T kept only while the chunk is
  used; forward merges the chunks' max and sum of exp (online softmax) and picks the target logit;
  backward recomputes logits_c, turns them into softmax_c - onehot, and adds dX += G_c W_c and
  dW_c = G_c^T X chunk by chunk (one more X W_c^T GEMM than today: the price of not keeping logits);
- `chunked, deferred`: the same, but G is written into a whole [tokens, V_local] buffer and dW is not
  computed: what --defer-embedding-wgrad-compute must keep for the drain (so deferral keeps the
  logits-sized gradient anyway, as Megatron's deferral keeps its grad_output).
Printed: the median of each, the ratios to `today`, the loss and gradient differences to `today`
(fp32 sums in another order: ~1e-7 relative), and the peak tensor bytes each holds above its inputs
(goldtron's exact CPU allocation counter).

The prototype lives here, not in the trainer: it is the measurement that decides whether the lever
is worth its cost (new numerics and memory for every committed golden; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from goldtron.parallel.collectives import BackendRelease
from goldtron.parallel.cross_entropy import vocab_parallel_cross_entropy
from goldtron.training.memory import CpuAllocationCounter


def today(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor):
    x = x.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    loss = vocab_parallel_cross_entropy(x @ w.t(), target, 0, None, BackendRelease()).sum()
    loss.backward()
    return loss.detach(), x.grad, w.grad


def chunked(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int, defer: bool):
    """Forward and backward by hand (no autograd), in vocabulary chunks of `chunk` rows."""
    tokens, vocab = x.shape[0], weight.shape[0]
    rows = torch.arange(tokens)
    running_max = torch.full((tokens,), float("-inf"))
    sum_exp = torch.zeros(tokens)
    target_logit = torch.zeros(tokens)
    buffer = torch.empty(tokens, chunk)
    for start in range(0, vocab, chunk):
        w_c = weight[start:start + chunk]
        logits = torch.mm(x, w_c.t(), out=buffer[:, : w_c.shape[0]])
        inside = (target >= start) & (target < start + w_c.shape[0])
        target_logit += torch.where(inside, logits[rows, (target - start).clamp(0, w_c.shape[0] - 1)], 0.0)
        new_max = torch.maximum(running_max, logits.amax(dim=1))
        sum_exp.mul_(torch.exp(running_max - new_max))
        sum_exp += logits.sub_(new_max.unsqueeze(1)).exp_().sum(dim=1)
        running_max = new_max
    log_sum = sum_exp.log() + running_max
    loss = (log_sum - target_logit).sum()

    grad_loss = torch.ones(tokens)  # d(sum of per-token losses) / d(each)
    grad_x = torch.zeros_like(x)
    grad_w = None if defer else torch.empty_like(weight)
    kept = torch.empty(tokens, vocab) if defer else None
    for start in range(0, vocab, chunk):
        w_c = weight[start:start + chunk]
        grad = kept[:, start:start + w_c.shape[0]] if defer else buffer[:, : w_c.shape[0]]
        torch.mm(x, w_c.t(), out=grad)
        grad.sub_(log_sum.unsqueeze(1)).exp_()
        inside = (target >= start) & (target < start + w_c.shape[0])
        local = (target - start).clamp(0, w_c.shape[0] - 1)
        grad[rows[inside], local[inside]] -= 1.0
        grad.mul_(grad_loss.unsqueeze(1))
        grad_x.addmm_(grad, w_c)
        if not defer:
            torch.mm(grad.t(), x, out=grad_w[start:start + w_c.shape[0]])
    return loss, grad_x, grad_w if not defer else kept


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def peak_bytes(fn) -> int:
    with CpuAllocationCounter() as counter:
        fn()
    return counter.peak


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=25152)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(args.tokens, args.hidden, generator=gen)
    weight = torch.randn(args.vocab, args.hidden, generator=gen) * 0.02
    target = torch.randint(0, args.vocab, (args.tokens,), generator=gen)

    runs = {
        "today": lambda: today(x, weight, target),
        "chunked": lambda: chunked(x, weight, target, args.chunk, defer=False),
        "chunked, deferred": lambda: chunked(x, weight, target, args.chunk, defer=True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, fn in runs.items():
            seconds, results[name] = timed(fn)
            if round_index:
                times[name].append(seconds)

    base = statistics.median(times["today"])
    loss, grad_x, grad_w = results["today"]
    print(f"shape: {args.tokens} tokens x hidden {args.hidden} x vocab {args.vocab}, chunk {args.chunk}, "
          f"{args.threads} thread(s), median of {args.rounds} alternating rounds")
    for name, fn in runs.items():
        median = statistics.median(times[name])
        ours_loss, ours_x, ours_w = results[name]
        diffs = f"loss {rel(ours_loss, loss):.1e}, dX {rel(ours_x, grad_x):.1e}"
        if name == "chunked":
            diffs += f", dW {rel(ours_w, grad_w):.1e}"
        print(f"{name:18s} {median * 1e3:8.1f} ms  x{median / base:.3f}  peak {peak_bytes(fn):>12,d} B  ({diffs})")


if __name__ == "__main__":
    main()
