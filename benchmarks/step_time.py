"""Training step time of goldtron on one process vs a plain-PyTorch GPT of the same shape.

Both run in this process, fp32, same thread count, same AdamW settings and grad clipping, same
global batch split into the same micro-batches (goldtron's own mock-data batches, fed to both).
Before timing, the reference is given goldtron's initial weights and the script prints how far
apart the two are at step 1 (loss, grad-norm) and step 2 (loss after one AdamW update), so the
comparison is known to be like for like. Timed steps are interleaved (goldtron, reference,
goldtron, ...) and the medians compared: this machine is shared, absolute times do not travel.

    python benchmarks/step_time.py [--threads 2] [--steps 8] [--warmup 2] [--profile] [--device cuda]
                                   [--reference own|hf]

Targets: goldtron / own reference <= 1.0 (benchmarks/reference_gpt.py, like for like: same weights
and batches); goldtron / Hugging Face GPT2LMHeadModel of the same shape (`--reference hf`,
benchmarks/hf_gpt2.py; its own initial weights, so only times compare) <= 0.6.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.distributed as dist

from goldtron.arguments import parse_args
from goldtron.parallel.state import ParallelState
from goldtron.parallel.trace import KINDS
from goldtron.training.build import build_trainer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hf_gpt2 import HFGPT2Runner  # noqa: E402
from reference_gpt import ReferenceGPT, build_optimizer, load_goldtron_weights  # noqa: E402


def goldtron_flags(o: argparse.Namespace, train_iters: int) -> list[str]:
    return [
        "--num-layers", str(o.layers), "--hidden-size", str(o.hidden), "--num-attention-heads", str(o.heads),
        "--seq-length", str(o.seq), "--max-position-embeddings", str(o.seq),
        "--micro-batch-size", str(o.micro_batch), "--global-batch-size", str(o.global_batch),
        # --mock-data without --vocab-size: GPT-2's tokenizer, 50257 real ids (padded to 50304).
        "--mock-data", "--train-iters", str(train_iters), "--eval-iters", "0",
        "--lr", str(o.lr), "--lr-decay-style", "constant", "--weight-decay", "0.01", "--clip-grad", "1.0",
        "--hidden-dropout", str(o.dropout), "--attention-dropout", str(o.dropout),
        "--torch-threads", str(o.threads), "--log-interval", "1000000",
    ] + (["--distributed-backend", "nccl"] if o.device == "cuda" else [])


def build_goldtron(o: argparse.Namespace, train_iters: int):
    args = parse_args(goldtron_flags(o, train_iters), world_size=1)
    # A one-rank group in memory, as `goldtron train` makes when started alone.
    device = torch.device(o.device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(args.distributed_backend, store=dist.HashStore(), rank=0, world_size=1)
    ps = ParallelState.create(1, 1, device, args.distributed_backend)
    return args, build_trainer(args, ps, device)


class ReferenceRunner:
    """The reference's training step, doing what goldtron's step does: M micro-batches with
    loss / M accumulated, global grad-norm clipping, AdamW."""

    def __init__(self, model: ReferenceGPT, args):
        self.model = model
        self.clip = args.clip_grad
        self.optimizer = build_optimizer(model, args.lr, args.weight_decay, (args.adam_beta1, args.adam_beta2),
                                         args.adam_eps)

    def step(self, micro_batches, exact_norm: bool = False) -> tuple[float, float]:
        """(loss, grad-norm). clip_grad_norm_ sums in fp32 (~1e-5 relative off on millions of
        elements); `exact_norm` returns a float64 norm instead, as goldtron computes it (not timed)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for mb in micro_batches:
            loss = self.model(mb.tokens, mb.labels) / len(micro_batches)
            loss.backward()
            total += float(loss.detach())
        if exact_norm:
            squares = sum(torch.linalg.vector_norm(p.grad, dtype=torch.float64) ** 2 for p in self.model.parameters())
            exact = float(squares) ** 0.5
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip))
        self.optimizer.step()
        if next(self.model.parameters()).is_cuda:
            torch.cuda.synchronize()  # the step is timed to its end, as goldtron's (which reads its loss)
        return total, exact if exact_norm else grad_norm


class HFReferenceRunner:
    """HF GPT-2 of the same shape behind ReferenceRunner's `step`; its loss is its own (other weights)."""

    def __init__(self, o: argparse.Namespace, args):
        self.runner = HFGPT2Runner(o.layers, o.hidden, o.heads, o.seq, args.real_vocab_size, o.dropout, o.lr,
                                   0.01, args.clip_grad)

    def step(self, micro_batches, exact_norm: bool = False) -> tuple[float, float]:
        self.runner.step([mb.tokens for mb in micro_batches])
        return float("nan"), float("nan")


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def check_like_for_like(trainer, reference: ReferenceRunner, batches) -> None:
    ours1, ref1 = trainer.train_step(), reference.step(batches[0], exact_norm=True)
    ours2, ref2 = trainer.train_step(), reference.step(batches[1])
    print("like-for-like check (reference given goldtron's initial weights, same batches):")
    print(f"  step 1 lm loss   goldtron {ours1['lm_loss']:.7f}  reference {ref1[0]:.7f}  "
          f"rel diff {relative(ours1['lm_loss'], ref1[0]):.1e}")
    print(f"  step 1 grad-norm goldtron {ours1['grad_norm']:.7f}  reference {ref1[1]:.7f}  "
          f"rel diff {relative(ours1['grad_norm'], ref1[1]):.1e}  (both summed in float64)")
    print(f"  step 2 lm loss   goldtron {ours2['lm_loss']:.7f}  reference {ref2[0]:.7f}  "
          f"rel diff {relative(ours2['lm_loss'], ref2[0]):.1e}  (after one AdamW update)")


