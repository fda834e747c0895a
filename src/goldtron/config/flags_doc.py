"""Renders docs/flags.md from the parser and the Megatron tables, so the docs cannot drift.

Regenerate after changing a flag:  python -m goldtron.config.flags_doc > docs/flags.md
(tests/unit/test_cli_surface.py fails while the file differs from this rendering).
"""

from __future__ import annotations

import argparse

from goldtron.config.megatron_flags import NO_EFFECT_FLAGS, UNIMPLEMENTED_FLAGS, UNIMPLEMENTED_PREFIXES
from goldtron.config.parser import build_parser

INTRO = """\
# `goldtron train` flags

goldtron takes Megatron-LM's flag names, meanings and defaults, so a Megatron `model_config.yaml`
runs unchanged where the features exist. `goldtron.arguments.parse_args(argv, world_size)` parses
and validates them into one `argparse.Namespace` (attribute = argparse dest: `--num-layers` ->
`args.num_layers`). Bad input raises `ConfigError` naming the flag and the fix, on every rank,
before any process group exists, so a bad run exits instead of hanging.

This file is generated: `python -m goldtron.config.flags_doc > docs/flags.md`.

## Where goldtron differs from Megatron on purpose

- `--transformer-impl` defaults to `local`, the only implementation (Megatron's default is
  `transformer_engine`). `transformer_engine` is an error that says whether TE is installed; the
  gate's per-platform overrides pass `--transformer-impl local`.
- `--distributed-backend` defaults to `nccl` when CUDA is available, else `gloo`. `nccl` without
  CUDA is an error.
- `--torch-threads N` (goldtron only): intra-op threads per rank, default
  `max(1, cpu_count // LOCAL_WORLD_SIZE)`. A different thread count gives different floating-point
  bits on CPU, so pin it when comparing runs bit for bit.
- No `--data-path` and no `--mock-data`: training runs on goldtron's embedded corpus (real English
  text, GPT-2 BPE), built on first use (see docs/data.md).
- `--tokenizer-type` is inferred when absent: `NullTokenizer` if `--vocab-size` is given without BPE
  files (with `--mock-data` or `--data-path`), otherwise `GPT2BPETokenizer` (GPT-2's own BPE files,
  shipped with the package, when `--vocab-file`/`--merge-file` are not given).
- `--mock-data` wins over `--data-path` (as in Megatron: the prefix is then not read).
- `--save-interval` without `--save` saves nothing, with a warning (Megatron accepts it silently).
  Both `--use-checkpoint-opt_param-scheduler` and `--override-opt_param-scheduler` are an error.
- `--rerun-mode validate_results` (Megatron's default) re-runs a step whose loss is NaN/Inf in place
  and stops with Megatron's exit code, 17 (not reproducible: a transient fault) or 16 (reproducible);
  Megatron then also writes a diagnostic checkpoint and, resumed, re-runs the step on another GPU to
  tell a persistent fault from a correct result. goldtron writes no diagnostic checkpoint and has no
  second device to move to: the person resumes from `--save`'s last checkpoint elsewhere.
  `report_determinism_stats` (newer Megatron: `report_stats`) re-runs every step once from the same
  random state and logs the loss difference at each log line; `disabled` checks nothing.
  `--error-injection-rate N` / `--error-injection-type` test the machinery as Megatron's do.
- `--cuda-graph-impl` other than `none` is an error (on a CPU: no CUDA device to capture graphs on).
- `--sequence-parallel` is switched off at TP 1 with Megatron's warning, as Megatron does; above
  it the sequence length must divide by TP ([sequence_parallel.md](sequence_parallel.md)).
- `--context-parallel-size` needs a sequence length divisible by 2 x CP; `--cp-comm-type` a2a needs
  heads / TP divisible by CP, a2a+p2p two `--hierarchical-context-parallel-sizes` multiplying to CP;
  attention dropout is refused under CP ([context_parallel.md](context_parallel.md)).

## Derived fields

`world_size`, `data_parallel_size` (= world / (TP x PP)), `num_micro_batches`
(= global batch / (micro batch x DP)), `ffn_hidden_size` (default 4 x hidden; with `--swiglu`
Megatron's int(4 x hidden x 2/3 / 64) x 64), `kv_channels`
(default hidden / heads), `params_dtype` (`torch.bfloat16` with `--bf16`, else `torch.float32`),
`lr_decay_iters` (default `--train-iters`), and the LR schedule in samples as Megatron counts it:
`lr_decay_samples = lr_decay_iters x global batch`; `lr_warmup_samples = lr_warmup_fraction x
lr_decay_samples`, or `lr_warmup_iters x global batch`. With `--train-samples` (Megatron's
sample-based training; `sample_based_training` is then true) `train_iters = train_samples //
global batch`, `lr_decay_samples` is `--lr-decay-samples` (default `--train-samples`),
`lr_warmup_samples` is `--lr-warmup-samples` or the fraction of the decay, and `lr_decay_iters` is
None. As in Megatron the two units never mix: `--train-iters` refuses `--lr-decay-samples` and a
non-zero `--lr-warmup-samples`, `--train-samples` refuses `--train-iters`, `--lr-decay-iters` and a
non-zero `--lr-warmup-iters`. `config_warnings`: valid input that changes nothing, printed by rank 0.
Which of Megatron's own dense GPT cases these flags accept: [megatron_cases.md](megatron_cases.md).
`virtual_pipeline_model_parallel_size`: model chunks per pipeline rank from
`--num-virtual-stages-per-pipeline-rank` or `--num-layers-per-virtual-pipeline-stage`, None
without interleaving (one chunk, as Megatron); `microbatch_group_size_per_vp_stage` defaults to PP
with it (docs/virtual_pipeline.md).
`position_embedding_type` is `rope` with `--use-rotary-position-embeddings` (Megatron's legacy
flag); `rotary_dim` = int(kv_channels x rotary_percent), the channels of each head RoPE rotates.
`num_query_groups` is the number of key/value heads: `--num-query-groups` with
`--group-query-attention`, else the head count (Megatron's TransformerConfig; `--num-query-groups`
alone is ignored, as there). `norm_epsilon` and `layernorm_epsilon` hold one value: `--norm-epsilon`
(Megatron's name) or `--layernorm-epsilon`, default 1e-5. `--apply-query-key-layer-scaling` sets
`attention_softmax_in_fp32`, as Megatron does.
`padded_vocab_size(V, make_vocab_size_divisible_by, TP)` = ceil(V / (d x TP)) x d x TP
(GPT-2 50257: 50304 at TP1, 50432 at TP2, 50688 at TP4).
"""


