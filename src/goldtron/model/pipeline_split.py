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

    @classmethod
    def from_args(cls, args) -> PipelineSplit:
        return cls(args.num_layers, args.pipeline_model_parallel_size,
                   args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers,
                   args.account_for_embedding_in_pipeline_split, args.account_for_loss_in_pipeline_split)

    @property
    def uses_first_or_last(self) -> bool:
        return self.first is not None or self.last is not None

    @property
    def is_even(self) -> bool:
        return not (self.uses_first_or_last or self.account_for_embedding or self.account_for_loss)


def split_problems(split: PipelineSplit) -> list[str]:
    """Why this split is refused, one message per problem naming the flags and the fix; [] if valid."""
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


def stage_layer_counts(split: PipelineSplit) -> list[int]:
    """Transformer layers per stage, first to last (the split must be valid)."""
    pp = split.pp_size
    if split.uses_first_or_last:
        middle_stages = pp - (split.first is not None) - (split.last is not None)
        middle_layers = split.num_layers - (split.first or 0) - (split.last or 0)
        counts = [middle_layers // middle_stages if middle_stages else 0] * pp
        if split.first is not None:
            counts[0] = split.first
        if split.last is not None:
            counts[-1] = split.last
        return counts
    units = split.num_layers + split.account_for_embedding + split.account_for_loss
    counts = [units // pp] * pp
    counts[0] -= split.account_for_embedding
    counts[-1] -= split.account_for_loss
    return counts


def stage_layer_range(split: PipelineSplit, pp_rank: int) -> range:
    """The global indices of the layers that stage `pp_rank` holds."""
    counts = stage_layer_counts(split)
    start = sum(counts[:pp_rank])
    return range(start, start + counts[pp_rank])


def describe_split(split: PipelineSplit) -> str:
    """e.g. '1,3,3,1 layers per stage' (for messages and logs)."""
    return ",".join(str(c) for c in stage_layer_counts(split)) + " layers per stage"