def op_times(run_step) -> dict[str, tuple[float, int]]:
    """{op name: (self CPU seconds, calls)} of one step under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_step()
    return {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}


def profile_side_by_side(goldtron_step, reference_step, rounds: int, rows: int) -> None:
    """Per-op self CPU time per step of each, profiled alternately (load hits both alike)."""
    totals: dict[str, list[float]] = {}
    for _ in range(rounds):
        for side, run in ((0, goldtron_step), (1, reference_step)):
            for name, (seconds, calls) in op_times(run).items():
                entry = totals.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                entry[side] += seconds / rounds
                entry[2 + side] += calls / rounds
    print(f"\nprofile: self CPU ms per step by op, {rounds} alternating steps of each "
          "(profiler overhead included; compare columns, not with the timings above)")
    print(f"  {'op':<58} {'goldtron':>9} {'reference':>9} {'calls g/r':>11}")
    order = sorted(totals.items(), key=lambda kv: -max(kv[1][0], kv[1][1]))
    for name, (g, r, gc, rc) in order[:rows]:
        print(f"  {name[:58]:<58} {g * 1000:9.1f} {r * 1000:9.1f} {gc:>5.0f}/{rc:<5.0f}")
    g_total, r_total = (sum(v[i] for v in totals.values()) for i in (0, 1))
    print(f"  {'total':<58} {g_total * 1000:9.1f} {r_total * 1000:9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both models")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.0, help="hidden and attention dropout, both models")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each after the check")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each, interleaved")
    parser.add_argument("--profile", action="store_true", help="then profile a few steps of each")
    parser.add_argument("--reference", choices=("own", "hf"), default="own",
                        help="own: reference_gpt.py with goldtron's weights; hf: transformers' GPT2LMHeadModel")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: both on GPU 0, goldtron with a one-rank NCCL group")
    o = parser.parse_args()

    torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    profile_count = 3 if o.profile else 0
    total_steps = 2 + o.warmup + o.steps + profile_count
    args, trainer = build_goldtron(o, total_steps)
    # The batches goldtron will see at each step, made up front so the reference gets the same.
    batches = [trainer._micro_batches(trainer.train_ds, k * o.global_batch) for k in range(total_steps)]

    if o.reference == "hf":
        reference = HFReferenceRunner(o, args)
    else:
        model = ReferenceGPT(args.real_vocab_size, args.max_position_embeddings, o.hidden, o.heads, o.layers,
                             args.ffn_hidden_size, o.dropout, args.layernorm_epsilon).to(o.device)
        load_goldtron_weights(model, trainer.model, o.heads)
        reference = ReferenceRunner(model, args)

    print(f"reference: {'HF GPT2LMHeadModel (its own weights: times only)' if o.reference == 'hf' else 'reference_gpt.py'}")
    print(f"model: {o.layers} layers, hidden {o.hidden}, {o.heads} heads, seq {o.seq}, vocab {args.real_vocab_size} "
          f"(goldtron pads to {args.padded_vocab_size}), micro-batch {o.micro_batch}, global batch {o.global_batch}, "
          f"fp32, dropout {o.dropout}, " + (torch.cuda.get_device_name() if o.device == "cuda" else f"{o.threads} threads"))
    if o.reference == "own":
        check_like_for_like(trainer, reference, batches)
    else:
        trainer.train_step(), trainer.train_step()
        reference.step(batches[0]), reference.step(batches[1])

    step = 2
    for _ in range(o.warmup):
        trainer.train_step()
        reference.step(batches[step])
        step += 1

    ours, theirs, losses = [], [], []
    spans = {kind: [] for kind in (*KINDS, "idle")}
    for _ in range(o.steps):  # interleaved: machine load hits both alike
        values = trainer.train_step()
        ours.append(values["iteration_time"])
        for kind, seconds in trainer.last_trace.totals().items():
            spans[kind].append(seconds)
        started = time.perf_counter()
        ref_loss, _ = reference.step(batches[step])
        theirs.append(time.perf_counter() - started)
        losses.append(relative(values["lm_loss"], ref_loss))
        step += 1

    median_ours, median_ref = statistics.median(ours), statistics.median(theirs)
    print(f"\ntimed: {o.steps} steps of each, interleaved, after {o.warmup} warm-up steps")
    print(f"  goldtron  median step {median_ours * 1000:8.1f} ms  (min {min(ours) * 1000:.1f})")
    print(f"  reference median step {median_ref * 1000:8.1f} ms  (min {min(theirs) * 1000:.1f})")
    target = "0.6" if o.reference == "hf" else "1.0"
    print(f"  ratio goldtron / reference: {median_ours / median_ref:.3f}  (target <= {target})")
    if o.reference == "own":
        print(f"  loss still equal while timing: max rel diff {max(losses):.1e} over the timed steps")
    print("  goldtron step split (median ms): " + ", ".join(
        f"{kind} {statistics.median(v) * 1000:.1f}" for kind, v in spans.items()))
    print("  ('idle' on one process = outside the schedule's spans: data, zero_grad, loss reduction)")

    if o.profile:
        profile_side_by_side(trainer.train_step, lambda: reference.step(batches[step]), profile_count, 30)

    del trainer
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
