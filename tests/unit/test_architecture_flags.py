"""The model-architecture flags: --position-embedding-type rope (--rotary-percent, --rotary-base,
legacy --use-rotary-position-embeddings), --swiglu and --disable-bias-linear: Megatron's names,
defaults and derived sizes, and bad values refused with the flag and the fix."""

import pytest

from unit.test_arguments import config_error, parse


def test_defaults_are_megatrons():
    args = parse()
    assert args.position_embedding_type == "learned_absolute" and args.rotary_dim is None
    assert (args.rotary_percent, args.rotary_base) == (1.0, 10000)
    assert args.swiglu is False and args.add_bias_linear is True
    assert args.ffn_hidden_size == 4 * 128


def test_rope_rotates_kv_channels_times_percent():
    assert parse({"--position-embedding-type": "rope"}).rotary_dim == 32  # hidden 128 / 4 heads
    args = parse({"--position-embedding-type": "rope", "--rotary-percent": 0.5, "--rotary-base": 500000})
    assert (args.rotary_dim, args.rotary_base) == (16, 500000)


def test_rotary_interleaved_is_megatrons_flag():
    assert parse({"--position-embedding-type": "rope"}).rotary_interleaved is False
    assert parse({"--position-embedding-type": "rope", "--rotary-interleaved": True}).rotary_interleaved is True


def test_legacy_rotary_flag_means_rope():
    assert parse({"--use-rotary-position-embeddings": True}).position_embedding_type == "rope"


def test_swiglu_default_ffn_size_is_megatrons():
    assert parse({"--swiglu": True}).ffn_hidden_size == 320  # int((4 * 128 * 2 / 3) / 64) * 64
    assert parse({"--swiglu": True, "--hidden-size": 512, "--num-attention-heads": 8}).ffn_hidden_size == 1344
    assert parse({"--swiglu": True, "--ffn-hidden-size": 100}).ffn_hidden_size == 100


def test_disable_bias_linear_uses_megatrons_dest():
    assert parse({"--disable-bias-linear": True}).add_bias_linear is False


@pytest.mark.parametrize("percent", ["0", "-0.5", "1.5"])
def test_rotary_percent_outside_zero_one_is_refused(percent):
    message = config_error({"--position-embedding-type": "rope", "--rotary-percent": percent})
    assert f"--rotary-percent {float(percent)}" in message and "(0, 1]" in message


@pytest.mark.parametrize("percent, dim", [("0.03", 0), ("0.1", 3)])
def test_odd_or_empty_rotary_dim_is_refused(percent, dim):
    message = config_error({"--position-embedding-type": "rope", "--rotary-percent": percent})
    assert f"--rotary-percent {percent}" in message and f"rotary dim of {dim}" in message and "even" in message


def test_rotary_base_must_be_positive():
    assert "--rotary-base 0: must be a positive integer" in config_error({"--rotary-base": 0})


def test_swiglu_ffn_must_split_over_tp():
    message = config_error({"--swiglu": True, "--hidden-size": 96, "--num-attention-heads": 6,
                            "--tensor-model-parallel-size": 3}, world_size=3)
    assert "--ffn-hidden-size 256 is not divisible by --tensor-model-parallel-size 3" in message


def test_swiglu_default_width_of_zero_is_refused():
    message = config_error({"--swiglu": True, "--hidden-size": 16})
    assert "--swiglu with --hidden-size 16" in message and "give --ffn-hidden-size" in message
