"""common.pt of a Megatron-Core checkpoint is read as data only (checkpoint/megatron_common.py).

The files here are written by the test the way Megatron writes common.pt (torch.save of a dict),
with Megatron's enum classes imitated by classes carrying the same module and name, so these
tests need no Megatron installed."""

from __future__ import annotations

import argparse
import enum
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.megatron_common import MegatronEnumValue, load_megatron_common


def _fake_megatron_enums(monkeypatch) -> type:
    """An `AttnBackend` enum importable as megatron.core.transformer.enums.AttnBackend, as pickle
    needs to write it (the reader never imports it: it is dropped before loading)."""
    module = types.ModuleType("megatron.core.transformer.enums")

    class AttnBackend(enum.Enum):
        flash, fused, unfused, local, auto = 1, 2, 3, 4, 5

    AttnBackend.__module__, AttnBackend.__qualname__ = module.__name__, "AttnBackend"
    module.AttnBackend = AttnBackend
    for name in ("megatron", "megatron.core", "megatron.core.transformer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return AttnBackend


def _megatron_like_common(backend) -> dict:
    args = argparse.Namespace(num_layers=2, hidden_size=64, attention_backend=backend.auto,
                              params_dtype=torch.float32, consumed_train_samples=8, lr=1e-3)
    return {
        "args": args, "checkpoint_version": 3.0, "iteration": 4,
        "opt_param_scheduler": {"max_lr": 1e-3, "num_steps": 32, "lr_decay_style": "cosine"},
        "optimizer": {"param_groups": [{"lr": 1e-3, "params": [0, 1]}], "state": {"common_step": 4}},
        "rng_state": [{"random_rng_state": (3, (1, 2, 3), None), "np_rng_state": np.random.RandomState(1).get_state(),
                       "torch_rng_state": torch.get_rng_state(), "rng_tracker_states": {"x": torch.zeros(4)}}],
    }


def test_what_megatron_writes_loads_with_enums_as_stand_ins(tmp_path, monkeypatch):
    backend = _fake_megatron_enums(monkeypatch)
    torch.save(_megatron_like_common(backend), tmp_path / "common.pt")
    for name in [n for n in sys.modules if n.startswith("megatron")]:
        monkeypatch.delitem(sys.modules, name)  # the reader must not need (or import) Megatron

    common = load_megatron_common(str(tmp_path))

    assert not any(n.startswith("megatron") for n in sys.modules)
    args = common["args"]
    assert isinstance(args, argparse.Namespace) and args.num_layers == 2 and args.consumed_train_samples == 8
    assert isinstance(args.attention_backend, MegatronEnumValue)
    assert args.attention_backend.enum_class == "megatron.core.transformer.enums.AttnBackend"
    assert args.attention_backend.value == 5
    assert args.params_dtype is torch.float32
    assert common["iteration"] == 4 and common["optimizer"]["state"]["common_step"] == 4
    assert isinstance(common["rng_state"][0]["np_rng_state"][1], np.ndarray)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_refused_naming_the_global(tmp_path):
    marker = tmp_path / "ran"
    hostile = _RunsCode()
    hostile.marker = marker
    torch.save({"args": hostile, "iteration": 1}, tmp_path / "common.pt")

    with pytest.raises(CheckpointError) as caught:
        load_megatron_common(str(tmp_path))

    message = str(caught.value)
    assert str(tmp_path / "common.pt") in message
    assert f"{os.system.__module__}.system" in message  # posix.system: the global it refused
    assert "nothing in the file was executed" in message
    assert not marker.exists()


def test_a_megatron_class_that_is_not_an_enum_is_refused(tmp_path):
    # Only the listed enum classes get stand-ins: any other megatron global is refused like any code.
    payload = pickle.dumps({"args": types.SimpleNamespace()}, protocol=2).replace(b"types\nSimpleNamespace",
                                                                      b"megatron.core\nparallel_state")
    (tmp_path / "common.pt").write_bytes(payload)
    with pytest.raises(CheckpointError, match="megatron.core.parallel_state"):
        load_megatron_common(str(tmp_path))


def test_missing_and_damaged_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="common.pt is missing"):
        load_megatron_common(str(tmp_path))
    (tmp_path / "common.pt").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match="common.pt was not loaded"):
        load_megatron_common(str(tmp_path))
