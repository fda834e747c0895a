"""A phase that crashes, hangs or rejects its flags: clear verdicts, no hang, ranks' logs kept."""

from __future__ import annotations

import pytest

from goldtron.gate import commands

from .conftest import write_case

pytestmark = pytest.mark.slow


def run(case_dir, out, capsys):
    code = commands.test_main([str(case_dir), "--record", "--output-dir", str(out), "--no-plot"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_crash_names_failing_rank_and_its_last_lines(tmp_path, capsys):
    case = write_case(tmp_path / "crash", extra_args={"--fake-crash-at-iteration": 3})
    code, text = run(case, tmp_path / "out", capsys)
    assert code == 1
    assert "phase crash run1 crashed: rank 1 exited with code 3" in text
    assert "injected crash at iteration 3 on rank 1" in text  # the rank's own stderr, shown
    assert list((tmp_path / "out" / "repeat_1" / "run1" / "ranks").glob("*/attempt_0/1/stderr.log"))
    assert "<error" in (tmp_path / "out" / "junit.xml").read_text()


def test_hang_is_killed_at_the_phase_timeout(tmp_path, capsys):
    # 20 s: room for torchrun and 2 ranks to start on a busy 2-core machine before the hang.
    case = write_case(tmp_path / "hang", extra_args={"--fake-hang-at-iteration": 4}, goldtron={"PHASE_TIMEOUT_S": 20})
    code, text = run(case, tmp_path / "out", capsys)
    assert code == 1
    assert "phase hang run1 timed out" in text and "last iteration 3" in text


def test_trainer_configuration_error_exits_two(tmp_path, capsys):
    case = write_case(tmp_path / "config", extra_args={"--fake-config-error": True})
    code, text = run(case, tmp_path / "out", capsys)
    assert code == 2
    assert "rejected the configuration" in text and "remove it" in text
