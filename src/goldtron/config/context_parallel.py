"""Megatron's rules for the context-parallel flags (`--context-parallel-size`, `--cp-comm-type`,
`--hierarchical-context-parallel-sizes`), each problem with its fix.

- The sequence is cut into 2 x CP chunks (causal load balancing), so --seq-length must divide by
  2 x CP; under --sequence-parallel a CP rank's part (seq / CP) must also divide by TP.
- --cp-comm-type is one value for all layers or one per layer (Megatron's TransformerConfig), each
  p2p, a2a, allgather (Transformer Engine spells it all_gather) or a2a+p2p.
- The all-to-all hands each rank heads / size of its TP rank's heads: they must divide (a2a: by CP;
  a2a+p2p: by the level-0 size).
- a2a+p2p needs --hierarchical-context-parallel-sizes (Megatron's check), here two sizes [a2a, p2p];
  whenever given, their product is CP (Megatron's assert in parallel_state).
- Attention dropout is not implemented under CP (parallel/context_attention.py): refused.
"""

from __future__ import annotations

import math

# Kept free of torch: flags are checked before torch is imported (training/build.py).
COMM_TYPES = ("p2p", "a2a", "allgather", "all_gather", "a2a+p2p")
SIZE_FLAG = "--context-parallel-size"
TYPE_FLAG = "--cp-comm-type"
HIERARCHY_FLAG = "--hierarchical-context-parallel-sizes"


def context_parallel_problems(args) -> list[str]:
    cp, tp = args.context_parallel_size, args.tensor_model_parallel_size
    if cp < 1:
        return [f"{SIZE_FLAG} {cp}: must be a positive integer (the ranks that share each sequence)."]
    problems = _hierarchy_problems(args.hierarchical_context_parallel_sizes, cp)
    if cp == 1:
        return problems
    seq = args.seq_length
    if seq % (2 * cp):
        problems.append(f"--seq-length {seq} is not divisible by 2 x {SIZE_FLAG} {cp} = {2 * cp}: context "
                        f"parallelism cuts the sequence into {2 * cp} equal chunks (rank r holds chunks r and "
                        f"{2 * cp - 1}-r). Choose a --seq-length that is a multiple of {2 * cp}.")
    elif args.sequence_parallel and (seq // cp) % tp:
        problems.append(f"--sequence-parallel splits each CP rank's {seq // cp} positions (--seq-length {seq} / "
                        f"{SIZE_FLAG} {cp}) over --tensor-model-parallel-size {tp}, which does not divide them. "
                        f"Choose a --seq-length that is a multiple of {2 * cp * tp}.")
    types = args.cp_comm_type
    unknown = [t for t in types if t not in COMM_TYPES]
    if unknown:
        problems.append(f"{TYPE_FLAG} {' '.join(unknown)}: unknown; the types are p2p, a2a, allgather (all_gather) "
                        "and a2a+p2p.")
    if len(types) not in (1, args.num_layers):
        problems.append(f"Length of cp_comm_type ({len(types)}) should equal to the total number of transformer "
                        f"layers ({args.num_layers})! (Megatron's check): give one {TYPE_FLAG} for all layers, or "
                        "one per layer.")
    local_heads = args.num_attention_heads // tp
    if "a2a" in types and local_heads % cp:
        problems.append(f"{TYPE_FLAG} a2a hands each of the {cp} CP ranks 1/{cp} of a TP rank's {local_heads} "
                        f"attention heads (--num-attention-heads {args.num_attention_heads} / TP {tp}), which does "
                        "not divide. Choose heads, TP and CP so that heads / TP is a multiple of CP, or use p2p.")
    if "a2a+p2p" in types:
        problems += _hierarchical_a2a_problems(args.hierarchical_context_parallel_sizes, local_heads)
    if args.attention_dropout > 0:
        problems.append(f"--attention-dropout {args.attention_dropout} with {SIZE_FLAG} {cp}: attention dropout is "
                        "not implemented under context parallelism. Pass --attention-dropout 0 (Megatron's CP "
                        "cases do).")
    return problems


def _hierarchy_problems(sizes: list[int] | None, cp: int) -> list[str]:
    if not sizes:
        return []
    product = math.prod(sizes)
    if any(size < 1 for size in sizes) or product != cp:
        return [f"{HIERARCHY_FLAG} {' '.join(map(str, sizes))}: the sizes multiply to {product}, but "
                f"{SIZE_FLAG} is {cp}; their product must be the CP size (Megatron's check). Give sizes "
                f"whose product is {cp}."]
    return []


def _hierarchical_a2a_problems(sizes: list[int] | None, local_heads: int) -> list[str]:
    if not sizes:
        return [f"{HIERARCHY_FLAG} must be set when a2a+p2p is used in cp comm (Megatron's check): give the "
                "sizes of its two levels, e.g. 2 2 for CP 4."]
    if len(sizes) != 2:
        return [f"{TYPE_FLAG} a2a+p2p takes two levels from {HIERARCHY_FLAG} (the all-to-all size, then the ring "
                f"size); {len(sizes)} were given ({' '.join(map(str, sizes))})."]
    if local_heads % sizes[0]:
        return [f"{TYPE_FLAG} a2a+p2p hands each rank of an all-to-all group of {sizes[0]} 1/{sizes[0]} of a TP "
                f"rank's {local_heads} attention heads, which does not divide. Choose a first "
                f"{HIERARCHY_FLAG} size that divides {local_heads}."]
    return []
