"""Which of Megatron's own reference cases goldtron's trainer accepts, flag for flag.

Each case's MODEL_ARGS go through `goldtron train`'s validation as on a DGX node (8 GPUs, the
world size Megatron runs them with), with the one substitution every goldtron GPU platform makes:
`--transformer-impl local`. The accepted set is written out so that a change that starts refusing
a flag of a case that ran (or newly accepts one) shows up here; the refused cases must name the
flags they are refused for.
"""

from __future__ import annotations

import pytest

from goldtron.arguments import ConfigError, parse_args
from goldtron.config.validation import MachineFacts
from goldtron.gate.case import find_cases, load_case, model_args_to_argv

from .conftest import reference_dir

DGX_NODE = MachineFacts(cuda_available=True, transformer_engine_installed=False, cpu_count=128,
                        local_world_size=8, cuda_device_count=8)
PLACES = {"TENSORBOARD_PATH": "/tb", "CHECKPOINT_SAVE_PATH": "/ck", "CHECKPOINT_LOAD_PATH": "/ck",
          "DATA_PATH": "/data", "DATA_CACHE_PATH": "/cache"}

ACCEPTED = {
    "gpt3_mcore_te_tp1_pp1_frozen_resume_torch_dist_dist_optimizer",
    "gpt3_mcore_te_tp1_pp1_resume_torch_dist_dist_optimizer",
    "gpt3_mcore_te_tp1_pp1_resume_torch_dist_dist_optimizer_no_mmap_bin_files",
    "gpt3_mcore_te_tp1_pp1_resume_torch_dist_uniform_full_recompute_1node",
    "gpt3_mcore_te_tp1_pp2_cp4_a2a_p2p_nondeterministic",
    "gpt3_mcore_te_tp1_pp2_resume_torch_dist_rope_embeddings",
    "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_calculate_per_token_loss_1node",
    "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_dist_optimizer_overlap_grad_reduce_1node",
    "gpt3_mcore_te_tp1_pp4_vp1_resume_torch_dist_dist_optimizer_overlap_grad_reduce_untied",
    "gpt3_mcore_te_tp1_pp4_vp1_tunable_overlap",
    "gpt3_mcore_te_tp1_pp4_vp1_uneven_pipeline",
    "gpt3_mcore_te_tp1_pp4_vp2_account_for_embedding_loss_in_pipeline_split",
    "gpt3_mcore_te_tp1_pp4_frozen_resume_torch_dist_swiglu",
    "gpt3_mcore_te_tp2_pp1_cp2_nondeterministic",
    "gpt3_mcore_te_tp2_pp1_frozen_resume_torch_dist_cp2_nondeterministic",
    "gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute",
    "gpt3_mcore_te_tp4_pp2_frozen_resume_torch_dist_reshard_8x1xNone",
}
# What the others still need, one feature each is enough to be refused.
REFUSED_FOR = {
    "gpt3_mcore_te_tp2_pp1_frozen_resume_torch_dist_te_8experts2parallel_dist_optimizer": "--num-experts",
    "gpt3_mcore_te_tp2_pp1_frozen_resume_torch_dist_te_8experts2parallel_groupedGEMM": "--num-experts",
}


def _trainer_argv(case) -> list[str]:
    model_args = dict(case.model_args, **{"--transformer-impl": "local"})
    return model_args_to_argv(model_args, PLACES, str(case.config_file))


def test_reference_cases_accepted_and_refused_by_name():
    accepted, refused = set(), {}
    for case_dir in find_cases(reference_dir()):
        case = load_case(case_dir)
        try:
            parse_args(_trainer_argv(case), world_size=8, machine=DGX_NODE)
            accepted.add(case.name)
        except ConfigError as error:
            refused[case.name] = str(error)
    assert accepted == ACCEPTED
    assert set(refused) == set(REFUSED_FOR)
    for name, flag in REFUSED_FOR.items():
        assert flag in refused[name], f"{name}: expected {flag} in: {refused[name]}"


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_reference_cases_keep_megatron_layout(name):
    """The accepted cases are taken with their own layout, not a rewritten one."""
    case = load_case(reference_dir() / name)
    args = parse_args(_trainer_argv(case), world_size=8, machine=DGX_NODE)
    assert args.tensor_model_parallel_size == case.int_arg("--tensor-model-parallel-size", 1)
    assert args.pipeline_model_parallel_size == case.int_arg("--pipeline-model-parallel-size", 1)
    assert args.context_parallel_size == case.int_arg("--context-parallel-size", 1)
    assert args.data_parallel_size == 8 // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size
                                            * args.context_parallel_size)
