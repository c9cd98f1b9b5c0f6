"""Data-parallel training on torch.distributed: the process group torchrun describes, and the launcher.

`wam train` runs unchanged under torchrun; each process finds its rank in the environment torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc-per-node 2 -m wam.cli train --dataset data/mt10 --out runs/mt10      # one machine
    wam train --nproc 2 --dataset data/mt10 --out runs/mt10                               # the same, launched for you
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m wam.cli train ...                                    # on each of 2 machines

The batch size stays the global one: every process draws the same global batch and randomness from
the step's seed and trains on its own rows of it (`Dist.rows`), so N processes compute what one process
computes with the whole batch (to float rounding). gloo on CPU, nccl on CUDA. Only rank 0 writes logs,
checkpoints and the run's files; `--resume` works the same way.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from wam.errors import ArgumentError


@dataclass(frozen=True)
class Dist:
    """This process's place among the data-parallel processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch (contiguous, equal shares)."""
        if batch_size % self.world:
            raise ArgumentError(
                f"the batch size {batch_size} must be divisible by the number of processes "
                f"({self.world}): it is the global batch, split evenly"
            )
        n = batch_size // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def mean(self, values: dict[str, float], device="cpu") -> dict[str, float]:
        """The mean of each value over the processes (every process must call it)."""
        if not self.enabled or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))

    def all_true(self, flag: bool, device="cpu") -> bool:
        """True when the flag is true on every process."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return bool(t.item())

    def from_main(self, value):
        """Rank 0's value of a small picklable object, on every process."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every process's copy of `module`."""
        if self.enabled:
            with torch.no_grad():
                for t in [*module.parameters(), *module.buffers()]:
                    torch_dist.broadcast(t.data, src=0)


def setup(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        # long timeout: rank 0 trains the tokenizer alone while the others wait for its weights
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Dist(rank, world, local_rank)


def teardown(d: Dist) -> None:
    if d.enabled and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `wam <argv>` in `nproc` processes on this machine through torchrun; returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "wam.cli",
        *argv,
    ]
    return subprocess.call(cmd)
