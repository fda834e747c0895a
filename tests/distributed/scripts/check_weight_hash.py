"""--check-weight-hash-across-dp-replicas-interval's check on 2 data-parallel ranks (run under torchrun).

The replicas of a freshly built trainer agree; then DP replica 1 alone moves one element of one
weight by one ulp (a test-only fault: nothing in training does this) and the check must stop
both ranks, replica 1 naming that weight. Prints one OK line per rank; exits non-zero otherwise.
"""

import sys

import torch
import torch.distributed as dist

from goldtron.arguments import parse_args
from goldtron.parallel.state import ParallelState
from goldtron.training.build import build_trainer
from goldtron.training.replica_check import ReplicaMismatchError, check_weight_hashes_across_dp_replicas


def main() -> int:
    dist.init_process_group("gloo")
    ps = ParallelState.create(1, 1, torch.device("cpu"), "gloo")
    args = parse_args(sys.argv[1:], world_size=dist.get_world_size())
    trainer = build_trainer(args, ps, torch.device("cpu"))
    check_weight_hashes_across_dp_replicas(trainer.model.named_parameters(), ps, 0)  # equal replicas pass

    name, weight = next((n, p) for n, p in trainer.model.named_parameters() if p.dim() == 2)
    if ps.dp_rank == 1:
        with torch.no_grad():
            flat = weight.view(-1)
            flat[7] = torch.nextafter(flat[7], torch.tensor(float("inf")))
    try:
        check_weight_hashes_across_dp_replicas(trainer.model.named_parameters(), ps, 3)
    except ReplicaMismatchError as error:
        print(f"OK rank {ps.rank} weight {name}: {error}", flush=True)
        status = 0
    else:
        print(f"rank {ps.rank}: a one-ulp difference on replica 1 was not caught", flush=True)
        status = 1
    trainer.close()
    del trainer
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
