"""Many nodes: two `goldtron test` "nodes" of 2 ranks each on 127.0.0.1 form one 4-rank job.

Both nodes share the output folder (as nodes share a file system); node 1 hosts the last
rank, prepares the resume between the phases and judges.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from goldtron.gate.golden import load_golden
from goldtron.gate.platform import detect_platform

from .conftest import write_case

pytestmark = pytest.mark.slow


def free_port_pair() -> int:
    """A port P with P and P+1 free (one per phase: each launch gets its own port)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def test_two_nodes_form_one_four_rank_job_through_ckpt_resume(tmp_path):
    case = write_case(tmp_path / "two_nodes", "ckpt-resume", train_iters=6)
    out, port = tmp_path / "out", free_port_pair()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "goldtron", "test", str(case), "--record", "--no-plot", "--output-dir", str(out),
         "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(outputs)
    assert "node 1 judges" in outputs[0] and "PASS two_nodes" in outputs[1]
    assert "run 2 vs run 1" in outputs[1]
    golden = load_golden(case / f"golden_values_dev_{detect_platform()}.json")
    # The fake trainer logs 1e6 + 1000 * world_size bytes: the job really had 4 ranks.
    assert golden["mem-allocated-bytes"].values[1] == 1_004_000.0
    assert (out / "repeat_1" / "run1" / "torchrun_node0.log").exists()
    assert (out / "repeat_1" / "run2" / "torchrun_node1.log").exists()
