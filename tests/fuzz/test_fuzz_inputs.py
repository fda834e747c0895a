"""Issue 14, "What must be shown" 4: damaged input files get a clear error, never a traceback or a hang.

Property-based (hypothesis, fixed seed: `derandomize=True`, bounded examples, in-process, no
torchrun): real `model_config.yaml` files of the committed cases, their golden JSON files, and the
small files of a real checkpoint (common.json, metadata.json, the tracker, DCP's `.metadata`, the
RNG item) are mutated, structurally and as text or bytes. The gate's loaders and pre-launch checks
must answer with GateInputError (exit 2 from the CLI), checkpoint validation and `goldtron ckpt
inspect` with CheckpointError (exit 2); any other exception fails the test with the input that
caused it. Each test prints how many inputs it tried and how many distinct errors it saw.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutations import error_kind, mutate_bytes, mutate_document, mutate_text
from goldtron.checkpoint.errors import CheckpointError
from goldtron.gate.case import load_case, model_args_to_argv
from goldtron.gate.errors import GateInputError
from goldtron.gate.golden import load_golden
from goldtron.gate.launcher import LaunchOptions, torchrun_argv, trainer_target
from goldtron.gate.runner import check_layout_fits, check_supported, default_nproc, phase_environment, resume_step
from support.tiny_checkpoint import save_tiny_checkpoint

pytestmark = pytest.mark.timeout(120)

CASES = sorted((Path(__file__).parents[1] / "functional_tests" / "test_cases" / "gpt").iterdir())
GOLDENS = sorted(path for case in CASES for path in case.glob("golden_values_*.json"))
PLATFORMS = ("cpu_intel_avx512", "cpu_amd_avx2", "dgx_h100")
PLACEHOLDERS = {name: f"/p/{name.lower()}" for name in
                ("TENSORBOARD_PATH", "CHECKPOINT_SAVE_PATH", "CHECKPOINT_LOAD_PATH", "DATA_PATH", "DATA_CACHE_PATH")}


def fuzz_settings(examples: int):
    return settings(derandomize=True, max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Tally:
    """Inputs tried and the errors seen, printed at the end of a test (and asserted on: a fuzz
    test whose inputs never reach an error would prove nothing)."""

    def __init__(self, root: Path):
        self.root, self.tried, self.kinds, self.messages = str(root), 0, Counter(), set()

    def error(self, error: Exception) -> None:
        message = str(error)
        assert message.strip(), f"{type(error).__name__} without a message"
        self.messages.add(message.replace(self.root, "<dir>"))
        self.kinds[error_kind(message, self.root)] += 1

    def report(self, what: str, capsys) -> None:
        errors = sum(self.kinds.values())
        assert errors < self.tried, "every input was refused: the unmutated files are probably refused too"
        with capsys.disabled():
            print(f"\n[fuzz] {what}: {self.tried} inputs tried, {errors} refused, {len(self.messages)} distinct "
                  f"error messages, {len(self.kinds)} distinct kinds")
        assert errors > 0 and len(self.kinds) >= 5, self.kinds


# ---- model_config.yaml ------------------------------------------------------------------------
def prepare_launch(case_dir: Path) -> None:
    """Everything the gate does with a case before it starts torchrun, for several platforms."""
    for platform in PLATFORMS:
        case = load_case(case_dir).resolved_for(platform)
        check_supported(case)
        launch = LaunchOptions(default_nproc(case, 0, 1))
        check_layout_fits(case, launch, 0)
        if case.test_type == "ckpt-resume":
            resume_step(case)
        argv = model_args_to_argv(case.model_args, PLACEHOLDERS, str(case.config_file))
        full = torchrun_argv(trainer_target(case.trainer, case.path), argv, launch, 0, case_dir / "ranks")
        env = phase_environment(case)
        # What subprocess.Popen would refuse with a ValueError when the phase starts.
        assert not any("\0" in part for part in full + list(env) + list(env.values())), full
        assert case.phase_timeout_s > 0 and case.n_repeat >= 1 and case.metrics


def test_mutated_model_configs_get_gate_input_errors(tmp_path, capsys):
    originals = {case.name: (case / "model_config.yaml").read_text() for case in CASES}
    tally = Tally(tmp_path)

    @fuzz_settings(400)
    @given(data=st.data(), name=st.sampled_from(sorted(originals)), as_text=st.booleans())
    def check(data, name, as_text):
        text = originals[name]
        if as_text:
            text = mutate_text(data, text)
        else:
            keys = st.text(max_size=10) | st.integers(-2, 2) | st.sampled_from(["--lr", "GOLDTRON", "cpu", "TRAINER"])
            text = yaml.safe_dump(mutate_document(data, yaml.safe_load(text), keys), allow_unicode=True)
        case_dir = tmp_path / name
        case_dir.mkdir(exist_ok=True)
        (case_dir / "model_config.yaml").write_text(text, errors="surrogatepass")
        tally.tried += 1
        try:
            prepare_launch(case_dir)
        except GateInputError as error:
            tally.error(error)

    check()
    tally.report("model_config.yaml", capsys)


# ---- golden files -----------------------------------------------------------------------------
def test_mutated_goldens_get_gate_input_errors(tmp_path, capsys):
    from goldtron.gate.commands import golden_main

    originals = {path.name: path.read_text() for path in GOLDENS}
    tally = Tally(tmp_path)

    @fuzz_settings(300)
    @given(data=st.data(), name=st.sampled_from(sorted(originals)), as_text=st.booleans())
    def check(data, name, as_text):
        text = originals[name]
        text = mutate_text(data, text) if as_text else json.dumps(mutate_document(data, json.loads(text)), indent=4)
        path = tmp_path / name
        path.write_text(text, errors="surrogatepass")
        tally.tried += 1
        try:
            load_golden(path)
        except GateInputError as error:
            tally.error(error)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert golden_main(["validate", str(path)]) in (1, 2)  # the CLI: an answer, not a traceback

    check()
    tally.report("golden JSON", capsys)


# ---- checkpoint metadata ----------------------------------------------------------------------
ITERATION_DIR = "iter_0000001"
TRACKER = "latest_checkpointed_iteration.txt"


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fuzz_ckpt") / "ckpt")


def _rng_item(folder: Path) -> tuple[Path, int, int]:
    """(data file, offset, length) of the saved RNG state, the checkpoint's one pickled object."""
    from goldtron.checkpoint.safe_objects import read_dcp_metadata

    metadata = read_dcp_metadata(str(folder))
    for index, info in metadata.storage_data.items():
        if index.fqn.startswith("rng_state."):
            return folder / info.relative_path, info.offset, info.length
    raise AssertionError("the checkpoint holds no RNG state")


