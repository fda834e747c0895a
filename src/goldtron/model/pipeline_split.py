"""Which transformer layers each pipeline stage holds: Megatron's even and uneven splits.

The one place that answers "how many layers, and which, does stage s have". Layers keep their
global index whatever the split (layer i of the model is `decoder.layers.i` on whichever stage
holds it), so checkpoints reshard between any two splits.

Megatron's rules (TransformerConfig.__post_init__, get_num_layers_to_build and
get_transformer_layer_offset; arguments.py validate_args):
- Even (no flag): num_layers / PP layers per stage; PP must divide num_layers.
- --decoder-first-pipeline-num-layers F / --decoder-last-pipeline-num-layers L (either or both):
  the first (last) stage gets F (L) layers, each must be > 0, and the layers left are split
  evenly over the other ("middle") stages, whose count must divide them.
- --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split: the
  embedding (loss) counts as one layer-sized unit on the first (last) stage:
  num_layers + 1 (+ 1) must divide by PP, each stage gets (num_layers + units) / PP units, and
  the first (last) stage one transformer layer fewer. That stage may end with none (PP =
  num_layers + 1): it then holds only the embedding (loss), as Megatron allows.
- The first/last counts cannot be combined with the account-for flags (Megatron refuses).

Interleaved (virtual) pipeline, V model chunks per rank (get_transformer_layer_offset with a
vp_stage): the model is cut into PP x V virtual stages, in pipeline order v = chunk x PP + rank
(virtual stage (rank 0, chunk 0) first, (rank PP-1, chunk V-1) last; activations wrap from rank
PP-1 chunk c to rank 0 chunk c+1).
- Even and account-for splits: (num_layers + units) / (PP x V) units per virtual stage, the
  first (last) virtual stage one layer fewer; PP x V must divide num_layers + units. The
  reference case with 6 layers, PP4, VP2 and both account-for flags is 0,1,1,1,1,1,1,0: the
  first virtual stage holds only the embedding, the last only the loss.
- First/last counts: every pipeline rank's count (the rule above) is split evenly over its V
  chunks, so each must divide by V.

Two checks are goldtron's own, where Megatron would build a broken model without a word: with
no middle stage the first and last counts must add up to num_layers (Megatron drops the rest), and
a middle stage must get at least one layer (it would have no parameters at all).
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_FLAG = "--decoder-first-pipeline-num-layers"
LAST_FLAG = "--decoder-last-pipeline-num-layers"
EMBEDDING_FLAG = "--account-for-embedding-in-pipeline-split"
LOSS_FLAG = "--account-for-loss-in-pipeline-split"


@dataclass(frozen=True)
class PipelineSplit:
    """The flags that decide the split (argparse's dests of Megatron's flags)."""

    num_layers: int
    pp_size: int
    first: int | None = None
    last: int | None = None
    account_for_embedding: bool = False
    account_for_loss: bool = False
    virtual_stages: int = 1  # model chunks per pipeline rank (V); 1 = no interleaving


    @classmethod
    def from_args(cls, args) -> PipelineSplit:
        return cls(args.num_layers, args.pipeline_model_parallel_size,
                   args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers,
                   args.account_for_embedding_in_pipeline_split, args.account_for_loss_in_pipeline_split,
                   getattr(args, "virtual_pipeline_model_parallel_size", None) or 1)

    @property
    def uses_first_or_last(self) -> bool:
        return self.first is not None or self.last is not None

    @property
    def is_even(self) -> bool:
        return not (self.uses_first_or_last or self.account_for_embedding or self.account_for_loss)


def split_problems(split: PipelineSplit) -> list[str]:
    """Why this split is refused, one message per problem naming the flags and the fix; [] if valid."""
    problems = _rank_split_problems(split)
    if problems or split.virtual_stages == 1:
        return problems
    return _virtual_split_problems(split)


def _virtual_split_problems(split: PipelineSplit) -> list[str]:
    v, pp = split.virtual_stages, split.pp_size
    vp = f"{v} virtual stages per pipeline rank"
    if split.uses_first_or_last:
        counts = _first_last_counts(split)
        if any(c % v for c in counts):
            return [f"{FIRST_FLAG} / {LAST_FLAG} with {vp}: each pipeline rank's layers are split evenly over its "
                    f"{v} model chunks (Megatron's rule), but the ranks get {','.join(map(str, counts))} layers, "
                    f"not all divisible by {v}. Choose counts that divide by {v}, or another virtual size."]
        return []
    units = split.num_layers + split.account_for_embedding + split.account_for_loss
    if units % (pp * v):
        counted = f" plus the {units - split.num_layers} accounted unit(s), {units}," if units > split.num_layers else ""
        return [f"--num-layers {split.num_layers}{counted} does not split evenly over "
                f"--pipeline-model-parallel-size {pp} x {vp} = {pp * v} virtual stages (Megatron's rule: the layers "
                f"per pipeline rank must divide by the virtual size). Choose --num-layers, PP or the virtual size so "
                f"that {pp * v} divides {units}."]
    return []


def _rank_split_problems(split: PipelineSplit) -> list[str]:
    n, pp = split.num_layers, split.pp_size
    if split.uses_first_or_last and (split.account_for_embedding or split.account_for_loss):
        return [f"{FIRST_FLAG} / {LAST_FLAG} cannot be combined with {EMBEDDING_FLAG} or {LOSS_FLAG} "
                "(Megatron refuses this too): give the first/last stage's layer count directly, or use the "
                "account-for flags alone."]
    if split.uses_first_or_last:
        return _first_last_problems(split)
    if split.account_for_embedding or split.account_for_loss:
        units = n + split.account_for_embedding + split.account_for_loss
        if units % pp:
            given = " and ".join(f for f, on in ((EMBEDDING_FLAG, split.account_for_embedding),
                                                  (LOSS_FLAG, split.account_for_loss)) if on)
            return [f"{given}: --num-layers {n} plus the {units - n} accounted unit(s) is {units}, which is not "
                    f"divisible by --pipeline-model-parallel-size {pp} (Megatron's rule). Choose --num-layers so "
                    f"that {units - n} + num_layers divides by {pp}, or change PP."]
        return []
    if n % pp:
        return [f"--num-layers {n} is not divisible by --pipeline-model-parallel-size {pp}: without "
                f"{FIRST_FLAG}/{LAST_FLAG} or the account-for flags every pipeline stage gets the same number "
                "of layers. Choose a PP size that divides it, or give an uneven split with those flags."]
    return []


def _first_last_problems(split: PipelineSplit) -> list[str]:
    n, pp = split.num_layers, split.pp_size
    problems = []
    for flag, value in ((FIRST_FLAG, split.first), (LAST_FLAG, split.last)):
        if value is not None and value <= 0:
            problems.append(f"{flag} {value}: must be larger than 0 (as in Megatron).")
    if pp == 1:
        problems.append(f"{FIRST_FLAG} / {LAST_FLAG} split layers between pipeline stages, but "
                        "--pipeline-model-parallel-size is 1. Drop them, or use PP >= 2.")
    if problems:
        return problems
    middle_stages = pp - (split.first is not None) - (split.last is not None)
    middle_layers = n - (split.first or 0) - (split.last or 0)
    given = " + ".join(f"{flag} {value}" for flag, value in ((FIRST_FLAG, split.first), (LAST_FLAG, split.last))
                       if value is not None)
    if middle_layers < 0:
        return [f"{given} is more than --num-layers {n}. Lower them."]
    if middle_stages == 0 and middle_layers:
        return [f"{given} leave {middle_layers} of --num-layers {n} on no stage (PP {pp} has no other stage; "
                f"Megatron would drop them silently). Make them add up to {n}."]
    if middle_stages and middle_layers % middle_stages:
        return [f"{given} leave {middle_layers} layers for the other {middle_stages} pipeline stage(s), which "
                f"is not divisible (Megatron's rule: the rest is split evenly). Choose counts so that "
                f"{n} - first - last divides by {middle_stages}."]
    if middle_stages and middle_layers == 0:
        return [f"{given} leave no layer for the other {middle_stages} pipeline stage(s); such a stage would "
                "hold no parameters. Lower the first/last counts or the PP size."]
    return []


def virtual_stage_layer_counts(split: PipelineSplit) -> list[int]:
    """Transformer layers per virtual stage, in pipeline order (chunk x PP + rank); without
    interleaving, per stage. The split must be valid."""
    pp, v = split.pp_size, split.virtual_stages
    if split.uses_first_or_last:
        return [count // v for count in _first_last_counts(split)] * v
    units = split.num_layers + split.account_for_embedding + split.account_for_loss
    counts = [units // (pp * v)] * (pp * v)
    counts[0] -= split.account_for_embedding
    counts[-1] -= split.account_for_loss
    return counts


def stage_layer_counts(split: PipelineSplit) -> list[int]:
    """Transformer layers per pipeline rank (all its chunks), first to last (the split must be valid)."""
    counts = virtual_stage_layer_counts(split)
    pp = split.pp_size
    return [sum(counts[rank::pp]) for rank in range(pp)]


def _first_last_counts(split: PipelineSplit) -> list[int]:
    """Layers per pipeline rank under --decoder-first/last-pipeline-num-layers."""
    pp = split.pp_size
    middle_stages = pp - (split.first is not None) - (split.last is not None)
    middle_layers = split.num_layers - (split.first or 0) - (split.last or 0)
    counts = [middle_layers // middle_stages if middle_stages else 0] * pp
    if split.first is not None:
        counts[0] = split.first
    if split.last is not None:
        counts[-1] = split.last
    return counts


def stage_layer_range(split: PipelineSplit, pp_rank: int, chunk: int = 0) -> range:
    """The global indices of the layers that model chunk `chunk` of pipeline rank `pp_rank` holds."""
    counts = virtual_stage_layer_counts(split)
    stage = chunk * split.pp_size + pp_rank
    start = sum(counts[:stage])
    return range(start, start + counts[stage])


def describe_split(split: PipelineSplit) -> str:
    """e.g. '1,3,3,1 layers per stage' (for messages and logs); with interleaving, per virtual stage."""
    if split.virtual_stages > 1:
        return ",".join(str(c) for c in virtual_stage_layer_counts(split)) + " layers per virtual stage"
    return ",".join(str(c) for c in stage_layer_counts(split)) + " layers per stage"
