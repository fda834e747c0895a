"""torch's eager parts without the import of its compiler (torch._dynamo, torch._inductor), which
a trainer that never compiles does not use.

Four calls of an eager trainer import the compiler only to configure it, about 1.2 CPU-s a
process here (a 4-rank phase on 2 cores waits ~2.4 s for it, and the test suite pays it in every
launch):
- torch.optim.Optimizer's add_param_group, zero_grad, state_dict and load_state_dict are
  wrapped by torch._disable_dynamo, which imports torch._dynamo on each one's first call only to
  fetch torch._dynamo.disable(fn), so torch.compile does not trace into them; eager runs fn
  unchanged. Here the wrapped function is given itself as its cached "disabled" form (the
  attribute the wrapper looks up before importing): each call runs the method directly.
- A TorchDispatchMode subclass's __torch_dispatch__ (the CPU memory counter's, training/memory.py)
  is wrapped the same way: its first op imported torch._dynamo.
- Optimizer.step imports torch._dynamo on every call to mark graph breaks: eager_step below.
- torch.use_deterministic_algorithms sets torch._inductor.config.deterministic (for compiled
  kernels) besides the eager flag; here only the eager flag is set.
Same eager code, same bits. All lean on torch's private parts (torch/_compile.py's wrapper,
torch.optim's step wrappers, torch._C._set_deterministic_algorithms; torch is pinned exactly): where they are not as
expected, the public calls run as before (tests/unit/test_eager_torch.py notices). A process
that imported the compiler already (it may compile) is left as it is.
"""

from __future__ import annotations

import inspect
import sys

import torch

WRAPPED_OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
CACHED_DISABLED_FORM = "__dynamo_disable"  # the attribute torch/_compile.py's wrapper caches
COMPILER_MODULES = ("torch._dynamo", "torch._inductor")


def _compiler_imported() -> bool:
    return any(name in sys.modules for name in COMPILER_MODULES)


def run_without_dynamo(wrapped) -> bool:
    """Make a torch._disable_dynamo-wrapped function call its original directly; True if it does."""
    original = getattr(wrapped, "__wrapped__", None)
    if original is None or _compiler_imported():
        return False
    setattr(original, CACHED_DISABLED_FORM, original)
    return True


def skip_dynamo_import_of_torch_optim() -> bool:
    """True if every wrapped Optimizer method now runs without importing torch._dynamo."""
    return all([run_without_dynamo(getattr(torch.optim.Optimizer, name)) for name in WRAPPED_OPTIMIZER_METHODS])


def use_deterministic_algorithms(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode) for eager kernels, without importing the compiler."""
    set_eager_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if _compiler_imported() or set_eager_flag is None:
        torch.use_deterministic_algorithms(mode)
        return
    set_eager_flag(mode, warn_only=False)


def eager_step(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.step() without importing torch._dynamo.

    torch.optim's step is wrapped twice: by Optimizer's profiling-and-hooks wrapper and by
    _use_grad_for_differentiable, which imports torch._dynamo on every call to mark two graph
    breaks (no-ops in eager) around the step it runs with grad disabled. This runs the innermost
    step under no_grad, as that wrapper does for a non-differentiable optimizer; step hooks are
    not run, and goldtron registers none. A process that imported the compiler, or an optimizer
    that registered hooks, takes the public step.
    """
    innermost = inspect.unwrap(type(optimizer).step)
    from torch.optim import optimizer as torch_optimizer

    hooked = (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
              or torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks)
    if _compiler_imported() or hooked or optimizer.defaults.get("differentiable") or innermost is type(optimizer).step:
        optimizer.step()
        return
    with torch.no_grad():
        innermost(optimizer)
