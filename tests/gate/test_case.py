"""Case loading: Megatron's files parse unchanged; goldtron's extensions; named errors."""

from __future__ import annotations

import pytest
import yaml

from goldtron.gate import commands
from goldtron.gate.case import find_cases, load_case, model_args_to_argv
from goldtron.gate.errors import GateInputError
from goldtron.gate.launcher import FORK, TORCHRUN, LaunchOptions, choose_launcher, phase_argv, trainer_target
from goldtron.gate.platform import cpu_platform_name, gpu_platform_name
from goldtron.gate.runner import check_layout_fits, check_supported, default_nproc, prepare_resume, resume_step

from .conftest import reference_dir, write_case

PLACES = {"TENSORBOARD_PATH": "/tb", "CHECKPOINT_SAVE_PATH": "/ck", "CHECKPOINT_LOAD_PATH": "/ck",
          "DATA_PATH": "/data", "DATA_CACHE_PATH": "/cache"}


def test_every_reference_case_parses_and_builds_its_argv():
    cases = find_cases(reference_dir())
    assert len(cases) == 19
    for case_dir in cases:
        case = load_case(case_dir)
        assert case.test_type in ("regular", "ckpt-resume", "frozen-resume")
        argv = model_args_to_argv(case.model_args, PLACES, str(case.config_file))
        assert "--tensorboard-dir" in argv and "/tb" in argv and "${" not in " ".join(argv)
        assert case.metrics == ("lm loss", "num-zeros") and case.launcher == "ft_launcher"


def test_seed_case_details():
    case = load_case(reference_dir() / "gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute")
    argv = model_args_to_argv(case.model_args, PLACES, "x")
    assert argv[argv.index("--lr") + 1] == "0.00015" and argv[argv.index("--min-lr") + 1] == "1e-05"
    assert argv[argv.index("--dist-ckpt-strictness") + 1] == "log_all"  # the yaml comment is not part of it
    assert "--bf16" in argv and argv[argv.index("--bf16") + 1].startswith("--")  # bare flag
    assert argv[argv.index("--data-path") + 1].startswith("/data/text/")
    assert case.deterministic and resume_step(case) == 50
    assert default_nproc(case, gpu_count=0, nnodes=1) == 4 and default_nproc(case, gpu_count=8, nnodes=1) == 8


def test_nondeterministic_cases_are_marked():
    case = load_case(reference_dir() / "gpt3_mcore_te_tp2_pp1_cp2_nondeterministic")
    assert not case.deterministic


def test_cases_command_lists_reference_cases(capsys):
    assert commands.cases_main([str(reference_dir())]) == 0
    out = capsys.readouterr().out
    assert "gpt3_mcore_te_tp2_pp2_resume_torch_dist_defer_embedding_wgrad_compute" in out and "dev_dgx_h100_2nd" in out


def test_platform_override_by_longest_prefix(tmp_path):
    case = load_case(write_case(tmp_path / "c", extra_args={"--bf16": True}, goldtron={"PLATFORMS": {
        "cpu": {"MODEL_ARGS": {"--bf16": None, "--num-layers": 1}, "ENV_VARS": {"OMP_NUM_THREADS": 2}},
        "cpu_avx512": {"NPROC_PER_NODE": 4, "PHASE_TIMEOUT_S": 5}}}))
    avx512 = case.resolved_for("cpu_avx512")
    assert avx512.nproc_per_node == 4 and avx512.phase_timeout_s == 5 and "--bf16" in avx512.model_args
    avx2 = case.resolved_for("cpu_avx2")
    assert "--bf16" not in avx2.model_args and avx2.model_args["--num-layers"] == 1 and avx2.env_vars["OMP_NUM_THREADS"] == "2"
    assert case.resolved_for("dgx_h100") is case


def test_platform_names():
    assert gpu_platform_name("NVIDIA H100 80GB HBM3") == "dgx_h100"
    assert gpu_platform_name("NVIDIA GB200") == "dgx_gb200"
    assert gpu_platform_name("NVIDIA A100-SXM4-80GB") == "dgx_a100"
    assert gpu_platform_name("Tesla V100") == "gpu_tesla_v100"
    assert cpu_platform_name("AVX512") == "cpu_avx512"
    assert cpu_platform_name("AVX512", "intel") == "cpu_intel_avx512"


