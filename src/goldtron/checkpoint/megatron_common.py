"""Read a Megatron-Core checkpoint's `common.pt` as data: nothing in the file can run code.

Megatron writes `common.pt` with `torch.save` and reads it back with `torch.load(weights_only=False)`,
which executes whatever the pickle asks. What Megatron actually puts there is the run's `args`
(an `argparse.Namespace` holding Megatron enums such as `AttnBackend.auto` and dtypes),
`checkpoint_version`, `iteration`, `opt_param_scheduler`, the optimizer's `param_groups` and
`common_step`, and tensors, NumPy arrays and builtins in the RNG state. Here it is read with
`torch.load(weights_only=True)` plus exactly those extras:
- `argparse.Namespace` (a plain attribute bag);
- NumPy's array reconstruction (the NumPy RNG state);
- each Megatron enum class by its path, bound to a *stand-in* (`MegatronEnumValue`) that only keeps
  the class path and the member's value: goldtron never imports Megatron, and no Megatron code runs.
Any other global is refused with a CheckpointError that names it and the file.
"""

from __future__ import annotations

import argparse
import os

import torch

from goldtron.checkpoint.errors import CheckpointError
from goldtron.checkpoint.safe_objects import numpy_array_globals, refused_global_line

MEGATRON_COMMON_NAME = "common.pt"

# The enum classes of Megatron-Core 0.16 that Megatron-LM's arguments hold (argparse `type=`
# converters and values set in pretrain()); a checkpoint refers to them by module and name.
MEGATRON_ENUM_CLASSES = (
    ("megatron.core.transformer.enums", "ModelType"),
    ("megatron.core.transformer.enums", "LayerType"),
    ("megatron.core.transformer.enums", "AttnType"),
    ("megatron.core.transformer.enums", "AttnMaskType"),
    ("megatron.core.transformer.enums", "AttnBackend"),
    ("megatron.core.transformer.enums", "CudaGraphScope"),
    ("megatron.core.enums", "ModelType"),
    ("megatron.core.enums", "Fp8Recipe"),
    ("megatron.core.enums", "Fp4Recipe"),
)


class MegatronEnumValue:
    """A Megatron enum member as loaded from a pickle: its class path and value, nothing else.

    An enum pickles as "call the class with the value"; this class is what gets called, so the
    call only stores its argument. `enum_class` is set on the per-class subclasses below.
    """

    enum_class = "megatron enum"

    def __init__(self, value=None):
        self.value = value

    def __eq__(self, other) -> bool:
        return (isinstance(other, MegatronEnumValue) and other.enum_class == self.enum_class
                and other.value == self.value)

    def __hash__(self) -> int:
        return hash((self.enum_class, repr(self.value)))

    def __repr__(self) -> str:
        return f"{self.enum_class}({self.value!r})"


def _enum_stand_ins() -> list[tuple[type, str]]:
    """(stand-in class, 'module.Name') for torch's allow-list, one class per Megatron enum."""
    out = []
    for module, name in MEGATRON_ENUM_CLASSES:
        path = f"{module}.{name}"
        out.append((type(name, (MegatronEnumValue,), {"enum_class": path, "__module__": __name__}), path))
    return out


def megatron_common_globals() -> list:
    """Everything besides torch's weights_only defaults that a Megatron common.pt may name."""
    return [argparse.Namespace, *numpy_array_globals(), *_enum_stand_ins()]


def load_megatron_common(checkpoint_dir: str) -> dict:
    """`checkpoint_dir`/common.pt as plain data (see the module docstring); a CheckpointError
    naming the file and the refused global for anything else, or for a damaged file."""
    file = os.path.join(checkpoint_dir, MEGATRON_COMMON_NAME)
    try:
        with torch.serialization.safe_globals(megatron_common_globals()):
            common = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: {checkpoint_dir} is not a complete Megatron torch_dist "
                              "checkpoint (Megatron writes common.pt first). Restore the file or load another "
                              "checkpoint.") from None
    except Exception as error:  # weights_only refusals are UnpicklingError; damage gives others
        raise CheckpointError(
            f"{file} was not loaded: {refused_global_line(error)}. goldtron reads common.pt as data and admits only "
            "what Megatron writes there (argparse.Namespace, Megatron's enums, tensors, NumPy arrays, builtins); "
            "nothing in the file was executed. Use a checkpoint from a source you trust, or re-save it with "
            "Megatron.") from None
    if not isinstance(common, dict):
        raise CheckpointError(f"{file} holds a {type(common).__name__}, not the dict Megatron writes; "
                              "the checkpoint is damaged or not Megatron's")
    return common
