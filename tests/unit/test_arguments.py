"""goldtron.arguments: Megatron flags -> validated Namespace, every rule and its message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from goldtron.arguments import ConfigError, args_to_dict, machine_facts, padded_vocab_size, parse_args
from goldtron.config.megatron_flags import NO_EFFECT_FLAGS, UNIMPLEMENTED_FLAGS
from goldtron.config.validation import MachineFacts

# A fixed machine so results do not depend on where the tests run.
CPU_MACHINE = MachineFacts(cuda_available=False, transformer_engine_installed=False, cpu_count=2, local_world_size=1)
GPU_MACHINE = MachineFacts(cuda_available=True, transformer_engine_installed=True, cpu_count=16, local_world_size=8)

MEGATRON_CASES = Path("/work/shared/reference/megatron")

BASE = {
    "--num-layers": "4",
    "--hidden-size": "128",
    "--num-attention-heads": "4",
    "--seq-length": "256",
    "--max-position-embeddings": "256",
    "--micro-batch-size": "2",
    "--global-batch-size": "8",
    "--train-iters": "10",
    "--lr": "1e-4",
    "--vocab-size": "50257",
}


def make_argv(changes: dict | None = None, extra: list[str] | None = None) -> list[str]:
    """BASE with flags changed plus `extra`: None removes a flag, True is a bare switch, a list is nargs."""
    merged = dict(BASE, **{"--mock-data": True})
    merged.update(changes or {})
    argv: list[str] = []
    for flag, value in merged.items():
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv + list(extra or [])


def parse(changes=None, extra=None, world_size=1, machine=CPU_MACHINE):
    return parse_args(make_argv(changes, extra), world_size=world_size, machine=machine)


def config_error(changes=None, extra=None, world_size=1, machine=CPU_MACHINE) -> str:
    with pytest.raises(ConfigError) as info:
        parse(changes, extra, world_size, machine)
    return str(info.value)


# --- derived fields -----------------------------------------------------------------------------

def test_layout_and_batch_are_derived():
    args = parse({"--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2,
                  "--global-batch-size": 32, "--micro-batch-size": 4}, world_size=8)
    assert args.world_size == 8
    assert args.data_parallel_size == 2
    assert args.num_micro_batches == 32 // (4 * 2)


def test_model_shape_defaults_follow_megatron():
    args = parse()
    assert args.ffn_hidden_size == 4 * 128
    assert args.kv_channels == 128 // 4
    explicit = parse({"--ffn-hidden-size": 300, "--kv-channels": 16})
    assert (explicit.ffn_hidden_size, explicit.kv_channels) == (300, 16)


def test_global_batch_defaults_to_one_micro_batch_per_dp_rank():
    args = parse({"--global-batch-size": None, "--micro-batch-size": 3}, world_size=4)
    assert args.global_batch_size == 12 and args.num_micro_batches == 1


def test_params_dtype_follows_bf16():
    assert parse().params_dtype == torch.float32
    assert parse({"--bf16": True}).params_dtype == torch.bfloat16


def test_megatron_defaults():
    args = parse()
    expected = {
        "hidden_dropout": 0.1, "attention_dropout": 0.1, "init_method_std": 0.02, "layernorm_epsilon": 1e-5,
        "make_vocab_size_divisible_by": 128, "seed": 1234, "min_lr": 0.0, "lr_decay_style": "linear",
        "lr_warmup_iters": 0, "weight_decay": 0.01, "clip_grad": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_eps": 1e-8, "log_interval": 100, "tensorboard_log_interval": 1, "eval_interval": 1000,
        "eval_iters": 100, "wgrad_deferral_limit": 0, "distributed_timeout_minutes": 10,
        "ckpt_format": "torch_dist", "dist_ckpt_strictness": "assume_ok_unexpected", "split": "969,30,1",
        "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "timing_log_level": 0,
        "transformer_impl": "local",  # Megatron's is transformer_engine; goldtron implements only local
    }
    assert {name: getattr(args, name) for name in expected} == expected


def test_backend_default_depends_on_cuda():
    assert parse().distributed_backend == "gloo"
    assert parse(machine=GPU_MACHINE).distributed_backend == "nccl"


def test_nccl_needs_one_gpu_per_local_rank():
    # The flagship (TP2 x PP2) started on a one-GPU machine: four ranks, one GPU.
    one_gpu = MachineFacts(cuda_available=True, transformer_engine_installed=False, cpu_count=16,
                           local_world_size=4, cuda_device_count=1)
    layout = {"--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2, "--distributed-backend": "nccl"}
    message = config_error(layout, world_size=4, machine=one_gpu)
    for fragment in ("4 ranks on this node", "1 visible GPU", "one GPU per rank", "--nproc-per-node"):
        assert fragment in message, f"{fragment!r} missing from: {message}"
    four_gpus = MachineFacts(cuda_available=True, transformer_engine_installed=False, cpu_count=16,
                             local_world_size=4, cuda_device_count=4)
    assert parse(layout, world_size=4, machine=four_gpus).distributed_backend == "nccl"


def test_torch_threads_default_and_flag():
    assert parse().torch_threads == 2  # 2 cpus / 1 local rank
    assert parse(machine=GPU_MACHINE).torch_threads == 2  # 16 cpus / 8 local ranks
    crowded = MachineFacts(cuda_available=False, transformer_engine_installed=False, cpu_count=2, local_world_size=4)
    assert parse(machine=crowded).torch_threads == 1  # never below one thread
    assert parse({"--torch-threads": 3}).torch_threads == 3


def test_tokenizer_type_is_inferred():
    assert parse().tokenizer_type == "NullTokenizer"
    bpe = parse({"--vocab-size": None, "--vocab-file": "v.json", "--merge-file": "m.txt"})
    assert bpe.tokenizer_type == "GPT2BPETokenizer"


# --- LR schedule in samples ---------------------------------------------------------------------

def test_lr_schedule_from_warmup_fraction_as_megatron_yaml_writes_it():
    # The seed case's values, written exactly as its model_config.yaml writes them.
    args = parse({"--lr": "0.00015", "--min-lr": "1.0e-5", "--weight-decay": "1e-2", "--lr-warmup-fraction": ".01",
                  "--lr-decay-iters": 320000, "--global-batch-size": 32, "--micro-batch-size": 4,
                  "--train-iters": 100, "--lr-decay-style": "cosine"})
    assert (args.lr, args.min_lr, args.weight_decay, args.lr_warmup_fraction) == (0.00015, 1e-5, 0.01, 0.01)
    assert args.lr_decay_samples == 320000 * 32
    # 0.01 * 10240000 in float64: tolerance covers only the representation error of 0.01.
    assert math.isclose(args.lr_warmup_samples, 102400, rel_tol=1e-12)


def test_lr_schedule_from_warmup_iters_and_default_decay():
    args = parse({"--lr-warmup-iters": 3, "--train-iters": 10, "--global-batch-size": 8})
    assert args.lr_decay_iters == 10
    assert args.lr_decay_samples == 80
    assert args.lr_warmup_samples == 24


# --- vocab padding ------------------------------------------------------------------------------

@pytest.mark.parametrize("tp, padded", [(1, 50304), (2, 50432), (4, 50688)])
def test_padded_vocab_size_gpt2(tp, padded):
    assert padded_vocab_size(50257, 128, tp) == padded


def test_padded_vocab_size_keeps_exact_multiples_and_refuses_nonsense():
    assert padded_vocab_size(256, 128, 2) == 256
    assert padded_vocab_size(257, 1, 1) == 257
    with pytest.raises(ConfigError, match="tp_size"):
        padded_vocab_size(50257, 128, 0)


# --- validation rules: each message names the flag(s) and the fix --------------------------------

RULES = [
    pytest.param({"--tensor-model-parallel-size": 2, "--pipeline-model-parallel-size": 2}, 6,
                 ["world size 6", "--tensor-model-parallel-size 2", "--pipeline-model-parallel-size 2", "multiple of 4"],
                 id="world-not-tp-pp-dp"),
    pytest.param({"--num-attention-heads": 4, "--hidden-size": 96, "--tensor-model-parallel-size": 3}, 3,
                 ["--num-attention-heads 4", "--tensor-model-parallel-size 3", "divides"], id="heads-tp"),
    pytest.param({"--num-layers": 3, "--pipeline-model-parallel-size": 2}, 2,
                 ["--num-layers 3", "--pipeline-model-parallel-size 2"], id="layers-pp"),
    pytest.param({"--global-batch-size": 10, "--micro-batch-size": 2}, 2,
                 ["--global-batch-size 10", "--micro-batch-size 2", "multiple of 4"], id="batch-micro-dp"),
    pytest.param({"--seq-length": 512}, 1,
                 ["--seq-length 512", "--max-position-embeddings 256", "at least 512"], id="seq-gt-positions"),
    pytest.param({"--distributed-backend": "mpi"}, 1, ["--distributed-backend mpi", "nccl", "gloo"], id="backend"),
    pytest.param({"--distributed-backend": "nccl"}, 1, ["--distributed-backend nccl", "CUDA", "Use --distributed-backend gloo"],
                 id="nccl-without-cuda"),
    pytest.param({"--defer-embedding-wgrad-compute": True}, 1,
                 ["--defer-embedding-wgrad-compute", "--pipeline-model-parallel-size > 1"], id="defer-needs-pp"),
    pytest.param({"--wgrad-deferral-limit": -1}, 1, ["--wgrad-deferral-limit -1", "negative"], id="deferral-limit"),
    pytest.param({"--num-layers": None, "--lr": None}, 1, ["missing required", "--num-layers N", "--lr LR"],
                 id="missing-required"),
    pytest.param({"--hidden-size": 130}, 1, ["--hidden-size 130", "--num-attention-heads 4", "--kv-channels"],
                 id="hidden-heads"),
    pytest.param({"--ffn-hidden-size": 301, "--tensor-model-parallel-size": 2}, 2,
                 ["--ffn-hidden-size 301", "--tensor-model-parallel-size 2"], id="ffn-tp"),
    pytest.param({"--min-lr": 1e-3}, 1, ["--min-lr", "--lr"], id="min-lr-above-lr"),
    pytest.param({"--lr-warmup-fraction": 0.1, "--lr-warmup-iters": 2}, 1,
                 ["--lr-warmup-fraction", "--lr-warmup-iters", "only one"], id="two-warmups"),
    pytest.param({"--lr-warmup-iters": 10}, 1, ["warmup", "--lr-decay-iters"], id="warmup-not-shorter"),
    pytest.param({"--use-checkpoint-opt_param-scheduler": True, "--override-opt_param-scheduler": True}, 1,
                 ["--use-checkpoint-opt_param-scheduler", "--override-opt_param-scheduler"], id="scheduler-source"),
    pytest.param({"--data-path": [0.5, "A", "B"]}, 1, ["--data-path", "weight-prefix pairs"],
                 id="odd-weighted-data-path"),
    pytest.param({"--data-path": ["heavy", "A", 0.5, "B"]}, 1, ["'heavy'", "not a non-negative weight"],
                 id="bad-data-path-weight"),
    pytest.param({"--split": "90,x"}, 1, ["--split", "949,50,1"], id="split"),
    pytest.param({"--tokenizer-type": "NullTokenizer", "--vocab-size": None}, 1, ["NullTokenizer", "--vocab-size V"],
                 id="null-tokenizer-needs-vocab-size"),
    pytest.param({"--vocab-size": None, "--vocab-file": "v.json"}, 1, ["GPT2BPETokenizer", "--merge-file"],
                 id="bpe-needs-merges"),
    pytest.param({"--micro-batch-size": 0}, 1, ["--micro-batch-size 0", "positive"], id="positive"),
    pytest.param({"--hidden-dropout": 1.5}, 1, ["--hidden-dropout 1.5", "between 0 and 1"], id="dropout-range"),
    pytest.param({"--num-layers": "four"}, 1, ["--num-layers", "invalid int value", "docs/flags.md"], id="bad-type"),
    pytest.param({"--lr-decay-style": "cosin"}, 1, ["--lr-decay-style", "invalid choice"], id="bad-choice"),
    pytest.param({"--fp16": True}, 1, ["--fp16", "not implemented", "--bf16"], id="fp16"),
    pytest.param({"--context-parallel-size": 2, "--seq-length": 250}, 2,
                 ["--seq-length 250", "2 x --context-parallel-size 2 = 4", "multiple of 4"], id="cp-seq-chunks"),
    pytest.param({"--context-parallel-size": 2, "--tensor-model-parallel-size": 4, "--sequence-parallel": True,
                  "--seq-length": 252, "--attention-dropout": 0}, 8,
                 ["--sequence-parallel", "126 positions", "multiple of 16"], id="cp-sp-seq"),
    pytest.param({"--context-parallel-size": 8, "--cp-comm-type": "a2a"}, 8,
                 ["--cp-comm-type a2a", "4 attention heads", "multiple of CP", "p2p"], id="cp-a2a-heads"),
    pytest.param({"--context-parallel-size": 4, "--cp-comm-type": "a2a+p2p"}, 4,
                 ["--hierarchical-context-parallel-sizes must be set when a2a+p2p", "2 2"], id="cp-a2a-p2p-sizes"),
    pytest.param({"--context-parallel-size": 4, "--cp-comm-type": "a2a+p2p",
                  "--hierarchical-context-parallel-sizes": ["2", "3"]}, 4,
                 ["--hierarchical-context-parallel-sizes 2 3", "multiply to 6", "product is 4"], id="cp-hierarchy-product"),
    pytest.param({"--context-parallel-size": 4, "--cp-comm-type": ["p2p", "a2a"]}, 4,
                 ["Length of cp_comm_type (2)", "transformer layers (4)"], id="cp-comm-type-per-layer"),
    pytest.param({"--context-parallel-size": 2, "--attention-dropout": 0.1}, 2,
                 ["--attention-dropout 0.1", "not implemented under context parallelism", "--attention-dropout 0"],
                 id="cp-attention-dropout"),
    pytest.param({"--context-parallel-size": 2}, 3,
                 ["world size 3", "--context-parallel-size 2", "multiple of 2"], id="world-not-cp"),
]


@pytest.mark.parametrize("changes, world_size, expected", RULES)
def test_validation_rule_message(changes, world_size, expected):
    message = config_error(changes, world_size=world_size)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_several_problems_are_reported_together():
    message = config_error({"--num-layers": 3, "--pipeline-model-parallel-size": 2, "--seq-length": 512}, world_size=2)
    assert "2 configuration problems" in message
    assert "--num-layers 3" in message and "--seq-length 512" in message


def test_sequence_parallel_is_dropped_at_tp1_with_megatrons_warning_and_kept_above():
    at_tp1 = parse({"--sequence-parallel": True})
    assert at_tp1.sequence_parallel is False
    assert any(w.startswith("Disabling sequence parallelism because tensor model parallelism is disabled")
               for w in at_tp1.config_warnings)
    at_tp2 = parse({"--sequence-parallel": True, "--tensor-model-parallel-size": 2}, world_size=2)
    assert at_tp2.sequence_parallel is True and at_tp2.config_warnings == []


def test_sequence_parallel_needs_a_sequence_that_divides_by_tp():
    message = config_error({"--sequence-parallel": True, "--tensor-model-parallel-size": 4, "--seq-length": 250},
                           world_size=4)
    assert "--sequence-parallel" in message and "--seq-length 250" in message
    assert "multiple of 4 (e.g. 248)" in message


def test_no_data_flags_mean_the_embedded_corpus_with_gpt2_bpe():
    args = parse({"--mock-data": None, "--vocab-size": None})
    assert args.data_path is None and not args.mock_data
    assert args.tokenizer_type == "GPT2BPETokenizer" and args.vocab_file is None


# --- flags goldtron does not implement as Megatron does -----------------------------------------

@pytest.mark.parametrize("te_installed, wording", [(False, "is not installed"), (True, "is installed")])
def test_transformer_engine_is_refused_honestly(te_installed, wording):
    machine = MachineFacts(cuda_available=False, transformer_engine_installed=te_installed, cpu_count=2,
                           local_world_size=1)
    message = config_error({"--transformer-impl": "transformer_engine"}, machine=machine)
    assert "--transformer-impl transformer_engine" in message
    assert wording in message and "--transformer-impl local" in message


@pytest.mark.parametrize("flag, value", [
    ("--position-embedding-type", "mrope"), ("--ckpt-format", "torch"),
    ("--optimizer", "sgd"), ("--lr-decay-style", "WSD"), ("--tokenizer-type", "HuggingFaceTokenizer"),
])
def test_unimplemented_megatron_values_are_refused(flag, value):
    message = config_error({flag: value})
    assert f"{flag} {value}" in message and "does not implement" in message


@pytest.mark.parametrize("flag", sorted(UNIMPLEMENTED_FLAGS) + ["--moe-router-topk", "--fp8-amax-history-len"])
def test_unimplemented_megatron_flags_are_refused_by_name(flag):
    message = config_error(extra=[flag, "2"])
    assert flag in message and "does not implement" in message


@pytest.mark.parametrize("flag", ["--num-layer", "--lr-warmup", "--frobnicate", "--num-layers-per-stage=2"])
def test_unknown_flags_and_abbreviations_are_refused(flag):
    message = config_error(extra=[flag, "5"])
    assert flag.split("=")[0] in message and "unknown flag" in message


def test_stray_positional_is_refused():
    assert "unexpected argument 'train'" in config_error(extra=["train"])


@pytest.mark.parametrize("entry", NO_EFFECT_FLAGS, ids=lambda e: e.flag)
def test_no_effect_flags_are_accepted(entry):
    if entry.value_type is None:
        extra = [entry.flag]
    else:
        extra = [entry.flag, entry.choices[0] if entry.choices else "2"]
    parse(extra=extra)  # no ConfigError is the assertion


# --- purity and serialisation -------------------------------------------------------------------

def test_parsing_is_pure_and_repeatable():
    argv = make_argv({"--bf16": True})
    before = list(argv)
    first = parse_args(argv, world_size=1, machine=CPU_MACHINE)
    second = parse_args(argv, world_size=1, machine=CPU_MACHINE)
    assert argv == before
    assert vars(first) == vars(second)
    assert not (dist.is_available() and dist.is_initialized())


def test_args_to_dict_is_json():
    args = parse({"--bf16": True}, extra=["--data-path", "A"])
    as_dict = json.loads(json.dumps(args_to_dict(args)))
    assert as_dict["params_dtype"] == "torch.bfloat16"
    assert as_dict["num_layers"] == 4 and as_dict["data_path"] == ["A"]
    assert set(as_dict) == set(vars(args))


def test_bad_world_size_and_environment_are_config_errors():
    with pytest.raises(ConfigError, match="world size"):
        parse(world_size=0)
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE"):
        machine_facts({"LOCAL_WORLD_SIZE": "two"})


# --- Megatron's own test cases ------------------------------------------------------------------

def megatron_model_args_argv(model_config: Path) -> tuple[list[str], int]:
    """A case's MODEL_ARGS as argv, placeholders filled, on goldtron's CPU path; and a world size."""
    yaml = pytest.importorskip("yaml")
    model_args = yaml.safe_load(model_config.read_text())["MODEL_ARGS"]
    model_args.update({"--transformer-impl": "local", "--distributed-backend": "gloo"})
    argv: list[str] = []
    for flag, value in model_args.items():
        if value is False:
            continue
        if value is True:
            argv.append(flag)
            continue
        text = str(value)
        for placeholder in ("TENSORBOARD_PATH", "CHECKPOINT_SAVE_PATH", "CHECKPOINT_LOAD_PATH", "DATA_PATH",
                            "DATA_CACHE_PATH"):
            text = text.replace("${" + placeholder + "}", f"/tmp/{placeholder.lower()}")
        argv += [flag, *(text.split() or [text])]  # the shell's word splitting in Megatron's launcher
    world_size = int(model_args.get("--tensor-model-parallel-size", 1)) * int(
        model_args.get("--pipeline-model-parallel-size", 1)) * int(model_args.get("--context-parallel-size", 1))
    return argv, world_size


def megatron_cases() -> list[Path]:
    return sorted(MEGATRON_CASES.glob("*/model_config.yaml")) if MEGATRON_CASES.is_dir() else []


@pytest.mark.parametrize("model_config", megatron_cases(), ids=lambda p: p.parent.name)
def test_megatron_case_parses_or_names_an_unimplemented_flag(model_config):
    argv, world_size = megatron_model_args_argv(model_config)
    try:
        parse_args(argv, world_size=world_size, machine=CPU_MACHINE)
    except ConfigError as error:
        assert "does not implement" in str(error), str(error)


def test_flagship_megatron_case_parses():
    model_config = MEGATRON_CASES / "gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute/model_config.yaml"
    if not model_config.is_file():
        pytest.skip(f"{MEGATRON_CASES} (Megatron's reference cases) is not on this machine")
    argv, world_size = megatron_model_args_argv(model_config)
    args = parse_args(argv, world_size=world_size * 2, machine=CPU_MACHINE)  # x DP2, as on 8 GPUs
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size) == (2, 2, 2)
    assert args.num_micro_batches == 4
    assert args.defer_embedding_wgrad_compute and args.wgrad_deferral_limit == 2
    assert args.tokenizer_type == "GPT2BPETokenizer" and args.params_dtype == torch.bfloat16


def test_megatron_cases_folder_present_or_skipped():
    if not megatron_cases():
        pytest.skip(f"{MEGATRON_CASES} (Megatron's reference cases) is not on this machine")
    assert len(megatron_cases()) >= 1


def test_padded_vocab_size_properties():
    from hypothesis import given, strategies as st

    @given(st.integers(1, 300_000), st.integers(1, 512), st.sampled_from([1, 2, 3, 4, 8]))
    def check(vocab, divisible_by, tp):
        padded = padded_vocab_size(vocab, divisible_by, tp)
        # The smallest multiple of divisible_by x TP that holds the vocab.
        assert padded % (divisible_by * tp) == 0
        assert vocab <= padded < vocab + divisible_by * tp

    check()
