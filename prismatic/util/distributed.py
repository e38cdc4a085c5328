"""Process-group setup for `torchrun` (any --nnodes / --nproc-per-node) and for plain `python` (one process).

NCCL on GPU, gloo on CPU. `DistributedContext` carries what the rest of training needs to know (rank, world size,
node layout, device) so no other module reads environment variables or calls `torch.distributed` setup itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

# torchrun (and `srun` with these variables exported) describes the job through the environment.
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Generous: the first collective waits for every rank to finish building a 7B model and preflighting the data. Once
# training runs, the trainer lowers it to --collective_timeout_s (`DistributedContext.set_collective_timeout`).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def set_collective_timeout(self, timeout: timedelta) -> None:
        """From now on a collective that waits longer than `timeout` for a rank fails (instead of hanging)."""
        if self.is_distributed:
            dist.set_timeout(timeout)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place, also returned); the identity on one process."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, value: object) -> list[object]:
        """Every rank's `value` (pickled between this job's own processes), in rank order; [value] on one process."""
        if not self.is_distributed:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum over ranks (in place, also returned); the identity on one process."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _LAUNCHER_VARIABLES)


def default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistributedContext:
    """Join the process group when launched by torchrun (or srun with its variables); else a single process."""
    if not launched_by_torchrun():
        return DistributedContext(0, 1, 0, 1, default_device(0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = default_device(local_rank)
    if not dist.is_initialized():
        # torchrun's store outlives a restart of the worker group (`--max-restarts`), and the process group's keys of
        # the failed attempt are still in it: without a namespace per attempt the restarted ranks can read each
        # other's stale addresses and hang while connecting. TORCHELASTIC_RESTART_COUNT numbers the attempts.
        store, _, _ = next(dist.rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
        store = dist.PrefixStore(f"dyva/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)  # fmt: skip
    overwatch.info(
        f"Joined the process group: {world_size} rank(s) on {max(1, world_size // local_world_size)} node(s), "
        f"backend {dist.get_backend()}, device {device.type}"
    )
    return DistributedContext(rank, world_size, local_rank, local_world_size, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