def test_trainer_targets(tmp_path):
    assert trainer_target(("python", "-m", "goldtron", "train"), tmp_path) == ["--module", "goldtron", "train"]
    (tmp_path / "pretrain_gpt.py").write_text("")
    assert trainer_target(("python", "pretrain_gpt.py"), tmp_path) == [str(tmp_path / "pretrain_gpt.py")]
    with pytest.raises(GateInputError, match="TRAINER"):
        trainer_target(("bash", "-c", "rm -rf /"), tmp_path)
    with pytest.raises(GateInputError, match="not found"):
        trainer_target(("python", "missing.py"), tmp_path)


def test_rendezvous_flags():
    assert LaunchOptions(2).rendezvous_flags(0) == ["--standalone"]
    flags = LaunchOptions(2, nnodes=2, node_rank=1, rdzv_endpoint="127.0.0.1:29400").rendezvous_flags(3)
    assert flags[-1] == "127.0.0.1:29403" and "static" in flags
    with pytest.raises(GateInputError, match="rdzv-endpoint"):
        LaunchOptions(2, nnodes=2)


def test_launcher_choice_forks_goldtrons_trainer_on_one_cpu_node_and_others_when_asked(tmp_path):
    ours, megatron = ("python", "-m", "goldtron", "train"), ("python", "pretrain_gpt.py")
    assert choose_launcher("auto", ours, nnodes=1, gpus=0) == FORK
    assert choose_launcher("auto", ours, nnodes=2, gpus=0) == TORCHRUN
    assert choose_launcher("auto", ours, nnodes=1, gpus=8) == TORCHRUN
    assert choose_launcher("auto", megatron, nnodes=1, gpus=0) == TORCHRUN
    assert choose_launcher("torchrun", ours, nnodes=1, gpus=0) == TORCHRUN
    assert choose_launcher("fork", megatron, nnodes=1, gpus=0) == FORK  # asked for by name
    with pytest.raises(GateInputError, match="--launcher 'spawn'"):
        choose_launcher("spawn", ours, nnodes=1, gpus=0)
    (tmp_path / "pretrain_gpt.py").write_text("")
    script = phase_argv((*megatron, "--fixed"), tmp_path, ["--num-layers", "2"], LaunchOptions(4, launcher=FORK), 0,
                        tmp_path / "ranks")
    assert script[-6:] == ["--script", str(tmp_path / "pretrain_gpt.py"), "--", "--fixed", "--num-layers", "2"]
    module = phase_argv(("python", "-m", "my.trainer", "train"), tmp_path, ["--num-layers", "2"],
                        LaunchOptions(4, launcher=FORK), 0, tmp_path / "ranks")
    assert module[-6:] == ["--module", "my.trainer", "--", "train", "--num-layers", "2"]
    with pytest.raises(GateInputError, match="TRAINER"):
        phase_argv(("bash", "train.sh"), tmp_path, [], LaunchOptions(4, launcher=FORK), 0, tmp_path / "ranks")
    with pytest.raises(GateInputError, match="one node"):
        LaunchOptions(2, nnodes=2, rdzv_endpoint="h:1", launcher=FORK)
    forked = phase_argv(ours, tmp_path, ["--num-layers", "2"], LaunchOptions(4, launcher=FORK), 0, tmp_path / "ranks")
    assert forked[1:] == ["-m", "goldtron", "launch", "--nproc-per-node", "4", "--log-dir", str(tmp_path / "ranks"),
                          "--", "--num-layers", "2"]
    by_torchrun = phase_argv(ours, tmp_path, ["--num-layers", "2"], LaunchOptions(4), 0, tmp_path / "ranks")
    assert by_torchrun[1:3] == ["-m", "torch.distributed.run"] and by_torchrun[-4:] == ["goldtron", "train",
                                                                                         "--num-layers", "2"]


def test_prepare_resume_drops_later_checkpoints(tmp_path):
    for step in (5, 10):
        (tmp_path / f"iter_{step:07d}").mkdir()
    prepare_resume(tmp_path, 5)
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "5"
    assert not (tmp_path / "iter_0000010").exists() and (tmp_path / "iter_0000005").exists()
    with pytest.raises(GateInputError, match="no checkpoint at iteration 7"):
        prepare_resume(tmp_path, 7)


