"""Where a recorded golden came from, in a sidecar so Megatron's loader still reads the golden.

The sidecar sits next to the golden as `<golden file name>.provenance` (JSON). It does not
end in `.json`, so globs for `golden_values_*.json` (Megatron's and ours) never pick it up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SUFFIX = ".provenance"


def sidecar_path(golden_path: Path) -> Path:
    return Path(golden_path).with_name(Path(golden_path).name + SUFFIX)


def git_commit(directory: Path) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def provenance(environment: str, platform: str, command: list[str], case_dir: Path,
               calibration: dict | None = None) -> dict:
    """Where a run happened. `platform` names the file (a family, e.g. `cpu`, for a portable golden);
    `recorded_on_platform` is the machine's own; `calibration` is the gate's timing of its
    calibration workload there (what iteration-time is judged in on other machines)."""
    from importlib.metadata import version  # not `import torch`: the gate writes this after every run

    from goldtron import __version__
    from goldtron.gate.platform import detect_platform, device_description

    return {
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "platform": platform,
        "recorded_on_platform": detect_platform(),
        "device": device_description(),
        "calibration": calibration,
        "torch": version("torch"),
        "python": sys.version.split()[0],
        "goldtron": __version__,
        "goldtron_commit": git_commit(Path(__file__).resolve().parent),
        "case_commit": git_commit(Path(case_dir).resolve()),
        "command": command,
    }


def write_sidecar(golden_path: Path, record: dict) -> Path:
    from goldtron.checkpoint.layout import write_file_durably

    path = sidecar_path(golden_path)
    write_file_durably(str(path), json.dumps(record, indent=2) + "\n")  # all or nothing, as the golden
    return path


def read_sidecar(golden_path: Path) -> dict | None:
    path = sidecar_path(golden_path)
    return json.loads(path.read_text()) if path.is_file() else None
