"""Issue 4, "Seeing it": per-rank pipeline timers in TensorBoard and the `goldtron timeline` PNG,
from one real TP2 x PP2 run with every micro-batch deferred (L = 0)."""

from __future__ import annotations

import pytest

from goldtron.parallel.trace import KINDS
from goldtron.training import timeline
from support.torchrun import NO_DROPOUT, TINY_MODEL, layout_flags, read_scalars, run_train

STEPS, M, RANKS = 3, 4, 4
LAST_STAGE_RANKS = (2, 3)  # tp fastest: ranks 2 and 3 are pipeline stage 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tb = tmp_path_factory.mktemp("timeline") / "tb"
    run_train(RANKS, [*TINY_MODEL, *NO_DROPOUT, *layout_flags(2, 2), "--train-iters", str(STEPS),
                      "--defer-embedding-wgrad-compute", "--wgrad-deferral-limit", "0",
                      "--log-timers-to-tensorboard", "--tensorboard-dir", str(tb)], timeout=240)
    return tb


def test_every_rank_has_timers_for_every_kind_in_tensorboard(run_dir):
    scalars = read_scalars(run_dir)
    for rank in range(RANKS):
        for kind in (*KINDS, "idle"):
            assert sorted(scalars[f"pipeline-timers/rank{rank}/{kind}"]) == list(range(1, STEPS + 1)), (rank, kind)


def test_tensorboard_drain_timer_is_the_drain_span_of_the_trace(run_dir):
    """The two outputs of one StepTrace agree (float32 in TensorBoard: compare to 1e-6 relative)."""
    scalars = read_scalars(run_dir)
    _, steps = timeline.read_step(timeline.trace_folder(run_dir), STEPS)
    for step in steps:
        drain = sum(t1 - t0 for kind, _, t0, t1, *_chunk in step.spans if kind == "wgrad-drain")
        assert scalars[f"pipeline-timers/rank{step.rank}/wgrad-drain"][STEPS] == pytest.approx(drain, rel=1e-6)


def test_timeline_png_shows_the_drain_after_the_last_backward_on_the_last_stage(run_dir, tmp_path):
    png = tmp_path / "step2.png"
    assert timeline.main([str(run_dir), "--iteration", "2", "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    _, steps = timeline.read_step(timeline.trace_folder(run_dir), 2)
    boxes = timeline.boxes_of(steps)
    for rank in range(RANKS):
        mine = [b for b in boxes if b.rank == rank]
        for kind in ("forward", "backward"):
            assert sorted(b.micro_batch for b in mine if b.kind == kind) == list(range(M)), (rank, kind)
        drains = [b for b in mine if b.kind == "wgrad-drain"]
        assert len(drains) == 1
        if rank in LAST_STAGE_RANKS:
            assert drains[0].start >= max(b.end for b in mine if b.kind == "backward")

    # The drain's colour is really in the picture (boxes are widened to stay visible): the same
    # step drawn without its drain spans has fewer pixels of that colour (the legend has some too).
    without = tmp_path / "no_drain.png"
    for step in steps:
        step.spans = [span for span in step.spans if span[0] != "wgrad-drain"]
    timeline.draw([("no drain", steps)], without)
    assert _drain_coloured_pixels(png) - _drain_coloured_pixels(without) > 50, "no drain box drawn"


def _drain_coloured_pixels(png) -> int:
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(png)[:, :, :3]
    drain_rgb = np.array([int(timeline.STYLE["wgrad-drain"][0][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - drain_rgb).max(axis=2) < 0.02).sum())  # 0.02: PNG 8-bit rounding


def test_two_runs_draw_as_two_panels(run_dir, tmp_path):
    png = tmp_path / "two.png"
    assert timeline.main([str(run_dir), str(run_dir / "pipeline_trace"), "--labels", "a", "b",
                          "--output", str(png)]) == 0
    assert png.exists()


def test_bad_input_names_the_flag_and_the_fix(run_dir, tmp_path, capsys):
    assert timeline.main([str(tmp_path)]) == timeline.EXIT_BAD_INPUT
    assert "--log-timers-to-tensorboard --tensorboard-dir" in capsys.readouterr().err
    assert timeline.main([str(run_dir), "--iteration", "99"]) == timeline.EXIT_BAD_INPUT
    assert "--iteration 99" in capsys.readouterr().err
    assert timeline.main([str(run_dir), "--labels", "a", "b"]) == timeline.EXIT_BAD_INPUT
    assert "--labels" in capsys.readouterr().err
