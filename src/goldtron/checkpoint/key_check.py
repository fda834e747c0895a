"""Compare what the model wants with what the checkpoint holds, by `--dist-ckpt-strictness`.

"Missing": a key this run needs that the checkpoint lacks (e.g. more layers than were saved).
"Unexpected": a key the checkpoint holds that no rank of this run wants (e.g. fewer layers).
Both are computed over the whole run (keys gathered from every rank) so every rank decides
the same way. A global-shape mismatch is always an error: nothing sensible can be loaded.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from goldtron.checkpoint.errors import CheckpointError

RAISES_MISSING = {"assume_ok_unexpected", "log_unexpected", "raise_unexpected", "raise_all"}
RAISES_UNEXPECTED = {"raise_unexpected", "raise_all"}
LOGS_MISSING = {"log_all", "return_all"}
LOGS_UNEXPECTED = {"log_unexpected", "log_all", "raise_unexpected", "raise_all", "return_unexpected", "return_all"}


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def gather_wanted_keys(local_keys: set[str], group) -> set[str]:
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, sorted(local_keys), group=group)
    return set().union(*map(set, everyone))


def check_keys(local_wanted: dict, all_wanted: set[str], comparable: set[str], metadata: Metadata,
               strictness: str, path: str, log) -> set[str]:
    """The local keys to leave out of the load (missing ones that strictness tolerates).

    `local_wanted` maps this rank's keys to their values (anything with .size() is shape-checked);
    `comparable` limits "unexpected" to the kinds of state this load asked for (so a checkpoint
    with optimizer state is not "unexpected" under --no-load-optim).
    """
    saved = metadata.state_dict_metadata
    for key, value in local_wanted.items():
        md = saved.get(key)
        if isinstance(md, TensorStorageMetadata) and hasattr(value, "size") and tuple(md.size) != tuple(value.size()):
            raise CheckpointError(
                f"{path}: tensor {key} was saved with global shape {tuple(md.size)} but this run's model has "
                f"{tuple(value.size())}; the model flags (--num-layers, --hidden-size, --ffn-hidden-size, vocab...) "
                "must match the checkpoint's (see `goldtron ckpt inspect`)")
    missing = sorted(all_wanted - set(saved))
    unexpected = sorted(k for k in saved if k in comparable and k not in all_wanted)
    if strictness == "ignore_all":
        return set(local_wanted) - set(saved)
    if unexpected and strictness in LOGS_UNEXPECTED:
        log(f"checkpoint {path}: {len(unexpected)} saved key(s) not used by this model: {_short(unexpected)}")
    if unexpected and strictness in RAISES_UNEXPECTED:
        raise CheckpointError(f"{path} holds keys this model does not have: {_short(unexpected)} "
                              f"(--dist-ckpt-strictness {strictness}); check the model flags or relax the strictness")
    if missing:
        if strictness in RAISES_MISSING:
            raise CheckpointError(
                f"{path} lacks keys this model needs: {_short(missing)}. The model flags must match the checkpoint's "
                "(see `goldtron ckpt inspect`); --dist-ckpt-strictness log_all loads the rest and keeps "
                "the missing tensors at their initial values")
        if strictness in LOGS_MISSING:
            log(f"checkpoint {path}: {len(missing)} key(s) missing, kept at their initial values: {_short(missing)}")
    return set(local_wanted) - set(saved)
