"""Megatron's rules for the interleaved (virtual) pipeline flags, resolved into two fields:
`virtual_pipeline_model_parallel_size` (model chunks per pipeline rank, None without interleaving,
as Megatron) and `microbatch_group_size_per_vp_stage` (default PP).

The rules (megatron/training/arguments.py validate_args; the checks at the top of
forward_backward_pipelining_with_interleaving):
- At most one of --num-layers-per-virtual-pipeline-stage N and
  --num-virtual-stages-per-pipeline-rank V.
- N: chunks = (num_layers + accounted units) / PP / N, which must divide; N cannot be combined
  with --decoder-first/last-pipeline-num-layers (use V for uneven splits).
- One chunk per rank is no interleaving (Megatron sets the size to None).
- Interleaving needs PP > 1, and PP > 2 with --no-overlap-p2p-communication (Megatron's
  batched p2p would otherwise send and receive twice between the same two ranks in one batch).
- The micro-batch group G lies in [PP, M] (M micro-batches per step), and M % G is 0 or at least
  PP (a smaller last group leaves dependency bubbles; Megatron refuses it).
Which layers each chunk holds is model/pipeline_split.py's subject.
"""

from __future__ import annotations

LAYERS_FLAG = "--num-layers-per-virtual-pipeline-stage"
STAGES_FLAG = "--num-virtual-stages-per-pipeline-rank"
GROUP_FLAG = "--microbatch-group-size-per-virtual-pipeline-stage"


def complete_virtual_stages(args) -> list[str]:
    """Set args.virtual_pipeline_model_parallel_size from the two flags; the problems found."""
    args.virtual_pipeline_model_parallel_size = None
    per_stage_layers, stages = args.num_layers_per_virtual_pipeline_stage, args.num_virtual_stages_per_pipeline_rank
    if per_stage_layers is not None and stages is not None:
        return [f"{LAYERS_FLAG} {per_stage_layers} and {STAGES_FLAG} {stages} are both given; Megatron allows no "
                "more than one of them. Keep one (the number of model chunks per rank follows from either)."]
    if per_stage_layers is not None:
        return _from_layers_per_stage(args, per_stage_layers)
    if stages is not None:
        if stages < 1:
            return [f"{STAGES_FLAG} {stages}: must be a positive integer (model chunks per pipeline rank)."]
        return _set_stages(args, stages)
    return []


def chunks_per_rank(num_layers: int, pp: int, accounted_units: int, per_stage_layers: int) -> int | None:
    """Megatron's model chunks per rank from --num-layers-per-virtual-pipeline-stage: (layers +
    accounted embedding/loss units) / PP / N, or None where that does not divide."""
    units = num_layers + accounted_units
    if units % pp or (units // pp) % per_stage_layers:
        return None
    return units // pp // per_stage_layers


def _from_layers_per_stage(args, per_stage_layers: int) -> list[str]:
    pp = args.pipeline_model_parallel_size
    if per_stage_layers < 1:
        return [f"{LAYERS_FLAG} {per_stage_layers}: must be a positive integer (layers per model chunk)."]
    if args.decoder_first_pipeline_num_layers is not None or args.decoder_last_pipeline_num_layers is not None:
        return [f"{LAYERS_FLAG} cannot be combined with --decoder-first-pipeline-num-layers / "
                f"--decoder-last-pipeline-num-layers (Megatron: 'please use {STAGES_FLAG} to specify virtual "
                f"pipeline parallel degree when enable uneven pipeline parallelism'). Give {STAGES_FLAG} instead."]
    units = (args.num_layers + args.account_for_embedding_in_pipeline_split
             + args.account_for_loss_in_pipeline_split)
    if units % pp:
        return []  # the pipeline split reports this (the layers do not divide over PP)
    chunks = chunks_per_rank(args.num_layers, pp, units - args.num_layers, per_stage_layers)
    if chunks is None:
        per_rank = units // pp
        return [f"{LAYERS_FLAG} {per_stage_layers}: the layers per pipeline rank ({per_rank} = {units} / PP {pp}, "
                "accounted embedding/loss included) are not divisible by it (Megatron's rule). Choose N that "
                f"divides {per_rank}, or give {STAGES_FLAG}."]
    return _set_stages(args, chunks)


def _set_stages(args, stages: int) -> list[str]:
    if stages == 1:
        return []  # one chunk per rank: the non-interleaved schedule, as in Megatron
    pp = args.pipeline_model_parallel_size
    given = f"{STAGES_FLAG} {args.num_virtual_stages_per_pipeline_rank}" \
        if args.num_virtual_stages_per_pipeline_rank is not None \
        else f"{LAYERS_FLAG} {args.num_layers_per_virtual_pipeline_stage} ({stages} chunks per rank)"
    if args.overlap_p2p_comm and pp < 2:
        return [f"{given}: the interleaved schedule needs --pipeline-model-parallel-size > 1 (Megatron: 'When "
                "interleaved schedule is used, pipeline-model-parallel size should be greater than 1'); it is "
                f"{pp}. Use PP >= 2, or drop the virtual pipeline flag."]
    if not args.overlap_p2p_comm and pp < 3:
        return [f"{given} with --no-overlap-p2p-communication: Megatron needs --pipeline-model-parallel-size > 2 "
                "there, to avoid multiple p2p sends and receives between the same 2 ranks in one batch; it is "
                f"{pp}. Drop --no-overlap-p2p-communication, or use PP >= 3."]
    args.virtual_pipeline_model_parallel_size = stages
    return []


def complete_microbatch_group(args) -> list[str]:
    """Megatron's default (PP) and rules for the micro-batch group; needs num_micro_batches."""
    group, pp = args.microbatch_group_size_per_vp_stage, args.pipeline_model_parallel_size
    if args.virtual_pipeline_model_parallel_size is None:
        if group is not None:
            return [f"{GROUP_FLAG} {group} only applies to the interleaved schedule, which this run does not use "
                    f"(give {STAGES_FLAG} or {LAYERS_FLAG} with more than one chunk per rank). Drop it."]
        return []
    if group is None:
        group = args.microbatch_group_size_per_vp_stage = pp
    m = getattr(args, "num_micro_batches", None)
    if m is None:
        return []  # the batch size is refused elsewhere
    if not pp <= group <= m:
        named = f"{GROUP_FLAG} {group}" if group != pp else f"{GROUP_FLAG} (default PP = {pp})"
        return [f"{named}: the interleaved schedule runs groups of this many micro-batches per model chunk, which "
                f"must lie in [PP={pp}, M={m}] (Megatron's rule; M = global batch / (micro batch x DP) = "
                f"{m} here). Raise --global-batch-size to at least {group * args.micro_batch_size * args.data_parallel_size}"
                f" samples, or give a group size in that range."]
    last_group = m % group
    if 0 < last_group < pp:
        return [f"{GROUP_FLAG} {group} with M={m} micro-batches leaves a last group of {last_group}, fewer than "
                f"PP={pp} (Megatron refuses this: it introduces dependency bubbles in the pipeline). Choose M a "
                f"multiple of {group}, or a group size whose remainder of M is 0 or at least {pp}."]
    return []
