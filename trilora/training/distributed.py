"""Several processes, one per GPU or node (`accelerate launch -m trilora train ...` or torchrun).

Each process holds the whole model and data, takes its shard of every global batch (samples
rank, rank + world, ...), and the adapter gradients are summed across processes before each
optimiser step. Noise and timesteps come from each sample's global index (training/noise.py), so
the result does not depend on the number of processes. Only rank 0 writes files.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, values: list) -> list:
        return values[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors across processes in place (a no-op for one process)."""
        if self.world > 1:
            for tensor in tensors:
                torch_dist.all_reduce(tensor)


def init_distributed() -> Distributed:
    """From the environment that accelerate launch / torchrun set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(
        torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )
