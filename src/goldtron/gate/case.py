"""A functional-test case: Megatron's `model_config.yaml`, plus goldtron's optional extensions.

Megatron's keys: ENV_VARS, MODEL_ARGS (flag -> value; `true` = bare flag), TEST_TYPE, METRICS,
N_REPEAT, MODE, LAUNCHER. goldtron's extensions all live under one optional `GOLDTRON:` key
(see docs/gate.md), so a plain Megatron file stays valid:

    GOLDTRON:
      TRAINER: [python, -m, goldtron, train]   # argv prefix of one rank
      PHASE_TIMEOUT_S: 1800
      NPROC_PER_NODE: 4
      FROZEN_CHECKPOINT: path/to/ckpt          # for frozen-resume; relative to the case
      TOLERANCES: {"lm loss": {approx_rtol: 0.05, exact: true}}
      PORTABLE_TOLERANCES: {"lm loss": {approx_rtol: 5e-6}}  # against a family's portable golden
      BANDS: {STATS: stats.json, SIGMAS: 3}    # judge by mean ± k·std instead of flat tolerances
      EQUIVALENCE: true                        # judge against the single-process twin (no golden)
      PLATFORMS:                               # overrides for platforms whose name starts so
        cpu: {NPROC_PER_NODE: 4, MODEL_ARGS: {--bf16: null}, ENV_VARS: {...}, PHASE_TIMEOUT_S: 600}

A MODEL_ARGS value of `null` (in an override) removes the flag; `false` leaves it out.
"""

from __future__ import annotations

import os

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from goldtron.gate.checks import DEFAULT_METRICS, checks_for
from goldtron.gate.errors import GateInputError

CONFIG_NAME = "model_config.yaml"
SUPPORTED_TEST_TYPES = ("regular", "ckpt-resume", "frozen-resume")
PLACEHOLDERS = ("TENSORBOARD_PATH", "CHECKPOINT_SAVE_PATH", "CHECKPOINT_LOAD_PATH", "DATA_PATH", "DATA_CACHE_PATH")
MEGATRON_KEYS = ("ENV_VARS", "MODEL_ARGS", "TEST_TYPE", "METRICS", "N_REPEAT", "MODE", "LAUNCHER")
GOLDTRON_KEYS = ("TRAINER", "PHASE_TIMEOUT_S", "NPROC_PER_NODE", "FROZEN_CHECKPOINT", "TOLERANCES",
                 "PORTABLE_TOLERANCES", "BANDS", "PLATFORMS", "EQUIVALENCE")
PLATFORM_KEYS = ("NPROC_PER_NODE", "MODEL_ARGS", "ENV_VARS", "PHASE_TIMEOUT_S", "N_REPEAT", "TRAINER", "TOLERANCES",
                 "PORTABLE_TOLERANCES")
DEFAULT_TRAINER = ("python", "-m", "goldtron", "train")
DEFAULT_PHASE_TIMEOUT_S = 3600.0
# Megatron marks a case non-deterministic through this variable; exact checks are then skipped.
NONDETERMINISTIC_ENV = "NVTE_ALLOW_NONDETERMINISTIC_ALGO"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Scalar = str | int | float | bool | None


@dataclass
class Case:
    """A case folder, read and validated; `resolved_for(platform)` applies PLATFORMS overrides."""

    path: Path
    test_type: str
    model_args: dict[str, Scalar]
    env_vars: dict[str, str]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    n_repeat: int = 1
    launcher: str | None = None
    mode: str | None = None
    trainer: tuple[str, ...] = DEFAULT_TRAINER
    phase_timeout_s: float = DEFAULT_PHASE_TIMEOUT_S
    nproc_per_node: int | None = None
    frozen_checkpoint: Path | None = None
    tolerances: dict[str, dict] = field(default_factory=dict)
    # Replace `tolerances` per metric when run 1 is judged against a family's portable golden.
    portable_tolerances: dict[str, dict] = field(default_factory=dict)
    bands_stats: Path | None = None
    bands_sigmas: float = 3.0
    platforms: dict[str, dict] = field(default_factory=dict)
    ignored_keys: tuple[str, ...] = ()
    equivalence: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def deterministic(self) -> bool:
        return str(self.env_vars.get(NONDETERMINISTIC_ENV, "0")).strip() not in ("1", "true", "True")

    @property
    def train_iters(self) -> int:
        value = self.model_args.get("--train-iters")
        iters = whole_number(value)
        if iters is None or iters < 1:
            raise GateInputError(f"{self.config_file}: MODEL_ARGS.--train-iters = {value!r}: the gate needs "
                                 "a positive whole number of iterations. Fix: e.g. `--train-iters: 20`")
        return iters

    def int_arg(self, flag: str, default: int) -> int:
        value = self.model_args.get(flag, default)
        number = whole_number(value)
        if number is None:
            raise GateInputError(f"{self.config_file}: MODEL_ARGS.{flag} = {value!r}: expected a whole number")
        return number

    def override_for(self, platform: str) -> str | None:
        """The PLATFORMS key whose name is the longest prefix of `platform`, if any."""
        matches = [key for key in self.platforms if platform.startswith(key)]
        return max(matches, key=len) if matches else None

    def resolved_for(self, platform: str) -> "Case":
        """This case with the PLATFORMS override whose key is the longest prefix of `platform`."""
        key = self.override_for(platform)
        if key is None:
            return self
        override = self.platforms[key]
        model_args = _merge(self.model_args, override.get("MODEL_ARGS") or {})  # an empty key reads as null
        env_vars = {key: value for key, value in _merge(self.env_vars, override.get("ENV_VARS") or {}).items()}
        return Case(
            path=self.path, test_type=self.test_type, model_args=model_args,
            env_vars={key: _env_text(value) for key, value in env_vars.items()},
            metrics=self.metrics, n_repeat=override.get("N_REPEAT", self.n_repeat), launcher=self.launcher,
            mode=self.mode, trainer=tuple(override.get("TRAINER", self.trainer)),
            phase_timeout_s=float(override.get("PHASE_TIMEOUT_S", self.phase_timeout_s)),
            nproc_per_node=override.get("NPROC_PER_NODE", self.nproc_per_node),
            frozen_checkpoint=self.frozen_checkpoint, tolerances=_merge_tolerances(self.tolerances, override),
            portable_tolerances=_merge_tolerances(self.portable_tolerances, override, "PORTABLE_TOLERANCES"),
            bands_stats=self.bands_stats, bands_sigmas=self.bands_sigmas, platforms={},
            ignored_keys=self.ignored_keys, equivalence=self.equivalence)

    def golden_path(self, environment: str, platform: str, second_run: bool = False) -> Path:
        return self.path / golden_file_name(environment, platform, second_run)

    def existing_goldens(self) -> list[Path]:
        return sorted(self.path.glob("golden_values_*.json"))


def golden_file_name(environment: str, platform: str, second_run: bool = False) -> str:
    return f"golden_values_{environment}_{platform}{'_2nd' if second_run else ''}.json"


def _merge_tolerances(base: dict, override: dict, key: str = "TOLERANCES") -> dict:
    """Per metric, the platform's TOLERANCES keys replace the case's (a CPU's timing is noisier)."""
    merged = {metric: dict(values or {}) for metric, values in base.items()}  # null: Megatron's defaults
    for metric, values in (override.get(key) or {}).items():
        merged[metric] = dict(merged.get(metric, {}), **(values or {}))
    return merged


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _env_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def fill_placeholders(text: str, values: dict[str, str], where: str) -> str:
    """Replace ${NAME} by values[NAME]; plain text substitution, never a shell."""

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise GateInputError(f"{where}: unknown placeholder ${{{name}}}. Fix: use one of "
                                 + ", ".join(f"${{{p}}}" for p in PLACEHOLDERS))
        return values[name]

    return _PLACEHOLDER.sub(substitute, text)


def model_args_to_argv(model_args: dict[str, Scalar], placeholders: dict[str, str], source: str) -> list[str]:
    """MODEL_ARGS -> argv: `true` is a bare flag, `false`/null leave the flag out. A value with spaces
    is several words (`--hierarchical-context-parallel-sizes: 2 2`, or `"[2 2]"`), as Megatron's test
    launcher (tests/functional_tests/shell_test_utils/_run_training.sh) strips a list's brackets
    and its shell splits the words."""
    argv: list[str] = []
    for flag, value in model_args.items():
        if value is None or value is False:
            continue
        argv.append(flag)
        if value is True:
            continue
        text = fill_placeholders(_arg_text(value), placeholders, f"{source}: MODEL_ARGS.{flag}")
        if text.startswith("[") and text.endswith("]"):  # `"[2 2]"`: the launcher drops the brackets too
            text = text[1:-1]
        argv += text.split() or [text]
    return argv


def whole_number(value: object) -> int | None:
    """An int, or text that is one (`--train-iters: '3'`: Megatron's launcher passes every value as
    a word, so a quoted number is valid there); None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def _arg_text(value: Scalar) -> str:
    # YAML reads `1.0e-5` as a float; repr keeps every digit the file gave.
    return repr(value) if isinstance(value, float) else str(value)


def _require_mapping(value: object, where: str, source: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GateInputError(f"{source}: {where}: expected a mapping (key: value), got {type(value).__name__}")
    return value


def _check_scalars(mapping: dict, where: str, source: Path, flags: bool) -> None:
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise GateInputError(f"{source}: {where}: key {key!r} is not text. Fix: quote it")
        if flags and not key.startswith("-"):
            raise GateInputError(f"{source}: {where}.{key}: flags must start with '--'. Fix: write '--{key}'")
        if not flags and (not key or "=" in key):
            raise GateInputError(f"{source}: {where}: {key!r} is not a variable name. Fix: a name without '='")
        if isinstance(value, (dict, list)):
            raise GateInputError(f"{source}: {where}.{key}: expected a single value, got a "
                                 f"{type(value).__name__}. Fix: write the flag's value as text")
        # An argv or environment entry cannot hold NUL: starting the phase would fail later.
        if "\0" in key or "\0" in str(value):
            raise GateInputError(f"{source}: {where}.{key!r}: contains a NUL character. Fix: remove it")


def _positive_number(value: object, where: str, source: Path, integer: bool) -> float | int:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or value == math.inf:
        raise GateInputError(f"{source}: {where} = {value!r}: expected a positive "
                             f"{'whole number' if integer else 'number'}")
    return value


def _trainer(value: object, where: str, source: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(part, str) and "\0" not in part for part in value):
        raise GateInputError(f"{source}: {where}: expected a list of strings (an argv prefix), e.g. "
                             "[python, -m, goldtron, train] or [python, /path/to/pretrain_gpt.py]")
    return tuple(value)


def _read_yaml(config: Path) -> dict:
    try:
        text = config.read_text()
    except FileNotFoundError:
        raise GateInputError(f"{config}: not found. Fix: a case folder holds a {CONFIG_NAME}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GateInputError(f"{config}: unreadable ({error}). Fix: save it as UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise GateInputError(f"{config}: malformed YAML{where}: {problem}. Fix: correct the syntax") from None
    if not isinstance(data, dict):
        raise GateInputError(f"{config}: expected a mapping with ENV_VARS, MODEL_ARGS, TEST_TYPE, ...")
    return data


def _parse_platforms(raw: object, source: Path) -> dict[str, dict]:
    platforms = _require_mapping(raw, "GOLDTRON.PLATFORMS", source)
    for name, override in platforms.items():
        where = f"GOLDTRON.PLATFORMS.{name}"
        if not isinstance(name, str) or not name:
            raise GateInputError(f"{source}: {where}: a platform key is a name or its start, e.g. cpu or dgx_h100")
        override = _require_mapping(override, where, source)
        unknown = sorted(map(str, set(override) - set(PLATFORM_KEYS)))  # keys may be numbers
        if unknown:
            raise GateInputError(f"{source}: {where}: unknown key(s) {', '.join(unknown)}. "
                                 f"Fix: use {', '.join(PLATFORM_KEYS)}")
        for key, flags in (("MODEL_ARGS", True), ("ENV_VARS", False)):
            _check_scalars(_require_mapping(override.get(key), f"{where}.{key}", source), f"{where}.{key}", source, flags)
        if "NPROC_PER_NODE" in override:
            _positive_number(override["NPROC_PER_NODE"], f"{where}.NPROC_PER_NODE", source, integer=True)
        if "N_REPEAT" in override:
            _positive_number(override["N_REPEAT"], f"{where}.N_REPEAT", source, integer=True)
        if "PHASE_TIMEOUT_S" in override:
            _positive_number(override["PHASE_TIMEOUT_S"], f"{where}.PHASE_TIMEOUT_S", source, integer=False)
        if "TRAINER" in override:
            _trainer(override["TRAINER"], f"{where}.TRAINER", source)
        for key in ("TOLERANCES", "PORTABLE_TOLERANCES"):
            tolerances = _require_mapping(override.get(key), f"{where}.{key}", source)
            for metric in tolerances:
                checks_for(metric, tolerances, f"{source}: {where}.{key}")  # validates early
        platforms[name] = override
    return platforms


def load_case(case_dir: Path) -> Case:
    """Read and validate `case_dir/model_config.yaml`. Errors name the file, the field and the fix."""
    case_dir = Path(case_dir)
    if case_dir.name == CONFIG_NAME and case_dir.is_file():
        case_dir = case_dir.parent
    if not case_dir.is_dir():
        raise GateInputError(f"{case_dir}: not a case folder. Fix: give the folder holding {CONFIG_NAME}")
    config = case_dir / CONFIG_NAME
    data = _read_yaml(config)

    test_type = data.get("TEST_TYPE")
    if not isinstance(test_type, str) or not test_type:
        raise GateInputError(f"{config}: TEST_TYPE is missing or not text. Fix: set it to one of "
                             + ", ".join(SUPPORTED_TEST_TYPES))
    model_args = _require_mapping(data.get("MODEL_ARGS"), "MODEL_ARGS", config)
    if "MODEL_ARGS" not in data:
        raise GateInputError(f"{config}: MODEL_ARGS is missing. Fix: list the trainer's flags under MODEL_ARGS")
    _check_scalars(model_args, "MODEL_ARGS", config, flags=True)
    env_vars = _require_mapping(data.get("ENV_VARS"), "ENV_VARS", config)
    _check_scalars(env_vars, "ENV_VARS", config, flags=False)

    metrics = data.get("METRICS", list(DEFAULT_METRICS))
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise GateInputError(f"{config}: METRICS = {metrics!r}: expected a list of TensorBoard tags, "
                             'e.g. ["lm loss", "num-zeros"]')
    n_repeat = _positive_number(data.get("N_REPEAT", 1), "N_REPEAT", config, integer=True)

    extensions = _require_mapping(data.get("GOLDTRON"), "GOLDTRON", config)
    unknown = sorted(map(str, set(extensions) - set(GOLDTRON_KEYS)))
    if unknown:
        raise GateInputError(f"{config}: GOLDTRON: unknown key(s) {', '.join(unknown)}. "
                             f"Fix: use {', '.join(GOLDTRON_KEYS)} (see docs/gate.md)")
    tolerances = _require_mapping(extensions.get("TOLERANCES"), "GOLDTRON.TOLERANCES", config)
    for metric in set(metrics) | set(tolerances):
        checks_for(metric, tolerances, f"{config}: GOLDTRON.TOLERANCES")  # validates early
    portable_tolerances = _require_mapping(extensions.get("PORTABLE_TOLERANCES"), "GOLDTRON.PORTABLE_TOLERANCES", config)
    for metric in portable_tolerances:
        checks_for(metric, portable_tolerances, f"{config}: GOLDTRON.PORTABLE_TOLERANCES")
    bands = _require_mapping(extensions.get("BANDS"), "GOLDTRON.BANDS", config)
    if bands and "STATS" not in bands:
        raise GateInputError(f"{config}: GOLDTRON.BANDS needs STATS (a file from `goldtron golden stats`)")
    frozen = extensions.get("FROZEN_CHECKPOINT")
    nproc = extensions.get("NPROC_PER_NODE")
    equivalence = extensions.get("EQUIVALENCE", False)
    if not isinstance(equivalence, bool):
        raise GateInputError(f"{config}: GOLDTRON.EQUIVALENCE = {equivalence!r}: expected true or false")

    return Case(
        path=case_dir,
        test_type=test_type,
        model_args=dict(model_args),
        env_vars={key: _env_text(value) for key, value in env_vars.items()},
        metrics=tuple(metrics),
        n_repeat=int(n_repeat),
        launcher=data.get("LAUNCHER"),
        mode=data.get("MODE"),
        trainer=_trainer(extensions["TRAINER"], "GOLDTRON.TRAINER", config) if "TRAINER" in extensions else DEFAULT_TRAINER,
        phase_timeout_s=float(_positive_number(extensions.get("PHASE_TIMEOUT_S", DEFAULT_PHASE_TIMEOUT_S),
                                               "GOLDTRON.PHASE_TIMEOUT_S", config, integer=False)),
        nproc_per_node=None if nproc is None else int(_positive_number(nproc, "GOLDTRON.NPROC_PER_NODE", config, True)),
        frozen_checkpoint=None if frozen is None else (case_dir / str(frozen)),
        tolerances=tolerances,
        portable_tolerances=portable_tolerances,
        bands_stats=None if not bands else case_dir / str(bands["STATS"]),
        bands_sigmas=float(_positive_number(bands.get("SIGMAS", 3.0), "GOLDTRON.BANDS.SIGMAS", config, False)) if bands else 3.0,
        platforms=_parse_platforms(extensions.get("PLATFORMS"), config),
        ignored_keys=tuple(sorted(map(str, set(data) - set(MEGATRON_KEYS) - {"GOLDTRON"}))),
        equivalence=equivalence,
    )


def find_cases(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds a model_config.yaml, following
    symbolic links to folders (a folder of links to chosen cases is a suite); a link back to a
    folder already walked is not walked again."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(Path(root), followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if CONFIG_NAME in files:
            found.append(Path(folder))
    return sorted(found)