def _default_text(action: argparse.Action) -> str:
    if action.default is None:
        return "-"
    if action.nargs == 0 and isinstance(action.default, bool):
        return "off"  # a switch not given (store_false switches too, e.g. --disable-bias-linear)
    return f"`{action.default}`"


def _implemented_sections(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:  # argparse keeps groups only here
        if group.title.startswith("accepted with no effect") or not group._group_actions:
            continue
        if group.title in ("positional arguments", "options", "optional arguments"):
            continue
        lines += [f"### {group.title}", "", "| flag | default | meaning |", "|---|---|---|"]
        for action in group._group_actions:
            flag = action.option_strings[0]
            value = "" if action.nargs == 0 else (" V [V ...]" if action.nargs == "+" else " V")
            meaning = (action.help or "").replace("%%", "%")
            if action.choices:
                meaning = (meaning + "; " if meaning else "") + "choices: " + ", ".join(map(str, action.choices))
            lines.append(f"| `{flag}{value}` | {_default_text(action)} | {meaning} |")
        lines.append("")
    return lines


def render_flags_markdown() -> str:
    lines = INTRO.splitlines() + ["", "## Implemented flags", ""]
    lines += _implemented_sections(build_parser())
    lines += ["## Accepted with no effect", "",
              "Megatron flags that cannot change what goldtron computes. They are accepted so Megatron",
              "test cases run unchanged; the table says why each is harmless.", "",
              "| flag | why it has no effect here |", "|---|---|"]
    for entry in NO_EFFECT_FLAGS:
        value = "" if entry.value_type is None else " V"
        lines.append(f"| `{entry.flag}{value}` | {entry.reason} |")
    lines += ["", "## Megatron flags goldtron refuses", "",
              "These name Megatron features goldtron does not have; passing one is a `ConfigError`",
              "naming it. So are Megatron values of implemented flags other than the ones listed above",
              "(e.g. `--position-embedding-type mrope`, `--optimizer sgd`, `--fp16`). Any other",
              "unknown flag is refused as unknown.", "", "| flag | Megatron feature |", "|---|---|"]
    for flag, feature in UNIMPLEMENTED_FLAGS.items():
        lines.append(f"| `{flag}` | {feature} |")
    for prefix, feature in UNIMPLEMENTED_PREFIXES.items():
        lines.append(f"| `{prefix}*` | {feature} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_flags_markdown(), end="")