def test_mutated_checkpoint_metadata_gets_checkpoint_errors(real_checkpoint, tmp_path, capsys):
    from goldtron.checkpoint.validation import find_checkpoint
    from goldtron.checkpoint.commands import main as ckpt_main

    source = real_checkpoint / ITERATION_DIR
    data_file, rng_offset, rng_length = _rng_item(source)
    small = {name: (source / name).read_bytes() for name in ("common.json", "metadata.json", ".metadata")}
    small[TRACKER] = (real_checkpoint / TRACKER).read_bytes()
    data_bytes = data_file.read_bytes()
    other_data = {f.name: f.read_bytes() for f in source.glob("*.distcp") if f != data_file}
    tally = Tally(tmp_path)

    @fuzz_settings(300)
    @given(data=st.data(), target=st.sampled_from(["common.json", "metadata.json", TRACKER, ".metadata", "rng item"]),
           structural=st.booleans())
    def check(data, target, structural):
        root = tmp_path / "ckpt"
        shutil.rmtree(root, ignore_errors=True)
        (root / ITERATION_DIR).mkdir(parents=True)
        files = {name: blob for name, blob in small.items()}
        blob = data_bytes
        if target == "rng item":
            item = mutate_bytes(data, data_bytes[rng_offset:rng_offset + rng_length])
            # Same length, so the shard-size check passes and the object itself is what is read.
            blob = data_bytes[:rng_offset] + item[:rng_length].ljust(rng_length, b"\0") + data_bytes[rng_offset + rng_length:]
        elif target in ("common.json", "metadata.json") and structural:
            files[target] = json.dumps(mutate_document(data, json.loads(files[target]))).encode()
        elif target == TRACKER or target.endswith(".json"):
            files[target] = mutate_text(data, files[target].decode()).encode("utf-8", "surrogatepass")
        else:
            files[target] = mutate_bytes(data, files[target])
        for name, content in files.items():
            (root / (name if name == TRACKER else f"{ITERATION_DIR}/{name}")).write_bytes(content)
        (root / ITERATION_DIR / data_file.name).write_bytes(blob)
        for name, content in other_data.items():
            (root / ITERATION_DIR / name).write_bytes(content)
        tally.tried += 1
        try:
            find_checkpoint(str(root))
        except CheckpointError as error:
            tally.error(error)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = ckpt_main(["inspect", str(root)])  # the CLI answers 0 or 2, never a traceback
        assert code in (0, 2), out.getvalue()[-2000:]

    check()
    tally.report("checkpoint metadata", capsys)
