"""Each tensor-parallel piece against its single-process twin, on every rank (run under torchrun).

Every rank builds the full-size twin from the same seed, computes it alone, and compares its
own shard of the parallel result (forward and every gradient). Exits non-zero on a mismatch.

Tolerances: 1e-6 relative (x max magnitude). A shard's GEMM has a different shape than the full
GEMM, so the BLAS may block the k-sum differently, and reduced results are sums in a different
order: fp32 rounding (~1e-7 relative per add), not a logic error, which would be O(1).
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from goldtron.parallel.collectives import all_reduce_
from goldtron.parallel.cross_entropy import vocab_parallel_cross_entropy
from goldtron.parallel.sequence_parallel import SEQUENCE_DIM
from goldtron.parallel.state import ParallelState
from goldtron.parallel.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                               vocab_range)
from goldtron.parallel.tp_slicing import shard

RTOL = 1e-6
failures = []


def close(name, actual, expected):
    actual, expected = actual.detach(), expected.detach()
    if actual.shape != expected.shape:
        failures.append(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
        return
    if expected.numel() == 0:
        return
    scale = expected.abs().max().clamp_min(1e-12)
    err = float((actual - expected).abs().max() / scale)
    if not err <= RTOL:
        failures.append(f"{name}: max relative error {err:.3e} > {RTOL}")


def check(tp: int):
    ps = ParallelState.create(tp, 1, torch.device("cpu"), "gloo")
    g = torch.Generator().manual_seed(7)
    b, s, h, f, vocab = 2, 5, 8, 16, 37
    # Megatron's padding rule with divisible-by 8: the last rank holds some padding rows.
    padded = -(-vocab // (8 * tp)) * 8 * tp
    x = torch.randn(b, s, h, generator=g)

    # Column-parallel: output columns split.
    w, bias = torch.randn(f, h, generator=g), torch.randn(f, generator=g)
    col = ColumnParallelLinear(w, bias, ps, torch.float32)
    xc = x.clone().requires_grad_(True)
    y = col(xc)
    dy = torch.randn(b, s, f, generator=g)
    y.backward(shard(dy, 2, ps.tp_rank, tp))
    xt, wt, bt = x.clone().requires_grad_(True), w.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    yt = F.linear(xt, wt, bt)
    yt.backward(dy)
    close(f"tp{tp} column forward", y, shard(yt.detach(), 2, ps.tp_rank, tp))
    close(f"tp{tp} column dx", xc.grad, xt.grad)
    close(f"tp{tp} column dW", col.weight.grad, shard(wt.grad, 0, ps.tp_rank, tp))
    close(f"tp{tp} column db", col.bias.grad, shard(bt.grad, 0, ps.tp_rank, tp))

    # Row-parallel: input features split, outputs summed over TP.
    w2, bias2 = torch.randn(h, f, generator=g), torch.randn(h, generator=g)
    row = RowParallelLinear(w2, bias2, ps, torch.float32)
    z = torch.randn(b, s, f, generator=g)
    zr = shard(z, 2, ps.tp_rank, tp).requires_grad_(True)
    out = row(zr)
    dout = torch.randn(b, s, h, generator=g)
    out.backward(dout)
    zt, w2t, b2t = z.clone().requires_grad_(True), w2.clone().requires_grad_(True), bias2.clone().requires_grad_(True)
    outt = F.linear(zt, w2t, b2t)
    outt.backward(dout)
    close(f"tp{tp} row forward", out, outt)
    close(f"tp{tp} row dx", zr.grad, shard(zt.grad, 2, ps.tp_rank, tp))
    close(f"tp{tp} row dW", row.weight.grad, shard(w2t.grad, 1, ps.tp_rank, tp))
    close(f"tp{tp} row db", row.bias.grad, b2t.grad)

    # Vocab-parallel embedding: rows split, padding rows zero and never touched.
    table = torch.randn(vocab, h, generator=g)
    emb = VocabParallelEmbedding(table, padded, ps, torch.float32)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    e = emb(ids)
    de = torch.randn(b, s, h, generator=g)
    e.backward(de)
    tablet = table.clone().requires_grad_(True)
    et = F.embedding(ids, tablet)
    et.backward(de)
    close(f"tp{tp} embedding forward", e, et)
    start, end, real = vocab_range(padded, vocab, ps)
    close(f"tp{tp} embedding dW real rows", emb.weight.grad[:real], tablet.grad[start:start + real])
    if emb.weight.grad[real:].abs().sum() != 0:
        failures.append(f"tp{tp} embedding: padding rows got a gradient")

    # Vocab-parallel cross-entropy vs torch's on the full logits.
    logits = torch.randn(b, s, vocab, generator=g) * 3
    target = torch.randint(0, vocab, (b, s), generator=g)
    local = logits[..., start:start + real].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(local, target, start, ps.tp_group, ps.backend_release)
    dl = torch.rand(b, s, generator=g)
    loss.backward(dl)
    lt = logits.clone().requires_grad_(True)
    losst = F.cross_entropy(lt.view(-1, vocab), target.view(-1), reduction="none").view(b, s)
    losst.backward(dl)
    close(f"tp{tp} cross-entropy loss", loss, losst)
    close(f"tp{tp} cross-entropy dlogits", local.grad, lt.grad[..., start:start + real])
    check_sequence_parallel(ps, g)


def check_sequence_parallel(ps: ParallelState, g: torch.Generator):
    """--sequence-parallel's layers: inputs/outputs outside the GEMMs are this rank's sequence part
    (parallel/sequence_parallel.py); a replicated bias's gradient is a part, summed over TP here as
    the optimizer does."""
    tp = ps.tp_size
    b, s, h, f, vocab = 2, 4 * tp, 8, 16, 37
    padded = -(-vocab // (8 * tp)) * 8 * tp

    def seq_part(t):
        return shard(t, SEQUENCE_DIM, ps.tp_rank, tp)

    x = torch.randn(b, s, h, generator=g)
    w, bias = torch.randn(f, h, generator=g), torch.randn(f, generator=g)
    col = ColumnParallelLinear(w, bias, ps, torch.float32, sequence_parallel=True)
    xs = seq_part(x).requires_grad_(True)
    y = col(xs)
    dy = torch.randn(b, s, f, generator=g)
    y.backward(shard(dy, 2, ps.tp_rank, tp))
    xt, wt, bt = x.clone().requires_grad_(True), w.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    F.linear(xt, wt, bt).backward(dy)
    close(f"tp{tp} sp column forward (whole sequence)", y, shard(F.linear(x, w, bias), 2, ps.tp_rank, tp))
    close(f"tp{tp} sp column dx (sequence part)", xs.grad, seq_part(xt.grad))
    close(f"tp{tp} sp column dW", col.weight.grad, shard(wt.grad, 0, ps.tp_rank, tp))
    close(f"tp{tp} sp column db", col.bias.grad, shard(bt.grad, 0, ps.tp_rank, tp))

    w2, bias2 = torch.randn(h, f, generator=g), torch.randn(h, generator=g)
    row = RowParallelLinear(w2, bias2, ps, torch.float32, sequence_parallel=True)
    z = torch.randn(b, s, f, generator=g)
    zr = shard(z, 2, ps.tp_rank, tp).requires_grad_(True)
    out = row(zr)
    dout = torch.randn(b, s, h, generator=g)
    out.backward(seq_part(dout))
    zt, w2t, b2t = z.clone().requires_grad_(True), w2.clone().requires_grad_(True), bias2.clone().requires_grad_(True)
    outt = F.linear(zt, w2t, b2t)
    outt.backward(dout)
    close(f"tp{tp} sp row forward (sequence part)", out, seq_part(outt))
    close(f"tp{tp} sp row dx", zr.grad, shard(zt.grad, 2, ps.tp_rank, tp))
    close(f"tp{tp} sp row dW", row.weight.grad, shard(w2t.grad, 1, ps.tp_rank, tp))
    if tp > 1 and not getattr(row.bias, "sequence_parallel", False):
        failures.append(f"tp{tp} sp row bias not marked sequence_parallel")
    close(f"tp{tp} sp row db summed over TP", all_reduce_(row.bias.grad.clone(), ps.tp_group, ps.backend_release),
          b2t.grad)

    table = torch.randn(vocab, h, generator=g)
    emb = VocabParallelEmbedding(table, padded, ps, torch.float32, reduce_scatter=tp > 1)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    e = emb(ids)
    de = torch.randn(b, s, h, generator=g)
    e.backward(seq_part(de))
    tablet = table.clone().requires_grad_(True)
    F.embedding(ids, tablet).backward(de)
    close(f"tp{tp} sp embedding forward (sequence part)", e, seq_part(F.embedding(ids, table)))
    start, _, real = vocab_range(padded, vocab, ps)
    close(f"tp{tp} sp embedding dW real rows", emb.weight.grad[:real], tablet.grad[start:start + real])


def run_on_every_rank(check_tp, success: str) -> None:
    """Run `check_tp(tp)` for each --tp on this rank; print `success`, or the failures and exit 1."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, nargs="+", required=True)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    for tp in args.tp:
        check_tp(tp)
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    if failures:
        print(f"rank {rank}: " + "\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"rank {rank}: {success}")


if __name__ == "__main__":
    run_on_every_rank(check, "all parallel layers match their single-process twins")