@pytest.mark.parametrize("content, expected", [
    ("MODEL_ARGS: {--a: 1\nTEST_TYPE: regular", "malformed YAML (line"),
    ("- just\n- a list", "expected a mapping"),
    ("MODEL_ARGS: {--a: 1}", "TEST_TYPE is missing"),
    ("TEST_TYPE: regular", "MODEL_ARGS is missing"),
    ("MODEL_ARGS: {a: 1}\nTEST_TYPE: regular", "MODEL_ARGS.a: flags must start with '--'"),
    ("MODEL_ARGS: {--a: [1, 2]}\nTEST_TYPE: regular", "MODEL_ARGS.--a: expected a single value"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nMETRICS: lm loss", "METRICS"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nN_REPEAT: 0", "N_REPEAT"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nGOLDTRON: {TRAINERS: [x]}", "GOLDTRON: unknown key(s) TRAINERS"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nGOLDTRON: {TRAINER: python}", "GOLDTRON.TRAINER"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nMETRICS: [grad-norm]", "'grad-norm' has no default thresholds"),
    ("MODEL_ARGS: {--a: 1}\nTEST_TYPE: regular\nGOLDTRON: {PLATFORMS: {cpu: {NPROC: 2}}}", "PLATFORMS.cpu: unknown key(s) NPROC"),
])
def test_bad_case_errors_name_file_and_field(tmp_path, content, expected):
    (tmp_path / "model_config.yaml").write_text(content)
    with pytest.raises(GateInputError) as error:
        load_case(tmp_path)
    assert str(tmp_path / "model_config.yaml") in str(error.value) and expected in str(error.value)


def test_unknown_placeholder_is_named(tmp_path):
    case = load_case(write_case(tmp_path / "c", extra_args={"--data-path": "${DATA_DIR}/x"}))
    with pytest.raises(GateInputError, match=r"MODEL_ARGS.--data-path: unknown placeholder \$\{DATA_DIR\}"):
        model_args_to_argv(case.model_args, PLACES, str(case.config_file))


def test_unsupported_test_type_loads_and_lists_but_refuses_to_run(tmp_path, capsys):
    case_dir = write_case(tmp_path / "c", test_type="release")
    case = load_case(case_dir)
    assert case.test_type == "release"
    with pytest.raises(GateInputError, match="TEST_TYPE 'release' is not supported"):
        check_supported(case)
    assert commands.test_main([str(case_dir), "--output-dir", str(tmp_path / "out")]) == 2
    assert "TEST_TYPE 'release' is not supported" in capsys.readouterr().err


def test_test_command_usage_errors_exit_two(tmp_path, capsys):
    assert commands.test_main([]) == 2
    assert commands.test_main([str(tmp_path / "nowhere")]) == 2
    assert "not a case folder" in capsys.readouterr().err
    case_dir = write_case(tmp_path / "c", test_type="ckpt-resume", extra_args={"--save-interval": 3})
    assert commands.test_main([str(case_dir), "--record", "--output-dir", str(tmp_path / "o")]) == 2
    assert "Fix: set --save-interval to 5" in capsys.readouterr().err


def test_cpu_capability_without_torch_matches_torch(monkeypatch):
    import torch

    from goldtron.gate.platform import cpu_capability, cpu_vendor, detect_platform

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert cpu_capability() == torch.backends.cpu.get_cpu_capability()
    if not torch.cuda.is_available():
        assert detect_platform() == cpu_platform_name(torch.backends.cpu.get_cpu_capability(), cpu_vendor())
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_capability() == "AVX2"


def test_bad_golden_is_rejected_before_launching(tmp_path, capsys):
    from goldtron.gate.platform import detect_platform

    case_dir = write_case(tmp_path / "c")
    golden = case_dir / f"golden_values_dev_{detect_platform()}.json"
    golden.write_text('{"lm loss": {"start_step": 1, "end_step": 1, "step_interval": 1, "values": {"1": "ten"}}}')
    assert commands.test_main([str(case_dir), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{golden}: metric 'lm loss' values['1']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_platform_tolerances_override_the_case_per_metric(tmp_path):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    (case_dir / "model_config.yaml").write_text(yaml.safe_dump({
        "MODEL_ARGS": {"--train-iters": 10}, "TEST_TYPE": "regular",
        "METRICS": ["lm loss", "iteration-time"],
        "GOLDTRON": {"TOLERANCES": {"lm loss": {"approx_rtol": 0.02}},
                     "PLATFORMS": {"cpu": {"TOLERANCES": {"iteration-time": {"approx_rtol": 0.5}}}}}}))
    case = load_case(case_dir)
    cpu = case.resolved_for("cpu_intel_avx512")
    assert cpu.tolerances == {"lm loss": {"approx_rtol": 0.02}, "iteration-time": {"approx_rtol": 0.5}}
    assert case.resolved_for("dgx_h100").tolerances == {"lm loss": {"approx_rtol": 0.02}}


def test_a_launch_that_cannot_form_the_layout_is_refused_before_it_starts(tmp_path, capsys):
    case_dir = write_case(tmp_path / "c", extra_args={"--tensor-model-parallel-size": 2,
                                                      "--pipeline-model-parallel-size": 2})
    case = load_case(case_dir)
    # The flagship's layout on a one-GPU node: the GPU count is the cause and the fix.
    with pytest.raises(GateInputError) as error:
        check_layout_fits(case, LaunchOptions(nproc_per_node=1), gpus_per_node=1)
    for fragment in (str(case.config_file), "TP2 x PP2", "multiple of 4", "has 1", "this node has 1 GPU(s)"):
        assert fragment in str(error.value), str(error.value)
    with pytest.raises(GateInputError, match="--nproc-per-node 4"):
        check_layout_fits(case, LaunchOptions(nproc_per_node=2), gpus_per_node=0)
    check_layout_fits(case, LaunchOptions(nproc_per_node=4), gpus_per_node=4)
    check_layout_fits(case, LaunchOptions(nproc_per_node=4, nnodes=2, rdzv_endpoint="h:1"), gpus_per_node=4)
    # End to end: the case asks for 2 ranks per node, the layout for 4; nothing is launched.
    assert commands.test_main([str(case_dir), "--output-dir", str(tmp_path / "out")]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert not (tmp_path / "out" / "repeat_1").exists()


def test_a_folder_of_links_to_cases_finds_each_case_once(tmp_path):
    """A suite made of symbolic links to chosen case folders finds them (os.walk follows the links),
    and a link back up the tree is not walked round and round."""
    chosen = sorted(find_cases(reference_dir()))[:2]
    suite = tmp_path / "suite"
    suite.mkdir()
    for case_dir in chosen:
        (suite / case_dir.name).symlink_to(case_dir, target_is_directory=True)
    (suite / "loop").symlink_to(suite, target_is_directory=True)
    assert [p.name for p in find_cases(suite)] == [p.name for p in chosen]


def test_list_values_become_words_with_or_without_brackets():
    """Megatron's cases spell a list `2 2` or `"[2 2]"`; its launcher passes both as two words."""
    for value in ("2 2", "[2 2]"):
        argv = model_args_to_argv({"--hierarchical-context-parallel-sizes": value, "--lr": 0.1}, PLACES, "x")
        assert argv == ["--hierarchical-context-parallel-sizes", "2", "2", "--lr", "0.1"]


def test_quoted_whole_numbers_are_numbers_and_other_text_is_refused_before_launching(tmp_path, capsys):
    """Megatron's launcher passes every MODEL_ARGS value as a word, so `--train-iters: '3'` is a
    valid Megatron case; text that is not a whole number is refused before any phase starts
    (it used to fail only when the run was judged, after the training had run)."""
    quoted = load_case(write_case(tmp_path / "quoted", extra_args={"--train-iters": "10", "--save-interval": " 5 "}))
    assert quoted.train_iters == 10 and quoted.int_arg("--save-interval", 1) == 5
    for bad in ("3.5", "ten", True):
        case_dir = write_case(tmp_path / f"bad-{bad}", extra_args={"--train-iters": bad})
        out = tmp_path / f"out-{bad}"
        assert commands.test_main([str(case_dir), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"MODEL_ARGS.--train-iters = {bad!r}: the gate needs a positive whole number" in err, err
        assert not (out / "repeat_1").exists()
